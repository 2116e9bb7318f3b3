"""Start-up, config type checks, the progress bar and the W&B logger."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import compose_train, probe_train

import train as train_script
from callbacks.progress import EtaColumn, StepProgressBar
from soft_tokens.config_types import ConfigTypeError, check_config_types

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["module.samples_per_prompt=abc"]])
def test_help_and_config_errors_come_before_heavy_imports(args):
    out = probe_train(*args)
    assert "HEAVY []" in out, out
    if args[0].startswith("module."):
        assert "module.samples_per_prompt='abc': expected int" in out and "CODE config error" in out


def test_config_types_name_the_key():
    check_config_types(compose_train(["module.rollout_micro_batch=null", "module.optim.lr=1"], Path("/tmp")))
    for override, key in [
        ("module.samples_per_prompt=abc", "module.samples_per_prompt"),
        ("module.freeze_embeddings=1", "module.freeze_embeddings"),
        ("module.rollout.max_cot_tokens=1.5", "module.rollout.max_cot_tokens"),
        ("callbacks.math_eval.every_n_steps=often", "callbacks.math_eval.every_n_steps"),
    ]:
        with pytest.raises(ConfigTypeError, match=key.replace(".", r"\.")):
            check_config_types(compose_train([override], Path("/tmp")))


def test_progress_bar_counts_steps_and_shows_key_metrics():
    bar = StepProgressBar()
    metrics = {
        "train/reward": torch.tensor(12.5),
        "val/accuracy": torch.tensor(0.25),
        "train/rollout_tokens_per_s": torch.tensor(1234.4),
        "train/loss": torch.tensor(1.0),
    }
    trainer = SimpleNamespace(max_steps=200, callback_metrics=metrics)
    bar._trainer = trainer
    assert bar.total_train_batches == 200 and bar._get_train_description(0) == "train"
    assert bar.get_metrics(trainer, None) == {"reward": "12.5", "val acc": "0.250", "tok/s": "1234"}
    task = SimpleNamespace(completed=4, total=10, fields={"first": 2}, elapsed=20.0)
    assert str(EtaColumn().render(task)) == "10.0s/step ETA 0:01:00"


@pytest.mark.slow
def test_train_output_is_clean(tmp_path, tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    args = ["debug=fast", f"model.name_or_path={tiny_model_dir}", f"hydra.run.dir={tmp_path}"]
    out = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "step 2/2" in text and "val acc" in text and "ETA" in text
    for noise in ("Epoch", "litlogger", "LeafSpec", "Loading weights", "Writing model shards", "it/s"):
        assert noise not in text, noise
    assert text.count("`Trainer.fit` stopped") == 1


@pytest.mark.slow
def test_wandb_logger_offline_without_a_key(tmp_path, tiny_model_dir, monkeypatch):
    from soft_tokens.training.builders import RunWandbLogger

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    assert RunWandbLogger(save_dir=str(tmp_path))._offline
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket.create_server(("127.0.0.1", 0)) as server:  # a reachable "W&B server": online is checked
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert not RunWandbLogger(save_dir=str(tmp_path))._offline
    with pytest.raises(RuntimeError, match="cannot reach the W&B server .*WANDB_MODE=offline"):
        RunWandbLogger(save_dir=str(tmp_path))  # the server is gone
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_BASE_URL")

    run = tmp_path / "run"
    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            "callbacks.rich_progress_bar=null",
            "logger=many",
        ],
        run,
    )
    metrics = train_script.train(cfg)
    assert "val/accuracy" in metrics
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))[0].stat().st_size > 0
    assert (
        list((run / "tensorboard").glob("events.out.tfevents.*")) and (run / "csv" / "metrics.csv").exists()
    )
