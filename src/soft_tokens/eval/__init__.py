"""Evaluation: one home for what validation and evaluate.py share and what evaluate.py adds.

- `solve.py`: inference settings (a representer, samples per problem, the k of pass@k) and solving a list
  of problems under one of them (the math-eval callback and evaluate.py both call `solve`);
- `results.py`: per-setting scores and their files (results.json/csv/md, plots, completions);
- `run.py`: the evaluation run of `python evaluate.py` (`run_evaluation`);
- `options.py`: evaluate.py's counts and setting names, checked before torch loads;
- `metrics.py`, `plots.py`, `markdown.py`: pass@k and the other scores, their figures and tables;
- `ood.py`: out-of-domain multiple choice (HellaSwag, ARC, MMLU).
The policy to evaluate is loaded by `soft_tokens.models.checkpoints` (a checkpoint, a folder or a hub id).
"""
