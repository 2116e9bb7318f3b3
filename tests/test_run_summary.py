"""Seeds and sweeps: job folders named by their overrides, failed runs recorded, runs summarised over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from helpers import compose_config, compose_train
from omegaconf import OmegaConf, open_dict

import train as train_script
from scripts import summarize_runs
from soft_tokens.runs.summary import read_summary, recorded_failure


def test_sweep_job_folders_are_named_by_their_overrides():
    overrides = ["seed=1", "representer=soft", "model.name_or_path=/some/model", "ckpt_path=/a/b.ckpt"]
    cfg = compose_config("train", overrides, keep_hydra=True)
    with open_dict(cfg):
        cfg.hydra.job.num = 3
    # paths (which would nest folders) and the resume checkpoint are left out of the name
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == "3_representer=soft,seed=1"


def test_failed_run_logs_its_traceback_and_is_marked_failed(tmp_path):
    run = tmp_path / "run"
    cfg = compose_train(["debug=fast", f"model.name_or_path={tmp_path / 'no_model_here'}"], run)
    with pytest.raises(Exception) as raised:
        train_script.main(cfg)  # Hydra's main passes a given config straight to the function
    summary = read_summary(run)
    assert summary["status"] == "failed" and type(raised.value).__name__ in summary["error"]
    log = (run / summary["log"]).read_text()
    assert "Traceback (most recent call last)" in log and str(raised.value).splitlines()[0] in log
    table = summarize_runs.main([str(run)])
    row = next(line for line in table.splitlines() if "failed" in line)
    assert "**failed**" in row and row.endswith("| - |")  # no reward of 0.0 for a run that never trained


def test_recorded_failure_reraises_and_leaves_successes_alone(tmp_path):
    with recorded_failure(tmp_path / "ok"):
        pass
    assert read_summary(tmp_path / "ok") == {"status": "incomplete"}
    with pytest.raises(KeyError), recorded_failure(tmp_path / "bad"):
        {}["missing"]
    assert read_summary(tmp_path / "bad")["error"] == "KeyError: 'missing'"
    assert "KeyError" in (tmp_path / "bad" / "train.log").read_text()


def _fake_run(folder: Path, seed: int, hard: list[float], reward: float, status: str = "completed") -> None:
    """A run folder as train.py leaves it: config.yaml, .hydra/overrides.yaml, TensorBoard scalars, summary."""
    from torch.utils.tensorboard import SummaryWriter

    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "representer": {"name": "soft"}}))
    overrides = ["representer=soft", f"seed={seed}", "module.optim.lr=3e-5"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    writer = SummaryWriter(str(folder / "tensorboard"))
    for step, value in enumerate(hard):
        writer.add_scalar("val/accuracy", value, 10 * step)
        writer.add_scalar("val/accuracy_soft", value - 0.01, 10 * step)
    writer.add_scalar("train/reward", reward, 0)
    writer.close()
    summary = (
        {"wall_s": 1.0, "global_step": 10} if status == "completed" else {"status": status, "error": "E: x"}
    )
    (folder / "summary.json").write_text(json.dumps(summary))


def test_summary_shows_seed_and_overrides_and_aggregates_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0_representer=soft,seed=0", 0, [0.30, 0.40], 20.0)
    _fake_run(sweep / "1_representer=soft,seed=1", 1, [0.30, 0.50], 30.0)
    _fake_run(sweep / "2_representer=soft,seed=2", 2, [0.30], 40.0, status="failed")
    table = summarize_runs.main([str(sweep)])
    rows = [line for line in table.splitlines() if line.startswith("| soft |")]
    assert len(rows) == 4  # three runs, one aggregate
    assert "| representer=soft module.optim.lr=3e-5 | 0 | completed |" in rows[0]
    assert "| 2 | **failed**: E: x |" in rows[2]
    se = statistics.stdev([0.40, 0.50]) / math.sqrt(2)  # over the completed seeds only
    assert f"| 2 / 3 (0,1) | 0.450 +- {se:.3f} |" in rows[3]
    assert f"| 25.0 +- {statistics.stdev([20.0, 30.0]) / math.sqrt(2):.1f} |" in rows[3]
