"""The "Adding a representer" recipe of docs/extending.md, run exactly as written: its module, its YAML files, its
command."""

from __future__ import annotations

import math
import re
import shlex
import sys
from pathlib import Path

import torch
from helpers import PACKAGE_MODULE, PACKAGE_YAML, compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

import soft_tokens.representers
import train as train_script
from soft_tokens.representers import Replay

EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def recipe() -> dict[str, list[str]]:
    """The fenced code blocks of docs/extending.md's "Adding a representer" section, by language."""
    text = EXTENDING.read_text()
    start = text.index("\n## Adding a representer\n")
    end = text.index("\n## ", start + 1)
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


def test_extending_names_the_recipe_files():
    text = EXTENDING.read_text()
    section = text[text.index("\n## Adding a representer\n") :]
    assert f"`{PACKAGE_MODULE}`" in section and f"`{PACKAGE_YAML}`" in section
    blocks = recipe()
    assert len(blocks["python"]) == 1 and len(blocks["yaml"]) == 2 and len(blocks["bash"]) == 1


def test_package_recipe_builds_decodes_and_scores(tmp_path, monkeypatch):
    module, package_yaml = recipe()["python"][0], recipe()["yaml"][0]
    (tmp_path / Path(PACKAGE_MODULE).name).write_text(module)
    # The module file as if it lay in src/soft_tokens/representers/ (nothing is written into the package).
    monkeypatch.setattr(
        soft_tokens.representers, "__path__", [*soft_tokens.representers.__path__, str(tmp_path)]
    )
    monkeypatch.delitem(sys.modules, "soft_tokens.representers.topk", raising=False)
    cfg = OmegaConf.create(package_yaml)
    dotted = PACKAGE_MODULE.removeprefix("src/").removesuffix(".py").replace("/", ".")
    assert cfg._target_.rpartition(".")[0] == dotted
    rep = instantiate(cfg)
    assert type(rep).__module__ == dotted and rep.name == "topk"
    g = torch.Generator().manual_seed(0)
    embedding = torch.randn(40, 8, generator=g)
    logits = torch.randn(3, 40, generator=g)
    rep.prepare(embedding)
    step = rep.step(logits, embedding, g)
    replayed = rep.log_prob(Replay(logits, step.embeds, step.ids, embedding))
    # ~d/2 log(2 pi sigma^2) + |eps|^2 / 2: values of order 10 in float32
    torch.testing.assert_close(replayed, step.logp, rtol=1e-5, atol=1e-4)
    # only the k most likely rows enter the mixture: changing another row of E leaves it unchanged
    outside = logits[0].argsort()[0]
    moved = embedding.clone()
    moved[outside] += 100.0
    torch.testing.assert_close(rep.mixture(logits[:1], moved), rep.mixture(logits[:1], embedding))


def test_outside_recipe_trains(tmp_path, tiny_model_dir, monkeypatch):
    blocks = recipe()
    module, outside_yaml, command = blocks["python"][0], blocks["yaml"][1], blocks["bash"][0].strip()
    root = tmp_path / "path" / "to"  # the recipe's /path/to
    (root / "conf" / "representer").mkdir(parents=True)
    (root / "topk.py").write_text(module)
    (root / "conf" / "representer" / "topk.yaml").write_text(outside_yaml)
    words = shlex.split(command.replace("/path/to", str(root)))
    env, entry, overrides = words[0], words[1:3], words[3:]
    assert env.startswith("PYTHONPATH=") and entry == ["python", "train.py"]
    monkeypatch.syspath_prepend(env.removeprefix("PYTHONPATH="))
    monkeypatch.delitem(sys.modules, "topk", raising=False)
    test_only = ["debug=fast", "trainer.max_steps=1", f"model.name_or_path={tiny_model_dir}"]
    test_only += ["callbacks.rich_progress_bar=null", "logger=csv"]
    cfg = compose_train([*overrides, *test_only], tmp_path / "run")
    metrics = train_script.train(cfg)
    assert sys.modules["topk"].__file__ == str(root / "topk.py")  # imported from outside the package
    assert "val/accuracy_topk" in metrics and math.isfinite(metrics["train/loss"])
    assert (tmp_path / "run" / "policy" / "model.safetensors").exists()


def test_recipe_yaml_files_differ_only_in_the_target():
    package, outside = (dict(OmegaConf.create(y)) for y in recipe()["yaml"])
    assert package.pop("_target_") != outside.pop("_target_") and package == outside
