"""A resume continues its own run or is refused before writing anything; a fork starts a new folder that records
its parent; a run folder moved elsewhere resumes over its own last.ckpt (docs/resuming.md)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_train

import train as train_script
from soft_tokens.resume import ResumeRefused, check_resume
from soft_tokens.run_folder import run_dir

ROOT = Path(__file__).resolve().parents[1]
# One optimizer step of the embedded model, checkpointed; the same overrides for the run and its resumes.
RUN = ["debug=fast", "trainer.max_steps=1", "logger=csv", "callbacks.rich_progress_bar=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-step run folder (config.yaml, checkpoints/last.ckpt, policy/, summary.json)."""
    folder = tmp_path_factory.mktemp("run")
    train_script.train(compose_train(RUN, folder))
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "override, change",
    [
        ("representer=soft", "representer.name: 'hard' -> 'soft'"),
        ("model.lora.r=4", "model.lora.r: None -> 4"),
        ("estimator.beta=0.04", "estimator.beta: 0.0 -> 0.04"),
        ("seed=1", "seed: 0 -> 1"),
    ],
)
def test_resume_that_changes_the_run_is_refused_and_rewrites_nothing(run, tmp_path, override, change):
    before = snapshot(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    args = [*RUN, override, f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "resume refused" in text and change in text and "fork=true" in text, text
    assert "Traceback" not in text, text
    assert snapshot(run) == before  # summary.json, config.yaml, .hydra/, checkpoints, policy/, the log
    assert not (run / ".hydra" / "resumes").exists()


def test_moved_run_folder_resumes_over_its_own_last_checkpoint(run, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    ckpt = moved / "checkpoints" / "last.ckpt"
    train_script.train(compose_train([*RUN, "trainer.max_steps=2", f"ckpt_path={ckpt}"], moved))
    names = sorted(p.name for p in (moved / "checkpoints").glob("last*.ckpt"))
    assert names == ["last.ckpt"], names  # not last-v1.ckpt beside a stale last.ckpt
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    assert json.loads((moved / "summary.json").read_text())["global_step"] == 2


def test_fork_starts_a_new_folder_that_records_its_parent(run, tmp_path):
    before = snapshot(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    folder = Path(run_dir(str(tmp_path / "fork"), str(ckpt), True))
    assert folder == tmp_path / "fork"  # a new folder, not the parent's
    overrides = [*RUN, "trainer.max_steps=2", "representer=soft", "fork=true", f"ckpt_path={ckpt}"]
    train_script.train(compose_train(overrides, folder))
    parent = json.loads((folder / "parent.json").read_text())
    assert parent["parent_run"] == str(run.resolve()) and parent["checkpoint"] == str(ckpt.resolve())
    assert parent["changed"]["representer.name"] == ["hard", "soft"]
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert "soft" in (folder / "policy" / "README.md").read_text()
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "override, change",
    [
        ("model.lora.r=4", "model.lora.r: None -> 4"),
        ("module.optim.lr=0.5", "module.optim.lr: 0.0001 -> 0.5"),
    ],
)
def test_fork_keeps_the_weights_layout_and_the_optimizer(run, override, change):
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = compose_train([*RUN, "fork=true", override, f"ckpt_path={ckpt}"], run.parent / "unused")
    with pytest.raises(ResumeRefused, match=f"a fork keeps .*{change.replace('.', '[.]')}"):
        check_resume(cfg)


def test_fork_needs_a_checkpoint(tmp_path):
    with pytest.raises(ResumeRefused, match="fork=true needs .*ckpt_path="):
        check_resume(compose_train([*RUN, "fork=true"], tmp_path))


def test_checkpoint_of_another_model_names_both_models(run, tmp_path, tiny_model_dir):
    ckpt = tmp_path / "outside.ckpt"  # outside a run folder: compared with the checkpoint's hyper-parameters
    shutil.copy(run / "checkpoints" / "last.ckpt", ckpt)
    cfg = compose_train([*RUN, f"model.name_or_path={tiny_model_dir}", f"ckpt_path={ckpt}"], tmp_path / "new")
    embedded = str(ROOT / "assets" / "embedded")
    with pytest.raises(ValueError, match=f"model.name_or_path: '{embedded}' -> '{tiny_model_dir}'"):
        train_script.train(cfg)
    cfg = compose_train([*RUN, "model.lora.r=2", f"ckpt_path={ckpt}"], tmp_path / "new")
    with pytest.raises(ValueError, match="model.lora.r: None -> 2"):  # full weights resumed as LoRA
        train_script.train(cfg)
    assert not (tmp_path / "new").exists()


def test_refused_fork_leaves_no_folder(run, tmp_path):
    ckpt = run / "checkpoints" / "last.ckpt"
    args = [*RUN, "fork=true", "model.lora.r=4", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0 and "a fork keeps" in out.stderr, out.stderr
    assert not list((tmp_path / "train" / "runs").iterdir())
