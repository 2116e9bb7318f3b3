"""Errors a user can act on: broken model folders, hub ids not in the cache, checkpoints that are not ones
or belong to another model, W&B without a key or a network, a log folder under a file (docs/testing.md,
"Hostile inputs")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from soft_tokens.models.checkpoints import load_policy
from soft_tokens.models.loading import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["debug=fast", "logger=csv", "callbacks.rich_progress_bar=null"]


def run_script(script: str, args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """stdout and stderr of `python <script> <args>` run from the repository root (after a nonzero exit)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    out = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode != 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _no_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()


def _pickled_weights(d: Path) -> None:
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


def _truncated(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage(d: Path) -> None:
    (d / "model.safetensors").write_bytes(os.urandom(4096))


def _empty(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()


def _bert(d: Path) -> None:
    for p in d.glob("model.safetensors"):
        p.unlink()
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertForMaskedLM(config).save_pretrained(d)


FOLDERS = {
    "no_weights": (_no_weights, r"no weights, no \*\.safetensors file"),
    "pickled_weights": (
        _pickled_weights,
        r"no weights, no \*\.safetensors file \(pytorch_model\.bin: not loaded",
    ),
    "truncated": (_truncated, r"model\.safetensors is not a complete safetensors file \(.*truncated\?\)"),
    "garbage": (_garbage, r"model\.safetensors is not a complete safetensors file \(its header"),
    "empty": (_empty, r"no config\.json, so not a model folder \(it is empty\)"),
    "bert": (_bert, r"a BertForMaskedLM \(model_type 'bert'\), not a causal language model"),
}


@pytest.fixture()
def broken(request, tmp_path, tiny_model_dir) -> tuple[Path, str]:
    """A copy of the tiny model folder broken one way, and the message that must name it."""
    make, message = FOLDERS[request.param]
    folder = tmp_path / request.param
    shutil.copytree(tiny_model_dir, folder)
    make(folder)
    return folder, message


@pytest.mark.parametrize("broken", list(FOLDERS), indirect=True)
def test_broken_model_folder_is_named_with_what_is_wrong(broken, tmp_path):
    folder, message = broken
    text = run_script(
        "train.py", [*QUICK, "model=hf", f"model.name_or_path={folder}", f"paths.log_dir={tmp_path}"]
    )
    assert re.search(rf"model\.name_or_path={re.escape(str(folder))}: {message}", text), text
    assert "supported: causal LMs" in text, text
    with pytest.raises(ValueError, match=rf"checkpoint={re.escape(str(folder))}: {message}"):
        load_policy(ModelConfig(name_or_path=str(ROOT / "assets" / "embedded")), folder)


def test_chat_template_that_raises_is_named(tmp_path, tiny_model_dir):
    folder = tmp_path / "template"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('no system role') }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    text = run_script(
        "train.py", [*QUICK, "model=hf", f"model.name_or_path={folder}", f"paths.log_dir={tmp_path}"]
    )
    assert f"{folder}: the tokenizer's chat template fails on a plain user question" in text, text
    assert "no system role" in text and "prompt.chat_template=false" in text, text


def test_hub_id_not_in_the_cache_says_what_to_do(tmp_path):
    args = [*QUICK, "model=hf", "model.name_or_path=nobody/no-such-model", f"paths.log_dir={tmp_path}"]
    text = run_script("train.py", args, env={"HF_HOME": str(tmp_path / "hf")})
    assert "model.name_or_path=nobody/no-such-model: no such file or folder, and no model" in text, text
    assert "HF_HUB_OFFLINE is set" in text and "hf download nobody/no-such-model" in text, text


def test_random_bytes_checkpoint_is_not_called_a_pickle(tmp_path):
    ckpt = tmp_path / "random.ckpt"
    ckpt.write_bytes(os.urandom(4096))
    text = run_script("evaluate.py", [f"checkpoint={ckpt}", f"paths.log_dir={tmp_path}", "max_examples=1"])
    assert f"checkpoint={ckpt}: not a readable checkpoint: not a torch checkpoint archive" in text, text
    assert "pickles" not in text, text


def test_checkpoint_of_another_model_names_both(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "other.ckpt"
    hparams = {"model": {"name_or_path": "org/other-model", "lora": {"r": None}}}
    torch.save({"state_dict": {"policy.w": torch.ones(2)}, "hyper_parameters": hparams}, ckpt)
    with pytest.raises(
        RuntimeError,
        match=rf"model\.name_or_path={tiny_model_dir} .*trained from model\.name_or_path=org/other-model",
    ):
        load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), ckpt)


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "no W&B API key is set"),
        ({"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}, "cannot reach the W&B server"),
    ],
)
def test_wandb_online_without_key_or_network_fails_before_training(tmp_path, env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env = {**clean, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "WANDB_MODE": "online", **env}
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "train.py", *QUICK, "logger=wandb", f"hydra.run.dir={run}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0 and message in text, text
    assert "WANDB_MODE=offline" in text and "logger=tensorboard" in text, text
    assert not list(run.rglob("*.ckpt"))  # no training step ran (the start checks made checkpoints/)


def test_log_dir_under_a_file_is_named(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    text = run_script("train.py", [f"paths.log_dir={tmp_path / 'a_file' / 'outputs'}"])
    assert f"cannot create the run folder {tmp_path / 'a_file' / 'outputs'}" in text, text
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in text and "Traceback" not in text, text
