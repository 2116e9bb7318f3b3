"""Defaults live in one place: every default of a config class equals the value `conf/` gives it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from helpers import compose_train
from hydra.utils import get_class
from omegaconf import OmegaConf

# (config node, the keys of that node that a code default also sets)
NODES = ["module", "module.rollout", "module.optim", "callbacks.math_eval"]


def code_defaults(target: str) -> dict:
    """The defaults a class (dataclass fields or __init__ keywords) gives its arguments."""
    cls = get_class(target)
    if dataclasses.is_dataclass(cls):
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("node", NODES)
def test_code_defaults_equal_the_yaml(node):
    cfg = compose_train(["model=hf", "model.name_or_path=unused"])  # no model file's own settings
    section = OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=True)
    defaults = code_defaults(section["_target_"])
    shared = {k: v for k, v in section.items() if k in defaults and not isinstance(v, dict)}
    assert shared, f"{node}: no key in common with {section['_target_']}"
    for key, value in shared.items():
        code = defaults[key]
        code = list(code) if isinstance(code, tuple) else code
        assert code == value, f"{node}.{key}: code default {code!r}, conf/ {value!r}"
