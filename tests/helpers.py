"""Helpers shared by the test modules (which never import each other): composed configs, prompts, tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# The config groups of conf/train.yaml whose every file the config tests compose.
GROUPS = [
    "model",
    "data",
    "representer",
    "estimator",
    "reward",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
]

# Prompts of different lengths (left padding differs per row), for rollout and KV-cache tests.
PROMPTS = [
    "User: Ann has 7 apples. She gets 5 more. How many apples does Ann have now? Assistant:",
    "User: Bob? Assistant:",
    "User: Bob has 9 pens. Assistant:",
]

# Where docs/extending.md's "Adding a representer" recipe puts its files in the repository.
PACKAGE_MODULE = "src/soft_tokens/representers/topk.py"
PACKAGE_YAML = "conf/representer/topk.yaml"

V, D = 7, 5  # vocabulary and embedding width of the representer tests' random tensors


def compose_config(
    name: str, overrides: list[str], out_dir: Path | None = None, keep_hydra: bool = False
) -> DictConfig:
    """The composed config `name` (train, evaluate); with `out_dir`, its run folder set there and the Hydra
    config registered, as Hydra does at run time; `keep_hydra` keeps the `hydra` node in the result."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=out_dir is not None or keep_hydra)
    if out_dir is not None:
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out_dir)
    if "hydra" in cfg and not keep_hydra:
        with open_dict(cfg):
            del cfg.hydra
    return cfg


def compose_train(overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """The composed train config; with `out_dir`, ready for `train.train` with its run folder there."""
    return compose_config("train", overrides, out_dir)


def make(seed: int = 0, n: int = 4, v: int = V, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits [n, v] and embedding matrix [v, d] (float32)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, v, generator=g)
    embedding = torch.randn(v, d, generator=g)
    return logits, embedding


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)


def central_diff(f, x: torch.Tensor, h: float) -> torch.Tensor:
    """Numerical gradient of the scalar f(x) by central differences, entry by entry (x is not modified)."""
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[i] += h
        xm.view(-1)[i] -= h
        flat[i] = (f(xp) - f(xm)) / (2 * h)
    return grad


# The two-step run of the multi-process tests (DDP, DeepSpeed): overrides of train.py after the trainer.
DISTRIBUTED_RUN = [
    "debug=fast",
    "module.optim.lr=1e-3",
    "module.optim.warmup_steps=1",
    "module.samples_per_prompt=4",
    "sampling_temperature=1.0",
    "data.batch_size=4",
    "trainer.max_steps=2",
    "logger=csv",
    "callbacks.rich_progress_bar=null",
]


# Runs train.py's entry point with the given arguments, then says which heavy libraries it had imported and
# how it exited (config errors must come before torch, transformers and Lightning load).
TRAIN_PROBE = (
    "import runpy, sys\n"
    "sys.argv = ['train.py', *sys.argv[1:]]\n"
    "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
    "except SystemExit as e:\n    code = e.code\n"
    "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))\n"
    "print('CODE', code)\n"
)


def probe_train(*args: str) -> str:
    """stdout and stderr of TRAIN_PROBE run on train.py with `args` (HF_HUB_OFFLINE=1)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_PROBE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout + out.stderr
