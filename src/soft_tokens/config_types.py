"""Type checks of a composed config against the annotations of its first-party `_target_`s.

The annotations are read from the source (ast), not imported, so that a wrong value (`module.samples_per_prompt=abc`)
is reported with its key in about a second, before torch, transformers and Lightning load.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

FIRST_PARTY = ("soft_tokens.", "callbacks.")
# Annotation -> accepted value types (an int is a valid float; a bool is not a number here).
SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,)}


class ConfigTypeError(ValueError):
    """A config value whose type does not match its constructor annotation."""


def check_config_types(cfg: DictConfig) -> None:
    """Raise ConfigTypeError naming the key for any int/float/bool knob of a first-party `_target_`."""
    _check_node(OmegaConf.to_container(cfg, resolve=True), "")


def _check_node(node: Any, path: str) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_node(item, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    target = node.get("_target_")
    annotations = target_annotations(target) if isinstance(target, str) else {}
    for key, value in node.items():
        full = f"{path}.{key}" if path else str(key)
        expected = annotations.get(str(key))
        if expected is not None and not _matches(value, expected):
            raise ConfigTypeError(
                f"config key {full}={value!r}: expected {expected} (an argument of {target}); "
                f"fix the override or the YAML"
            )
        _check_node(value, full)


def _matches(value: Any, annotation: str) -> bool:
    parts = [p.strip() for p in annotation.split("|")]
    if "None" in parts and value is None:
        return True
    for part in parts:
        types = SCALARS.get(part)
        if types is not None and isinstance(value, types) and (part == "bool" or not isinstance(value, bool)):
            return True
    return False


@cache
def target_annotations(target: str) -> dict[str, str]:
    """{argument: annotation} of the scalar (int/float/bool, optionally | None) arguments of `target`."""
    if not target.startswith(FIRST_PARTY) or "." not in target:
        return {}
    module, name = target.rsplit(".", 1)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return {}
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            return {k: v for k, v in _arguments(node).items() if _is_scalar(v)}
    return {}


def _arguments(node: ast.ClassDef | ast.FunctionDef) -> dict[str, str]:
    """Annotated arguments of a function, of a class's __init__, or a dataclass's annotated fields."""
    if isinstance(node, ast.FunctionDef):
        args = node.args.args + node.args.kwonlyargs
        return {a.arg: ast.unparse(a.annotation) for a in args if a.annotation is not None}
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return _arguments(item)
    fields = [i for i in node.body if isinstance(i, ast.AnnAssign) and isinstance(i.target, ast.Name)]
    return {f.target.id: ast.unparse(f.annotation) for f in fields}


def _is_scalar(annotation: str) -> bool:
    parts = {p.strip() for p in annotation.split("|")}
    return bool(parts & SCALARS.keys()) and parts <= SCALARS.keys() | {"None"}
