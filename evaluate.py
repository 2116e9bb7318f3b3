"""Evaluate a policy under the paper's inference grid: `python evaluate.py checkpoint=<run>/policy name=soft`.

Loads the base model, a Lightning checkpoint, a Hugging Face folder or a hub model id (`checkpoint=org/name`,
resolved as from_pretrained does: from the Hugging Face cache when HF_HUB_OFFLINE=1), solves the test split of the data
config under hard/soft/fuzzy x greedy/sample CoT decoding, and writes results.{json,csv,md} and plots to
outputs/evaluate/runs/<time>/ (see conf/evaluate.yaml; merge several runs with scripts/report.py).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on cores shared with other work, spinning threads made
# multi-threaded steps several times slower (docs/benchmarks.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Only light imports here: torch and transformers load in main(), after the config's values are checked.
import hydra
from omegaconf import DictConfig

from soft_tokens.config_types import ConfigTypeError, check_config_types
from soft_tokens.eval.options import check_eval_options
from soft_tokens.runs.folder import register_resolver

register_resolver()  # run_dir in conf/hydra/default.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        check_config_types(cfg)
        check_eval_options(cfg)  # evaluate's own counts and setting names (max_examples, num_samples, only)
    except ConfigTypeError as err:
        raise SystemExit(f"config error: {err}") from None  # the message names the key; no traceback
    import torch

    from soft_tokens.eval.run import run_evaluation

    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    run_evaluation(cfg)


if __name__ == "__main__":
    main()
