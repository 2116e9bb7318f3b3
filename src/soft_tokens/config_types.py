"""What values a config key may take: its type from the annotations of its first-party `_target_`, its range
from RANGES, both checked on the composed config before anything is built.

The annotations are read from the source (ast), not imported, so that a wrong value (`representer.tau=abc`,
`module.optim.lr=0`) is reported with its key in about a second, before torch, transformers and Lightning
load. The source is followed as Python would: a `_target_` re-exported by a package `__init__.py`, a class
without `__init__` or whose `__init__` hands `**kwargs` to its base (the base's arguments), and a dataclass
field annotated with another first-party class (`model.lora`: LoraSettings).
"""

from __future__ import annotations

import ast
import importlib.util
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

FIRST_PARTY = ("soft_tokens", "callbacks")
# Annotation -> accepted value types (an int is a valid float; a bool is not a number here).
SCALARS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,)}

# The range of every numeric knob. A key matches each config key ending with it (`representer.tau` also
# checks evaluate.yaml's `settings.soft_sample.representer.tau`); null values are not range-checked.
RANGES: dict[str, str] = {
    "seed": "[0, 4294967295]",
    "sampling_temperature": "> 0",
    "model.lora.r": ">= 1",  # and at most the smallest dimension of an adapted layer (soft_tokens.lora)
    "model.lora.alpha": "> 0",  # peft scales the adapters by alpha / r: 0 would leave the output unchanged
    "model.lora.dropout": "[0, 1)",
    "module.samples_per_prompt": ">= 1",
    "module.rollout_micro_batch": ">= 1",
    "module.logprob_chunk_size": ">= 1",
    "module.max_bad_steps": ">= 1",
    "module.cot_grad_weight": ">= 0",
    "rollout.max_cot_tokens": ">= 0",
    "rollout.answer_max_tokens": ">= 1",
    "rollout.answer_temperature": "> 0",
    "rollout.decode_threads": ">= 1",
    "module.optim.lr": "> 0",
    "module.optim.weight_decay": ">= 0",
    "module.optim.betas[0]": "[0, 1)",
    "module.optim.betas[1]": "[0, 1)",
    "module.optim.eps": "> 0",
    "module.optim.momentum": "[0, 1)",
    "module.optim.warmup_steps": ">= 0",
    "module.optim.max_grad_norm": "> 0",
    "representer.temperature": "> 0",
    "representer.tau": "> 0",
    "representer.gamma": ">= 0",
    "representer.noise_top_k": ">= 2",
    "representer.noise_min_entropy": ">= 0",
    "representer.top_k": ">= 1",
    "representer.top_p": "(0, 1]",
    "representer.min_p": "[0, 1]",
    "representer.beta": ">= 0",
    "representer.stop_entropy": ">= 0",
    "representer.stop_patience": ">= 1",
    "estimator.beta": ">= 0",  # the KL coefficient: negative would push the policy away from the reference
    "estimator.epsilon": ">= 0",
    "estimator.epsilon_high": ">= 0",
    "estimator.num_iterations": ">= 1",
    "estimator.eps": "> 0",
    "reward.timeout_s": "> 0",
    "reward.max_answer_chars": ">= 1",
    "data.batch_size": ">= 1",
    "data.num_workers": ">= 0",
    "data.max_prompt_tokens": ">= 1",
    "callbacks.math_eval.every_n_steps": ">= 1",
    "callbacks.math_eval.batch_size": ">= 1",
    "callbacks.math_eval.max_examples": ">= 1",
    "torch_threads": ">= 1",
}


class ConfigTypeError(ValueError):
    """A config value whose type does not match its annotation, or outside its range in RANGES."""


@dataclass(frozen=True)
class Range:
    """An interval of the real line; None: unbounded on that side."""

    low: float | None
    high: float | None
    low_closed: bool = True
    high_closed: bool = True
    text: str = ""

    def __contains__(self, value: float) -> bool:
        if math.isnan(value):
            return False
        above = self.low is None or value > self.low or (self.low_closed and value == self.low)
        below = self.high is None or value < self.high or (self.high_closed and value == self.high)
        return above and below


def parse_range(text: str) -> Range:
    """A Range from '> a', '>= a', '< b', '<= b' or an interval '[a, b)' (brackets closed, parentheses open)."""
    text = text.strip()
    for op, closed in ((">=", True), ("<=", True), (">", False), ("<", False)):
        if text.startswith(op):
            bound = float(text[len(op) :])
            if op[0] == ">":
                return Range(bound, None, low_closed=closed, text=text)
            return Range(None, bound, high_closed=closed, text=text)
    if text[:1] in "[(" and text[-1:] in "])" and "," in text:
        low, high = (float(part) for part in text[1:-1].split(","))
        return Range(low, high, text[0] == "[", text[-1] == "]", text)
    raise ValueError(f"not a range: {text!r}")


PARSED_RANGES = {key: parse_range(text) for key, text in RANGES.items()}


def range_of(key: str) -> Range | None:
    """The Range of a full config key (`settings.soft_sample.representer.tau`), or None if it has none."""
    for suffix, allowed in PARSED_RANGES.items():
        if key == suffix or key.endswith("." + suffix):
            return allowed
    return None


def check_value(key: str, value: Any) -> None:
    """Raise ConfigTypeError naming `key` if `value` is not a number in its range (nothing if no range)."""
    allowed = range_of(key)
    if allowed is None or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigTypeError(f"config key {key}={value!r}: expected a number {allowed.text}")
    if value not in allowed:
        where = "in " if allowed.text[0] in "[(" else ""
        raise ConfigTypeError(
            f"config key {key}={value!r}: must be {where}{allowed.text}; fix the override or the YAML"
        )


def check_config_types(cfg: DictConfig) -> None:
    """Raise ConfigTypeError naming the key for a knob of the wrong type (first-party `_target_`s) or range."""
    _check_node(OmegaConf.to_container(cfg, resolve=True), "", "")


def _check_node(node: Any, path: str, owner: str) -> None:
    """Check a node whose arguments are those of `owner` (a dotted class name; "" for none or its `_target_`)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            check_value(f"{path}[{i}]", item)
            _check_node(item, f"{path}[{i}]", "")
        return
    if not isinstance(node, dict):
        return
    target = node.get("_target_")
    owner = target if isinstance(target, str) else owner
    arguments = target_arguments(owner) if owner else {}
    for key, value in node.items():
        full = f"{path}.{key}" if path else str(key)
        expected = arguments.get(str(key))
        if expected is not None and _is_scalar(expected.text) and not _matches(value, expected.text):
            raise ConfigTypeError(
                f"config key {full}={value!r}: expected {expected.text} (an argument of {owner}); "
                f"fix the override or the YAML"
            )
        check_value(full, value)
        nested = expected.nested_class() if expected is not None and isinstance(value, dict) else ""
        _check_node(value, full, nested or "")


def _matches(value: Any, annotation: str) -> bool:
    parts = [p.strip() for p in annotation.split("|")]
    if "None" in parts and value is None:
        return True
    for part in parts:
        types = SCALARS.get(part)
        if types is not None and isinstance(value, types) and (part == "bool" or not isinstance(value, bool)):
            return True
    return False


def _is_scalar(annotation: str) -> bool:
    parts = {p.strip() for p in annotation.split("|")}
    return bool(parts & SCALARS.keys()) and parts <= SCALARS.keys() | {"None"}


@dataclass(frozen=True)
class Annotation:
    """An argument's annotation as written, and the module it is written in (to resolve the names in it)."""

    text: str
    module: str

    def nested_class(self) -> str | None:
        """The dotted name of the first-party class this annotation names (`LoraSettings | None`), if any."""
        for part in (p.strip() for p in self.text.split("|")):
            found = (
                _find_definition(self.module, part) if part.isidentifier() and part not in SCALARS else None
            )
            if found and isinstance(found[1], ast.ClassDef):
                return f"{found[0]}.{part}"
        return None


def target_arguments(target: str) -> dict[str, Annotation]:
    """{argument: Annotation} of a first-party `_target_` (a class or function; {} for any other target)."""
    if not target.startswith(tuple(f"{p}." for p in FIRST_PARTY)):
        return {}
    module, name = target.rsplit(".", 1)
    return class_arguments(module, name)


@cache
def _module_tree(module: str) -> tuple[ast.Module, bool] | None:
    """(parsed source, whether it is a package) of a first-party module, found without importing its package."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top) if top in FIRST_PARTY else None  # a top-level name runs no code
    for base in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(base, *rest)
        for path, is_package in (
            (folder / "__init__.py", True),
            (folder.parent / f"{folder.name}.py", False),
        ):
            if (rest or is_package) and path.is_file():
                return ast.parse(path.read_text(encoding="utf-8")), is_package
    return None


def _imported_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from ... import` in `module` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _top_statements(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements, those under a top-level `if` (TYPE_CHECKING imports) included."""
    out: list[ast.stmt] = []
    for node in tree.body:
        out += [node, *node.body, *node.orelse] if isinstance(node, ast.If) else [node]
    return out


@cache
def _find_definition(
    module: str, name: str, depth: int = 0
) -> tuple[str, ast.ClassDef | ast.FunctionDef] | None:
    """(defining module, definition) of `name` as seen from `module`: defined there, or imported (re-exported)."""
    found = _module_tree(module) if depth < 8 else None
    if found is None:
        return None
    tree, is_package = found
    statements = _top_statements(tree)
    for node in statements:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            return module, node
    for node in statements:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _find_definition(_imported_from(module, is_package, node), alias.name, depth + 1)
    return None


@cache
def class_arguments(module: str, name: str, depth: int = 0) -> dict[str, Annotation]:
    """Annotated arguments of `name` (seen from `module`): a function's, a class's `__init__`'s (plus its base's
    when it hands on `**kwargs` or has no `__init__`), or a dataclass's fields (plus its bases')."""
    found = _find_definition(module, name) if depth < 8 else None
    if found is None:
        return {}
    where, node = found
    if isinstance(node, ast.FunctionDef):
        return _signature(node, where)
    init = next((i for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
    if init is not None:
        own, inherits = _signature(init, where), init.args.kwarg is not None
    elif _is_dataclass(node):
        fields = [i for i in node.body if isinstance(i, ast.AnnAssign) and isinstance(i.target, ast.Name)]
        own, inherits = {f.target.id: Annotation(ast.unparse(f.annotation), where) for f in fields}, True
    else:
        own, inherits = {}, True
    inherited: dict[str, Annotation] = {}
    for base in reversed(node.bases) if inherits else ():
        if isinstance(base, ast.Name):
            inherited.update(class_arguments(where, base.id, depth + 1))
    return {**inherited, **own}


def _signature(node: ast.FunctionDef, module: str) -> dict[str, Annotation]:
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    return {a.arg: Annotation(ast.unparse(a.annotation), module) for a in args if a.annotation is not None}


def _is_dataclass(node: ast.ClassDef) -> bool:
    names = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
    return bool(names & {"dataclass", "dataclasses.dataclass"})
