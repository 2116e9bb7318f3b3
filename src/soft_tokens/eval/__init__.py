"""Evaluation: one home for what validation and evaluate.py share and what evaluate.py adds.

- `solve.py`: inference settings (a representer, samples per problem, the k of pass@k) and solving a list
  of problems under one of them (the math-eval callback and evaluate.py both call `solve`);
- `checkpoints.py`: the policy to evaluate, from a Lightning checkpoint, a Hugging Face folder or a hub id;
- `results.py`: per-setting scores and their files (results.json/csv/md, plots, completions);
- `run.py`: the evaluation run of `python evaluate.py` (`run_evaluation`);
- `options.py`: evaluate.py's counts and setting names, checked before torch loads.
"""
