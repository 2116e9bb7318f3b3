"""A resume continues its own run or is refused before writing anything; a fork starts a new folder that records
its parent; a run folder moved elsewhere resumes over its own last.ckpt (docs/resuming.md)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_train, probe_train

import train as train_script
from soft_tokens.runs.folder import run_dir
from soft_tokens.runs.resume import ResumeRefused, check_resume

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
        ("module.optim.name=sgd", "module.optim.name: 'adamw' -> 'sgd'"),
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


# ---- round 4: one writer per folder, finished runs, refused starts, a fork's seed and lr, leftovers


def train_py(*args: str) -> subprocess.CompletedProcess:
    """`python train.py args` from the repository root (offline)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture()
def copied_run(run, tmp_path) -> Path:
    """A copy of the finished one-step run, to resume in place."""
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def rollout_states(monkeypatch) -> list[torch.Tensor]:
    """The rollout stream's state at each training rollout of the runs started after this call."""
    from soft_tokens.training.module import SoftTokensModule

    states, original = [], SoftTokensModule.generate_rollouts

    def generate_rollouts(self, questions):
        states.append(self.rollout_generator().get_state().clone())
        return original(self, questions)

    monkeypatch.setattr(SoftTokensModule, "generate_rollouts", generate_rollouts)
    return states


def test_resume_into_a_folder_in_use_is_refused_naming_the_holder(run, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = run / "run.lock"
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "earlier"}))
        before = snapshot(run)
        ckpt = run / "checkpoints" / "last.ckpt"
        out = train_py(*RUN, "trainer.max_steps=2", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}")
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        assert f"in use by another training process (pid {holder.pid} on {socket.gethostname()}" in text, text
        assert "Traceback" not in text, text
        assert snapshot(run) == before  # no log line, checkpoint, summary or config written by the second one
        assert not (run / ".hydra" / "resumes").exists()
    finally:
        holder.kill()
        holder.wait()
        lock.unlink(missing_ok=True)


def test_resume_of_a_finished_run_says_so_and_changes_nothing(run, tmp_path):
    before = snapshot(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    out = train_py(*RUN, f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}")  # the run's own command again
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "this run" in text and "finished at step 1 (trainer.max_steps=1); nothing to do" in text, text
    assert "raise trainer.max_steps" in text and "Traceback" not in text, text
    assert snapshot(run) == before  # summary.json, config.yaml, the log, checkpoints
    assert not (run / ".hydra" / "resumes").exists()


def test_resume_refused_at_start_keeps_the_finished_summary(copied_run, tmp_path):
    folder = copied_run / "checkpoints"
    overrides = [*RUN, "trainer.max_steps=2", f"ckpt_path={folder / 'last.ckpt'}"]
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes into read-only folders: point the checkpoints at a file
        folder.chmod(0o700)
        (tmp_path / "a_file").write_text("not a folder")
        overrides.append(f"callbacks.model_checkpoint.dirpath={tmp_path / 'a_file'}")
    before = snapshot(copied_run)
    try:
        with pytest.raises(
            SystemExit, match="run refused: the checkpoint folder .* is not a writable folder"
        ):
            train_script.main(compose_train(overrides, copied_run))
        assert (
            snapshot(copied_run) == before
        )  # summary.json still the completed run's, no config.yaml rewritten
    finally:
        folder.chmod(0o700)
    assert json.loads((copied_run / "summary.json").read_text())["global_step"] == 1


def test_resume_keeps_its_rollout_stream_and_clears_what_a_killed_run_left(copied_run, monkeypatch, caplog):
    # The run was killed: its lock (a pid that runs no more) and a half-written checkpoint are still there.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (copied_run / "run.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    partial = copied_run / "checkpoints" / ".last.ckpt.0badc0de.partial"
    partial.write_bytes(b"PK half a checkpoint")
    ckpt = copied_run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["rollout_rng"]
    states = rollout_states(monkeypatch)
    with caplog.at_level("WARNING"):
        train_script.train(compose_train([*RUN, "trainer.max_steps=2", f"ckpt_path={ckpt}"], copied_run))
    assert torch.equal(states[0], saved)  # a resume continues the checkpoint's stream (as before)
    assert f"taking over the lock of pid {gone.pid}" in caplog.text
    assert not partial.exists() and not (copied_run / "run.lock").exists()
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2


def test_forks_with_new_seeds_draw_new_rollouts_and_a_new_lr_takes(run, tmp_path, monkeypatch):
    from soft_tokens.rollout.seeding import mix_seed

    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["rollout_rng"]
    states = rollout_states(monkeypatch)
    fork = [*RUN, "trainer.max_steps=2", "fork=true", f"ckpt_path={ckpt}"]
    train_script.train(compose_train([*fork, "seed=1", "module.optim.lr=0.5"], tmp_path / "one"))
    train_script.train(compose_train([*fork, "seed=2"], tmp_path / "two"))
    one, two = states
    assert torch.equal(one, torch.Generator().manual_seed(mix_seed(1, 0)).get_state())
    assert torch.equal(two, torch.Generator().manual_seed(mix_seed(2, 0)).get_state())
    assert not torch.equal(one, saved) and not torch.equal(one, two)
    # The new lr replaces the restored one: step 2 of the 10-step linear warm-up is 2/10 of it.
    forked = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    assert forked["lr_schedulers"][0]["base_lrs"] == [0.5]
    assert forked["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.5 * 2 / 10, rel=1e-12)
    assert json.loads((tmp_path / "one" / "parent.json").read_text())["changed"]["module.optim.lr"] == [
        1e-4,
        0.5,
    ]


def test_copied_checkpoint_with_unchanged_settings_resumes(run, tmp_path):
    ckpt = tmp_path / "outside.ckpt"  # compared with its hyper-parameters: resolved paths on both sides
    shutil.copy(run / "checkpoints" / "last.ckpt", ckpt)
    assert (
        check_resume(compose_train([*RUN, "trainer.max_steps=2", f"ckpt_path={ckpt}"], tmp_path / "new"))
        is None
    )


def test_resume_refusal_advises_a_fork_only_where_a_fork_can(run):
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = compose_train([*RUN, "module.optim.lr=0.5", f"ckpt_path={ckpt}"], run)
    with pytest.raises(ResumeRefused, match="module.optim.lr: 0.0001 -> 0.5. .* or add fork=true to start"):
        check_resume(cfg)
    cfg = compose_train([*RUN, "module.optim.name=sgd", f"ckpt_path={ckpt}"], run)
    with pytest.raises(
        ResumeRefused, match=r"start a new run without ckpt_path \(a fork, fork=true, cannot change"
    ):
        check_resume(cfg)


def test_folder_as_ckpt_path_is_named_a_folder(run, tmp_path):
    cfg = compose_train([*RUN, f"ckpt_path={run / 'checkpoints'}"], tmp_path)
    with pytest.raises(
        ResumeRefused, match="checkpoints: a folder, not a checkpoint file; pass a .ckpt file"
    ):
        check_resume(cfg)


def test_config_error_leaves_no_run_folder(tmp_path):
    out = probe_train("module.optim.lr=abc", f"paths.log_dir={tmp_path}")
    assert "config error: " in out and "module.optim.lr" in out and "CODE config error" in out, out
    assert not list((tmp_path / "train" / "runs").iterdir())
