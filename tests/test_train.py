"""The training loop end to end: config composition, a few steps through train.py, non-finite handling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import train as train_script
from soft_tokens.builders import build_module
from soft_tokens.module import NonFiniteLossError

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_train(overrides: list[str], out_dir: Path):
    """The composed train config, with its run folder set to out_dir (as Hydra would at run time)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg.hydra
    return cfg


def test_train_smoke_writes_run_folder(tmp_path, tiny_model_dir):
    cfg = compose_train(
        ["debug=fast", f"model.name_or_path={tiny_model_dir}", "callbacks.rich_progress_bar=null"], tmp_path
    )
    metrics = train_script.train(cfg)
    assert "val/accuracy" in metrics and "train/reward" in metrics
    assert (tmp_path / "config.yaml").exists()
    assert (tmp_path / "policy" / "model.safetensors").exists()
    assert (tmp_path / "policy_best" / "model.safetensors").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "rep,est,extra",
    [
        ("soft", "rloo", []),
        ("fuzzy", "rloo", []),
        ("hard", "grpo", []),
        ("soft", "grpo", []),
        ("fuzzy", "grpo", []),
        # Several passes per rollout (clipped ratio) and a KL to the reference model.
        ("soft", "grpo", ["estimator.num_iterations=2", "estimator.beta=0.04"]),
        ("hard", "rloo", ["estimator.beta=0.04"]),
        ("gumbel", "rloo", []),
        ("gumbel", "grpo", ["estimator.num_iterations=2", "estimator.beta=0.04"]),
    ],
)
def test_train_smoke_other_components(tmp_path, tiny_model_dir, rep, est, extra):
    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            f"representer={rep}",
            f"estimator={est}",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
            *extra,
        ],
        tmp_path,
    )
    metrics = train_script.train(cfg)
    assert rep == "hard" or f"val/accuracy_{rep}" in metrics
    assert math.isfinite(metrics["train/loss"]) and "train/clip_ratio/region_mean" in metrics
    if "estimator.beta=0.04" in extra:
        assert metrics["train/kl"] >= 0


def test_non_finite_loss_is_skipped_then_stops(tmp_path, tiny_model_dir, monkeypatch):
    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            "trainer.max_steps=5",
            "module.max_bad_steps=2",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
        ],
        tmp_path,
    )
    module = build_module(cfg)
    calls = {"n": 0}
    original = module.estimator.loss

    def nan_loss(*args, **kwargs):
        calls["n"] += 1
        loss, m = original(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(module.estimator, "loss", nan_loss)
    import hydra

    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False)
    module.configure_model()
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    assert calls["n"] == 2
    assert all(torch.equal(before[k], v) for k, v in module.policy.state_dict().items())
