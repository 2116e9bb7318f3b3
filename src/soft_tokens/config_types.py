"""What values a config key may take: its type from the annotations of its first-party `_target_`, its range
from RANGES, both checked on the composed config before anything is built.

The annotations are read from the source (ast), not imported, so that a wrong value (`representer.tau=abc`,
`module.optim.lr=0`) is reported with its key in about a second, before torch, transformers and Lightning
load. The source is followed as Python would: a `_target_` re-exported by a package `__init__.py`, a class
without `__init__` or whose `__init__` hands `**kwargs` to its base (the base's arguments), and a dataclass
field annotated with another first-party class (`model.lora`: LoraSettings). A `Literal` annotation (or a
module-level alias of one: `loss_type: LossType`) lists the values a key may take, and a key that its
first-party `_target_` does not take (`+representer.noise_top_k=2` on hard) is named with the choices that
take it. Every float is finite unless its range in RANGES includes infinity.

Some checks need more than one key: in a training config (one with `module` and `estimator`) the CoT must
be sampled (`representer.greedy=false`, soft/fuzzy `gamma` > 0), and placed noise must fit the model, whose
hidden size and vocabulary are read from its local `config.json` (`check_noise_fits`; the soft representer
repeats the check on the embedding matrix when the model's folder is not local).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterator
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
    "model.lora.r": ">= 1",  # and at most the smallest dimension of an adapted layer (soft_tokens.models.lora)
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
    "representer.noise_logits_top_k": ">= 2",
    "representer.min_logprob": "< 0",
    "representer.top_k": ">= 1",
    "representer.top_p": "(0, 1]",
    "representer.min_p": "[0, 1]",
    "representer.beta": "[0, inf]",  # mixture_of_inputs: inf feeds the sampled token alone (plain hard tokens)
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
    # finite: the cosine schedule, the last checkpoint and the export happen at max_steps (-1, Lightning's
    # "unlimited", would train until killed with the schedule's horizon silently set to 1000 steps)
    "trainer.max_steps": ">= 1",
    "callbacks.model_checkpoint.every_n_train_steps": ">= 0",  # 0: only the save at the last step
}

# The type of keys that no first-party `_target_` annotates (top-level settings, Lightning's arguments); a
# key matches each config key ending with it, as in RANGES.
TYPES: dict[str, str] = {
    "seed": "int",
    "fork": "bool",
    "export_policy": "bool",
    "sampling_temperature": "float",
    "torch_threads": "int | None",
    "trainer.max_steps": "int",
    "callbacks.model_checkpoint.every_n_train_steps": "int | None",
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
        if not math.isfinite(value):  # infinity only where a bound is written as a closed inf: "[0, inf]"
            return (value == self.low and self.low_closed) or (value == self.high and self.high_closed)
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
    """Raise ConfigTypeError naming `key` if `value` is not a number in its range (nothing if no range), or is
    an infinite or NaN float of a key without a range."""
    allowed = range_of(key)
    if allowed is None and isinstance(value, float) and not math.isfinite(value):
        raise ConfigTypeError(
            f"config key {key}={value!r}: must be a finite number; fix the override or the YAML"
        )
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
    """Raise ConfigTypeError naming the key for a knob of the wrong type (first-party `_target_`s), range or
    choice, a key its `_target_` does not take, or a value the run's model or training cannot use."""
    node = OmegaConf.to_container(cfg, resolve=True)
    _check_node(node, "", "")
    if (
        isinstance(node.get("module"), dict)
        and isinstance(node.get("representer"), dict)
        and "estimator" in node
    ):
        check_training_representer(node["representer"])
    dims = model_dims(node)
    if dims is not None:
        for key, value in _leaves(node, ""):
            if key.endswith("representer.noise_top_k") and value is not None:
                check_noise_fits(key.removesuffix(".noise_top_k"), value, 0.0, *dims)
            if key.endswith("representer.noise_min_entropy") and value is not None:
                check_noise_fits(key.removesuffix(".noise_min_entropy"), None, value, *dims)


def check_training_representer(representer: dict[str, Any]) -> None:
    """Refuse a training representer whose CoT is not sampled: greedy, or soft/fuzzy without noise (gamma 0).
    A training-free one (its class's `trainable` is False) is left to the module, which refuses it."""
    target = representer.get("_target_")
    if isinstance(target, str) and class_attribute(target, "trainable") is False:
        return
    if representer.get("greedy") is True:
        raise ConfigTypeError(
            "config key representer.greedy=true: training needs sampled CoT steps (greedy gives every sample "
            "of a prompt the same CoT, with no log-probability to train); greedy is an inference setting "
            "(evaluate.py's *_greedy settings, callbacks.math_eval); set representer.greedy=false"
        )
    if representer.get("gamma") == 0:
        raise ConfigTypeError(
            "config key representer.gamma=0: training with soft or fuzzy tokens needs noise, gamma > 0 (at 0 the "
            "CoT input has no density: no CoT log-probability to train); gamma=0 is an inference setting "
            "(evaluate.py)"
        )


def check_noise_fits(
    prefix: str, top_k: int | None, min_entropy: float, hidden: int | None, vocab: int | None
) -> None:
    """Refuse placed noise that the model cannot give: more candidates than its hidden size + 1 (their
    differences are linearly dependent: no density), or a forking threshold no next-token entropy reaches."""
    if top_k is not None and hidden is not None and top_k > hidden + 1:
        raise ConfigTypeError(
            f"config key {prefix}.noise_top_k={top_k}: must be <= {hidden + 1} (the model's hidden size "
            f"{hidden} + 1: the differences of more candidates are linearly dependent and have no density)"
        )
    if min_entropy and vocab is not None and min_entropy >= math.log(vocab):
        raise ConfigTypeError(
            f"config key {prefix}.noise_min_entropy={min_entropy!r}: must be < ln V = {math.log(vocab):.4f} "
            f"(V = {vocab}, the model's vocabulary: no next-token entropy reaches it, so no CoT step would get "
            "noise)"
        )


def model_dims(node: dict[str, Any]) -> tuple[int | None, int | None] | None:
    """(hidden size, vocabulary size) of the config's model from its local config.json (evaluate.py's
    `checkpoint` folder first), `model.config_overrides` applied; None when no such file is readable."""
    model = node.get("model") if isinstance(node.get("model"), dict) else {}
    checkpoint = node.get("checkpoint") if "settings" in node else None
    folders = [Path(checkpoint), Path(checkpoint, "policy")] if isinstance(checkpoint, str) else []
    if not folders or not any((f / "config.json").is_file() for f in folders):
        source = model.get("architecture") if model.get("random_init") else None
        name = source or model.get("name_or_path")
        folders = [Path(name)] if isinstance(name, str) and name else []
    for folder in folders:
        try:
            data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
        text = {**text, **(model.get("config_overrides") or {})}
        hidden, vocab = (text.get(k) for k in ("hidden_size", "vocab_size"))
        return (hidden if isinstance(hidden, int) else None), (vocab if isinstance(vocab, int) else None)
    return None


def _leaves(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(full key, value) of every scalar under `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, node


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
    closed = bool(owner) and not takes_any_keyword(owner)
    for key, value in node.items():
        full = f"{path}.{key}" if path else str(key)
        expected = arguments.get(str(key)) or _declared_type(full)
        if expected is None and closed and not str(key).startswith("_"):
            raise ConfigTypeError(_unknown_argument(full, owner))
        of = f" (an argument of {owner})" if owner else ""
        choices = expected.choices() if expected is not None else None
        if choices is not None and value not in choices:
            allowed = ", ".join("null" if c is None else str(c) for c in choices)
            raise ConfigTypeError(
                f"config key {full}={value!r}: must be one of {allowed}{of}; fix the override or the YAML"
            )
        if expected is not None and _is_scalar(expected.text) and not _matches(value, expected.text):
            raise ConfigTypeError(
                f"config key {full}={value!r}: expected {expected.text}{of}; fix the override or the YAML"
            )
        check_value(full, value)
        nested = expected.nested_class() if expected is not None and isinstance(value, dict) else ""
        _check_node(value, full, nested or "")


def _declared_type(key: str) -> Annotation | None:
    """The Annotation TYPES gives a full config key, if any."""
    for suffix, text in TYPES.items():
        if key == suffix or key.endswith("." + suffix):
            return Annotation(text, "")
    return None


def _unknown_argument(full: str, owner: str) -> str:
    """The message for a key that `owner` does not take: which choices of its group (or classes) take it."""
    key = full.rsplit(".", 1)[-1]
    group = full.rsplit(".", 2)[-2] if "." in full else ""
    takers = [c for c, target in group_targets(group) if key in target_arguments(target)]
    if takers:
        where = f"{key} is taken by {group}={', '.join(takers)}"
    else:
        where = f"{owner.rsplit('.', 1)[-1]} takes {', '.join(sorted(target_arguments(owner)))}"
    return (
        f"config key {full}: {owner} has no argument {key!r}; {where}. Remove the key (or choose that "
        f"{group or 'class'})"
    )


def group_targets(group: str) -> list[tuple[str, str]]:
    """(choice, `_target_`) of each YAML file of the config group `group` under the project's conf/."""
    root = os.environ.get("PROJECT_ROOT") or Path(__file__).resolve().parents[2]
    out = []
    for path in sorted(Path(root, "conf", group).glob("*.yaml")) if group.isidentifier() else []:
        found = re.search(r"^_target_:\s*(\S+)", path.read_text(encoding="utf-8"), re.MULTILINE)
        if found:
            out.append((path.stem, found.group(1)))
    return out


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

    def choices(self) -> tuple[Any, ...] | None:
        """The values a `Literal[...]` annotation (or a module-level alias of one) allows; None for others."""
        try:
            expression = ast.parse(self.text, mode="eval").body
        except SyntaxError:
            return None
        return _literal_values(expression, self.module)


def _literal_values(node: ast.expr, module: str, depth: int = 0) -> tuple[Any, ...] | None:
    """The constants of `Literal[a, b] | None` (aliases followed from `module`); None if any part is not one."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = (_literal_values(side, module, depth) for side in (node.left, node.right))
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Constant) and node.value is None:
        return (None,)
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Literal", "typing.Literal"):
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return tuple(i.value for i in items) if all(isinstance(i, ast.Constant) for i in items) else None
    found = _find_definition(module, node.id) if isinstance(node, ast.Name) and module and depth < 8 else None
    if found and isinstance(found[1], ast.Assign | ast.AnnAssign) and found[1].value is not None:
        return _literal_values(found[1].value, found[0], depth + 1)
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


Definition = ast.ClassDef | ast.FunctionDef | ast.Assign | ast.AnnAssign


def _assigns(node: ast.stmt, name: str) -> bool:
    """Whether `node` is a module-level `name = ...` or `name: T = ...`."""
    targets = (
        node.targets
        if isinstance(node, ast.Assign)
        else [node.target]
        if isinstance(node, ast.AnnAssign)
        else []
    )
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


@cache
def _find_definition(module: str, name: str, depth: int = 0) -> tuple[str, Definition] | None:
    """(defining module, definition) of `name` as seen from `module`: defined (a class, function or assignment)
    there, or imported (re-exported)."""
    found = _module_tree(module) if depth < 8 else None
    if found is None:
        return None
    tree, is_package = found
    statements = _top_statements(tree)
    for node in statements:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name or _assigns(node, name):
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
    if found is None or not isinstance(found[1], ast.ClassDef | ast.FunctionDef):
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


@cache
def class_attribute(target: str, attribute: str, depth: int = 0) -> Any:
    """The constant a first-party class (or its first-party bases) assigns to `attribute` in its body; None
    if none is found."""
    found = _find_definition(*target.rsplit(".", 1)) if "." in target and depth < 8 else None
    if found is None or not isinstance(found[1], ast.ClassDef):
        return None
    where, node = found
    for item in node.body:
        if _assigns(item, attribute) and isinstance(item.value, ast.Constant):
            return item.value.value
    for base in (b for b in node.bases if isinstance(b, ast.Name)):
        value = class_attribute(f"{where}.{base.id}", attribute, depth + 1)
        if value is not None:
            return value
    return None


@cache
def takes_any_keyword(target: str, depth: int = 0) -> bool:
    """Whether a `_target_` may take keywords beyond its named arguments: not first-party, or `**kwargs` that
    do not (provably) go to a first-party base with named arguments only."""
    if not target.startswith(tuple(f"{p}." for p in FIRST_PARTY)) or depth >= 8:
        return True
    found = _find_definition(*target.rsplit(".", 1))
    if found is None or not isinstance(found[1], ast.ClassDef | ast.FunctionDef):
        return True
    where, node = found
    if isinstance(node, ast.FunctionDef):
        return node.args.kwarg is not None
    init = next((i for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
    if init is not None and init.args.kwarg is None:
        return False
    if init is not None and not node.bases:
        return True  # **kwargs kept by the class itself
    return any(
        not isinstance(base, ast.Name) or takes_any_keyword(f"{where}.{base.id}", depth + 1)
        for base in node.bases
    )


def _signature(node: ast.FunctionDef, module: str) -> dict[str, Annotation]:
    """Every named argument but `self`, with its annotation ("" where it has none)."""
    args = [a for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs if a.arg != "self"]
    return {a.arg: Annotation(ast.unparse(a.annotation) if a.annotation else "", module) for a in args}


def _is_dataclass(node: ast.ClassDef) -> bool:
    names = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
    return bool(names & {"dataclass", "dataclasses.dataclass"})
