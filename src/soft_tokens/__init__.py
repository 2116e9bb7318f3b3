"""soft-tokens: reinforcement learning of language models with continuous chain-of-thought tokens."""

import importlib
from types import ModuleType

__version__ = "0.1.0"

# The modules' paths before the packages by concern (docs/layout.md), so that a `_target_` written for them
# (`soft_tokens.module.SoftTokensModule`) still resolves: Hydra reaches them as attributes of this package.
MOVED = {
    "atomic_write": "runs.atomic_write",
    "boxed": "rewards.boxed",
    "builders": "training.builders",
    "distributed": "training.distributed",
    "export": "models.export",
    "logprobs": "rollout.logprobs",
    "lora": "models.lora",
    "markdown": "eval.markdown",
    "math_verify_worker": "rewards.math_verify_worker",
    "metrics": "eval.metrics",
    "model_files": "models.model_files",
    "module": "training.module",
    "non_finite": "training.optimizer_step",
    "ood": "eval.ood",
    "optim": "training.optim",
    "optimizer_step": "training.optimizer_step",
    "plots": "eval.plots",
    "resume": "runs.resume",
    "run_folder": "runs.folder",
    "run_lock": "runs.lock",
    "run_summary": "runs.summary",
    "seeding": "rollout.seeding",
    "sweep_objective": "runs.sweep_objective",
    "tiny": "models.tiny",
    "train_metrics": "training.step_metrics",
}


def __getattr__(name: str) -> ModuleType:
    """A module by its old flat name (MOVED), imported on first use."""
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
