"""A run killed mid-way resumes from its last checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from test_train import compose_train
from transformers import AutoModelForCausalLM, AutoTokenizer

import train as train_script

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


def test_resume_after_crash_is_exact(tmp_path, monkeypatch):
    full = compose_train(overrides(), tmp_path / "full")
    train_script.train(full)

    crashed = compose_train(overrides(), tmp_path / "crashed")
    build = train_script.build_callbacks
    monkeypatch.setattr(train_script, "build_callbacks", lambda cfg: [*build(cfg), Crash(2)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_script.train(crashed)
    monkeypatch.setattr(train_script, "build_callbacks", build)
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2

    resumed = compose_train([*overrides(), f"ckpt_path={ckpt}"], tmp_path / "resumed")
    train_script.train(resumed)
    a = load_file(tmp_path / "full" / "policy" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "policy" / "model.safetensors")
    initial = AutoModelForCausalLM.from_pretrained(ROOT / "assets" / "embedded").state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a), "training did not change the policy"
    assert all(torch.equal(a[k], b[k]) for k in a)


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
