"""Run folders and resumption: unique folders, a killed run resumes in its own folder and ends exactly where an
uninterrupted run ends (final and best policy), unusable checkpoint folders and files are refused at start."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import hydra
import hydra.core.utils as hydra_utils
import lightning as L
import pytest
import torch
from helpers import compose_train
from hydra.core.hydra_config import HydraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import train as train_script
from soft_tokens.runs.folder import run_dir
from soft_tokens.training import builders

ROOT = Path(__file__).resolve().parents[1]


class Crash(L.Callback):
    """Raises at the start of the batch after `step` optimizer steps (their checkpoint is already saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def overrides() -> list[str]:
    """A 4-step run of the embedded model (its rewards vary, so it learns), checkpoints every 2 steps."""
    return [
        "debug=fast", "trainer.max_steps=4", "callbacks.math_eval.every_n_steps=2", "data.batch_size=4",
        "module.samples_per_prompt=4", "callbacks.rich_progress_bar=null", "logger=csv", "module.optim.lr=1e-3",
        "module.optim.warmup_steps=1", "sampling_temperature=1.0",
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_after_crash_is_exact(tmp_path, monkeypatch):
    # Keeping the checkpoint of the lowest accuracy makes an early step the best (accuracy rises here): a
    # resume that lost the best-checkpoint tracking would take its first new checkpoint as the best.
    tracked = [*overrides(), "callbacks.model_checkpoint.mode=min"]
    full = compose_train(tracked, tmp_path / "full")
    train_script.train(full)
    best = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step*.ckpt"))
    assert len(best) == 1 and not best[0].startswith("step00004"), best

    crashed = compose_train(tracked, tmp_path / "crashed")
    build = builders.build_callbacks  # train.py imports it when a run starts
    monkeypatch.setattr(builders, "build_callbacks", lambda cfg: [*build(cfg), Crash(2)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_script.train(crashed)
    monkeypatch.setattr(builders, "build_callbacks", build)
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2

    # the README's command resumes in the crashed run's folder (conf/hydra/default.yaml's run_dir)
    folder = Path(run_dir(str(tmp_path / "new"), str(ckpt)))
    assert folder == (tmp_path / "crashed").resolve() and not (tmp_path / "new").exists()
    resumed = compose_train([*tracked, f"ckpt_path={ckpt}"], folder)
    train_script.train(resumed)
    initial = AutoModelForCausalLM.from_pretrained(ROOT / "assets" / "embedded").state_dict()
    for policy in ("policy", "policy_best"):
        a = load_file(tmp_path / "full" / policy / "model.safetensors")
        b = load_file(tmp_path / "crashed" / policy / "model.safetensors")
        assert any(not torch.equal(a[k], initial[k]) for k in a), f"training did not change {policy}"
        assert all(torch.equal(a[k], b[k]) for k in a), policy
    assert best == sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").glob("step*.ckpt"))


def test_exported_policy_loads_and_generates(tmp_path, tiny_model_dir):
    cfg = compose_train(
        [*overrides(), f"model.name_or_path={tiny_model_dir}", "trainer.max_steps=1"], tmp_path
    )
    train_script.train(cfg)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    tok = AutoTokenizer.from_pretrained(tmp_path / "policy")
    ids = tok("User: 1 + 1? Assistant:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5 or int(out[0, -1]) == tok.eos_token_id


# ---- run folders


class FixedTime(datetime.datetime):
    """Hydra's `now` resolver at a fixed second: runs started "in the same second"."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 2, 3, 4, 5)


def hydra_output_dirs(tmp_path: Path, monkeypatch, args: list[str]) -> list[Path]:
    """The output folders Hydra gives the train config's jobs for these command-line arguments."""
    seen: list[Path] = []

    @hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="train")
    def app(cfg) -> None:
        seen.append(Path(HydraConfig.get().runtime.output_dir))

    monkeypatch.setattr(hydra_utils, "datetime", FixedTime)
    monkeypatch.setattr(sys, "argv", ["train.py", *args, f"paths.log_dir={tmp_path}"])
    app()
    return seen


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    (first,) = hydra_output_dirs(tmp_path, monkeypatch, [])
    (second,) = hydra_output_dirs(tmp_path, monkeypatch, [])
    assert first == tmp_path / "train" / "runs" / "2026-01-02_03-04-05"
    assert second == first.with_name(first.name + "_1") and second.is_dir()
    assert (first / ".hydra" / "config.yaml").is_file() and (second / ".hydra" / "config.yaml").is_file()


def test_sweeps_keep_one_folder_with_a_subfolder_per_job(tmp_path, monkeypatch):
    one = hydra_output_dirs(tmp_path, monkeypatch, ["-m", "seed=0,1"])
    two = hydra_output_dirs(tmp_path, monkeypatch, ["-m", "seed=0,1"])
    sweep = tmp_path / "train" / "multiruns" / "2026-01-02_03-04-05"
    assert [p.parent for p in one] == [sweep, sweep] and len(set(one)) == 2
    assert [p.parent for p in two] == [sweep.with_name(sweep.name + "_1")] * 2
    assert [p.name for p in two] == [p.name for p in one]


def test_resume_command_runs_in_the_checkpoints_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "train" / "runs" / "old"
    (run / "checkpoints").mkdir(parents=True)
    (resumed,) = hydra_output_dirs(tmp_path, monkeypatch, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert resumed == run
    (fresh,) = hydra_output_dirs(tmp_path, monkeypatch, [f"ckpt_path={tmp_path / 'elsewhere.ckpt'}"])
    assert fresh == tmp_path / "train" / "runs" / "2026-01-02_03-04-05"


def test_checkpoint_folder_that_cannot_be_written_fails_at_start(tmp_path, tiny_model_dir):
    cfg = compose_train([*overrides(), f"model.name_or_path={tiny_model_dir}"], tmp_path)
    (tmp_path / "checkpoints").write_text("a file where the checkpoint folder should be")
    with pytest.raises(PermissionError, match="checkpoint folder .*checkpoints"):
        train_script.train(cfg)
    assert not (tmp_path / "policy").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_folder_fails_at_start(tmp_path, tiny_model_dir):
    cfg = compose_train([*overrides(), f"model.name_or_path={tiny_model_dir}"], tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints").chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="checkpoint folder"):
            train_script.train(cfg)
    finally:
        (tmp_path / "checkpoints").chmod(0o700)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_empty_or_truncated_resume_checkpoint_is_named(tmp_path, tiny_model_dir, content):
    ckpt = tmp_path / "broken.ckpt"
    ckpt.write_bytes(content)
    cfg = compose_train([*overrides(), f"model.name_or_path={tiny_model_dir}", f"ckpt_path={ckpt}"], tmp_path)
    with pytest.raises(ValueError, match="broken.ckpt"):
        train_script.train(cfg)
