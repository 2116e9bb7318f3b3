"""The "Adding a representer" recipes of docs/extending.md, run exactly as written: their modules, their YAML
files, their commands, with a few training steps each."""

from __future__ import annotations

import math
import re
import shlex
import sys
from pathlib import Path

import pytest
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
    assert len(blocks["python"]) == 2 and len(blocks["yaml"]) == 2 and len(blocks["bash"]) == 2


def _train(words: list[str], searchpath: Path, run: Path, tiny_model_dir: str) -> dict[str, float]:
    """`python train.py <words>` of a recipe's command (its own conf folder on the search path), for 2 steps."""
    assert words[:2] == ["python", "train.py"]
    test_only = ["debug=fast", "trainer.max_steps=2", f"model.name_or_path={tiny_model_dir}"]
    test_only += ["callbacks.rich_progress_bar=null", "logger=csv"]
    overrides = [w for w in words[2:] if not w.startswith("hydra.searchpath=")]
    cfg = compose_train([*overrides, f"hydra.searchpath=[file://{searchpath}]", *test_only], run)
    return train_script.train(cfg)


@pytest.fixture
def package_recipe(tmp_path, monkeypatch):
    """The base-class recipe's module as if it lay in src/soft_tokens/representers/ (nothing is written into
    the package) and its YAML in a conf folder of its own."""
    module, package_yaml = recipe()["python"][0], recipe()["yaml"][0]
    (tmp_path / Path(PACKAGE_MODULE).name).write_text(module)
    monkeypatch.setattr(
        soft_tokens.representers, "__path__", [*soft_tokens.representers.__path__, str(tmp_path)]
    )
    monkeypatch.delitem(sys.modules, "soft_tokens.representers.topk", raising=False)
    conf = tmp_path / "conf"
    (conf / "representer").mkdir(parents=True)
    (conf / "representer" / Path(PACKAGE_YAML).name).write_text(package_yaml)
    return conf


def test_base_class_recipe_decodes_and_scores_by_hand(package_recipe):
    cfg = OmegaConf.create(recipe()["yaml"][0])
    dotted = PACKAGE_MODULE.removeprefix("src/").removesuffix(".py").replace("/", ".")
    assert cfg._target_.rpartition(".")[0] == dotted
    rep = instantiate(cfg, k=2)
    assert type(rep).__module__ == dotted and rep.name == "topk" and not rep.continuous
    assert type(rep).__mro__[1] is soft_tokens.representers.TokenRepresenter
    logits = torch.tensor([[0.0, 2.0, 1.0, -5.0]])
    E = torch.eye(4)
    step = rep.step(logits, E, torch.Generator().manual_seed(0))
    # candidates 1 and 2, renormalised: p = e^2 / (e^2 + e^1) and 1 - p
    p1 = math.exp(2) / (math.exp(2) + math.exp(1))
    want = math.log(p1) if step.ids.item() == 1 else math.log(1 - p1)
    assert step.ids.item() in (1, 2) and step.logp.item() == pytest.approx(want, abs=1e-6)
    assert torch.equal(step.embeds, E[step.ids]) and dict(step.aux)["candidates"].tolist() == [[1, 2]]
    replayed = rep.log_prob(Replay(logits, None, step.ids, E, dict(step.aux)))
    assert replayed.item() == pytest.approx(want, abs=1e-6)
    assert rep.as_greedy().step(logits, E).ids.tolist() == [1]
    with pytest.raises(ValueError, match=r"needs the rollout's aux tensors \['candidates'\]"):
        rep.log_prob(Replay(logits, None, step.ids, E))


def test_base_class_recipe_trains(package_recipe, tmp_path, tiny_model_dir):
    words = shlex.split(recipe()["bash"][0].strip())
    metrics = _train(words, package_recipe, tmp_path / "run", tiny_model_dir)
    assert "val/accuracy_topk" in metrics and math.isfinite(metrics["train/loss"])
    assert (tmp_path / "run" / "policy" / "model.safetensors").exists()


def test_mixture_recipe_trains_from_outside_the_repository(tmp_path, tiny_model_dir, monkeypatch):
    blocks = recipe()
    module, outside_yaml, command = blocks["python"][1], blocks["yaml"][1], blocks["bash"][1].strip()
    root = tmp_path / "path" / "to"  # the recipe's /path/to
    (root / "conf" / "representer").mkdir(parents=True)
    (root / "my_topk.py").write_text(module)
    (root / "conf" / "representer" / "my_topk.yaml").write_text(outside_yaml)
    words = shlex.split(command.replace("/path/to", str(root)))
    assert words[0] == f"PYTHONPATH={root}" and f"hydra.searchpath=[file://{root}/conf]" in words
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "my_topk", raising=False)
    metrics = _train(words[1:], root / "conf", tmp_path / "run", tiny_model_dir)
    topk = sys.modules["my_topk"]
    assert topk.__file__ == str(root / "my_topk.py")  # imported from outside the package
    assert "val/accuracy_my_topk" in metrics and math.isfinite(metrics["train/loss"])
    assert (tmp_path / "run" / "policy" / "model.safetensors").exists()
    # only `mixture` is overridden, and it is the one used: changing a row of E outside the top k changes nothing
    rep = topk.TopK(k=3, gamma=0.0)
    assert not rep.fast_mixture
    g = torch.Generator().manual_seed(0)
    embedding, logits = torch.randn(40, 8, generator=g), torch.randn(1, 40, generator=g)
    moved = embedding.clone()
    moved[logits[0].argsort()[0]] += 100.0
    assert torch.equal(rep.step(logits, moved).embeds, rep.step(logits, embedding).embeds)
    assert not torch.equal(
        rep.step(logits, embedding).embeds, topk.SoftRepresenter(gamma=0.0).step(logits, embedding).embeds
    )


def test_mixture_recipe_builds_from_an_override_of_the_target(tmp_path, monkeypatch):
    """The turn-2 form: `representer._target_=my_topk.TopK` on the soft representer's config."""
    (tmp_path / "my_topk.py").write_text(recipe()["python"][1])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_topk", raising=False)
    cfg = compose_train(["representer=soft", "representer._target_=my_topk.TopK", "+representer.k=3"])
    from soft_tokens.configured import instantiate as build

    rep = build(cfg.representer)
    assert type(rep).__name__ == "TopK" and rep.k == 3 and rep.tau == 0.5
