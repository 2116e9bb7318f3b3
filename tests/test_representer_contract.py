"""The representer contract in one file (issue 33 item 2): an abstract base class with `step` and `log_prob`,
capabilities declared with defaults, aux tensors declared per representer, `fed` asked for by name, and a
configured object's build error shown with its cause (soft_tokens.configured)."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest
import torch
from helpers import gen, make
from omegaconf import OmegaConf

import soft_tokens.representers as reps
from soft_tokens.configured import BuildError, instantiate
from soft_tokens.representers import HardRepresenter, Replay, SoftRepresenter, Step, TokenRepresenter
from soft_tokens.representers.base import TrainingFreeRepresenter

REPRESENTERS = Path(reps.__file__).parent


def test_the_contract_is_an_abstract_base_class_of_step_and_log_prob():
    assert TokenRepresenter.__abstractmethods__ == {"step", "log_prob"}

    class NoLogProb(TokenRepresenter):
        def step(self, logits, embedding, generator=None):
            return Step(embedding[logits.argmax(-1)], logits.argmax(-1), torch.zeros(len(logits)))

    with pytest.raises(TypeError, match="log_prob"):
        NoLogProb()

    class NoStep(TokenRepresenter):
        def log_prob(self, replay):
            return replay.logits[..., 0]

    with pytest.raises(TypeError, match="step"):
        NoStep()
    # each shipped representer is concrete
    for name in reps.__all__:
        cls = getattr(reps, name)
        if isinstance(cls, type) and issubclass(cls, TokenRepresenter) and cls is not TokenRepresenter:
            assert not inspect.isabstract(cls), name


def test_the_capabilities_have_their_defaults_on_the_base_class():
    class Minimal(TokenRepresenter):
        def step(self, logits, embedding, generator=None):
            ids = logits.argmax(-1)
            return Step(embedding[ids], ids, torch.zeros(len(ids)))

        def log_prob(self, replay):
            return torch.log_softmax(replay.logits, -1).gather(-1, replay.ids[..., None]).squeeze(-1)

    rep = Minimal()
    assert (rep.name, rep.greedy, rep.continuous, rep.trainable, rep.stop_patience) == (
        "minimal",
        False,
        False,
        True,
        1,
    )
    assert rep.as_greedy().greedy and not rep.greedy and repr(rep) == "Minimal(name='minimal', sample)"
    logits, E = make()
    head = torch.nn.Linear(E.shape[1], E.shape[0], bias=False)
    hidden = torch.randn(3, E.shape[1], generator=gen(0))
    out, carry = rep.project(hidden, head, E)
    assert carry is None and torch.equal(out, head(hidden))
    uniform = torch.zeros(1, 4)
    assert rep.entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
    same = Replay(logits, None, logits.argmax(-1), E)
    assert torch.equal(rep.kl(same, same.under(logits, E)), torch.zeros(len(logits)))  # k3 at equal policies
    assert rep.prepare(E) is None


def test_fed_is_asked_for_by_name_and_refused_for_a_hard_representer():
    logits, E = make()
    replay = Replay(logits, None, logits.argmax(-1), E)
    with pytest.raises(ValueError, match="not continuous: its input is E\\[ids\\]"):
        replay.fed_input(HardRepresenter())
    with pytest.raises(ValueError, match="the replay has none"):
        replay.fed_input(SoftRepresenter())
    fed = torch.ones(len(logits), E.shape[1])
    assert (
        replay.under(logits, E).fed is None
        and Replay(logits, fed, logits.argmax(-1), E).fed_input(SoftRepresenter()) is fed
    )


def test_aux_is_declared_and_stored_under_its_field_names():
    logits, E = make(n=6, v=12)
    soft = SoftRepresenter(noise_top_k=3).step(logits, E, gen(0)).aux
    gumbel = reps.GumbelSoftmaxRepresenter(top_p=0.9).step(logits, E, gen(0)).aux
    logit = SoftRepresenter(noise_on="top_k_logits", noise_logits_top_k=4).step(logits, E, gen(0)).aux
    assert list(soft) == ["noisy", "noise_ids"] and soft.noise_ids.shape == (6, 3)
    assert list(gumbel) == ["topk_ids", "perturbed", "kept", "scored"]
    assert list(logit) == ["perturbed_logits", "logit_ids"] and torch.equal(
        logit["logit_ids"], logit.logit_ids
    )
    assert list(SoftRepresenter(noise_min_entropy=0.1).step(logits, E, gen(0)).aux) == ["noisy"]  # isotropic


def test_no_representer_repeats_a_signature_it_inherits():
    """Only SoftRepresenter.step takes `pre` (what its own `project` carried); no other step does."""
    for path in REPRESENTERS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "step":
                args = [a.arg for a in node.args.args + node.args.kwonlyargs]
                if path.name != "soft.py":
                    assert "pre" not in args, f"{path.name}: step repeats the base's old `pre` argument"
    assert "pre" not in inspect.signature(TokenRepresenter.step).parameters
    assert not issubclass(TrainingFreeRepresenter, SoftRepresenter)


# --------------------------------------------------------------------------- a build error shows its cause


def _target(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_an_import_error_inside_the_module_is_shown_with_its_cause(tmp_path, monkeypatch):
    _target(tmp_path, monkeypatch, "broken_topk", "import numpy_extra_not_installed\n\nclass TopK: ...\n")
    cfg = OmegaConf.create({"representer": {"_target_": "broken_topk.TopK"}})
    with pytest.raises(BuildError) as err:
        instantiate(cfg.representer)
    message = str(err.value)
    assert message == (
        "representer: importing broken_topk for _target_ broken_topk.TopK failed: ModuleNotFoundError: No "
        f"module named 'numpy_extra_not_installed' ({tmp_path / 'broken_topk.py'}:1)"
    )
    assert "Error locating target" not in message and isinstance(err.value.__cause__, ModuleNotFoundError)


def test_an_error_in_a_class_body_is_shown_with_its_cause(tmp_path, monkeypatch):
    source = "class TopK:\n    k = 1 / 0\n"
    _target(tmp_path, monkeypatch, "zero_topk", source)
    with pytest.raises(
        BuildError, match=r"importing zero_topk .* ZeroDivisionError: division by zero .*zero_topk.py:2\)"
    ):
        instantiate(OmegaConf.create({"representer": {"_target_": "zero_topk.TopK"}}).representer)


def test_an_error_in_init_names_the_key_the_target_and_the_cause(tmp_path, monkeypatch):
    source = "class TopK:\n    def __init__(self, k=1):\n        raise ValueError(f'k={k} is too large')\n"
    _target(tmp_path, monkeypatch, "raising_topk", source)
    cfg = OmegaConf.create({"module": {"representer": {"_target_": "raising_topk.TopK", "k": 7}}})
    with pytest.raises(BuildError) as err:
        instantiate(cfg.module.representer)
    assert str(err.value) == (
        "module.representer: building raising_topk.TopK failed: ValueError: k=7 is too large "
        f"({tmp_path / 'raising_topk.py'}:3)"
    )


def test_a_missing_module_or_class_says_the_way_out(tmp_path, monkeypatch):
    with pytest.raises(
        BuildError,
        match=r"^representer: cannot import no_such_topk.TopK \(no module named "
        r"'no_such_topk'\); put the folder holding no_such_topk on PYTHONPATH",
    ):
        instantiate(OmegaConf.create({"representer": {"_target_": "no_such_topk.TopK"}}).representer)
    _target(tmp_path, monkeypatch, "empty_topk", "X = 1\n")
    with pytest.raises(BuildError, match=r"^representer: module empty_topk has no 'TopK'"):
        instantiate(OmegaConf.create({"representer": {"_target_": "empty_topk.TopK"}}).representer)


def test_a_nested_target_names_its_own_key(tmp_path, monkeypatch):
    _target(
        tmp_path,
        monkeypatch,
        "nested_cb",
        "class CB:\n    def __init__(self):\n        raise OSError('no disk')\n",
    )
    cfg = OmegaConf.create({"trainer": {"_target_": "builtins.dict", "cb": {"_target_": "nested_cb.CB"}}})
    with pytest.raises(BuildError, match=r"^trainer\.cb: building nested_cb\.CB failed: OSError: no disk"):
        instantiate(cfg.trainer)
