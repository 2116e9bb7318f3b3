"""Every key of conf/ is read by some code: an argument of its node's `_target_`, an interpolation in conf/,
or a key of CONSUMERS (the file or function that reads it). A key that nothing reads is refused."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from helpers import CONF, GROUPS, ROOT, compose_config
from hydra.utils import get_object
from omegaconf import OmegaConf

# Keys that no `_target_` takes, with their reader: a file that names the key, or a callable whose
# arguments are the keys of the node (`module:function`). `*` stands for one key of a mapping.
CONSUMERS: dict[str, str] = {
    "ckpt_path": "train.py",
    "fork": "src/soft_tokens/runs/resume.py",
    "torch_threads": "train.py",
    "export_policy": "train.py",
    "optimized_metric": "train.py",
    # evaluate.yaml
    "name": "src/soft_tokens/eval/run.py",
    "checkpoint": "src/soft_tokens/eval/run.py",
    "split": "src/soft_tokens/eval/run.py",
    "max_examples": "src/soft_tokens/eval/run.py",
    "batch_size": "src/soft_tokens/eval/run.py",
    "device": "src/soft_tokens/eval/run.py",
    "progress": "src/soft_tokens/eval/run.py",
    "save_completions": "src/soft_tokens/eval/run.py",
    "only": "src/soft_tokens/eval/run.py",
    "num_samples": "src/soft_tokens/eval/options.py",
    "k_values": "src/soft_tokens/eval/options.py",
    "settings.*.num_samples": "src/soft_tokens/eval/solve.py",
    "settings.*.k_values": "src/soft_tokens/eval/solve.py",
    "ood.enabled": "src/soft_tokens/eval/run.py",
    "ood.batch_size": "src/soft_tokens/eval/run.py",
    "ood.datasets.*": "soft_tokens.eval.ood:load_choice_items",
    "callbacks.ood_eval.datasets.*": "soft_tokens.eval.ood:load_choice_items",
}
TASK_READER = "callbacks.ood_eval:load_task"  # an ood dataset with `format: task` (a math task's source)
# Targets whose `**kwargs` go to another callable, not to their base class.
KWARGS_TO = {"lightning.pytorch.strategies.DDPStrategy": "torch.nn.parallel.DistributedDataParallel"}


def configs() -> list[tuple[str, list[str]]]:
    """(entry config, overrides) covering every file of every group: each choice once."""
    out = [("train", [f"{g}={p.stem}"]) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
    out += [("train", ["sampling=embedded"])]
    out += [
        ("evaluate", [f"{g}={p.stem}"]) for g in ("model", "data") for p in sorted((CONF / g).glob("*.yaml"))
    ]
    return [(n, o + ["data.train.path=x.jsonl"] if o == ["data=local"] else o) for n, o in out]


@cache
def interpolated() -> frozenset[str]:
    """Every key that a conf/ file reads through an interpolation (`${key}`, `oc.select:key`)."""
    text = "\n".join(p.read_text() for p in CONF.rglob("*.yaml"))
    return frozenset(re.findall(r"\$\{([\w.]+)\}", text) + re.findall(r"oc\.select:([\w.]+)", text))


@cache
def arguments(target: str) -> frozenset[str] | None:
    """The argument names `target` accepts, following `**kwargs` to the base classes; None: any name."""
    obj = get_object(target)
    if target in KWARGS_TO:
        return arguments(KWARGS_TO[target]) | _own_arguments(obj)
    chain = (
        [c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    )
    names: set[str] = set()
    for fn in chain:
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return frozenset(names - {"self"})
    return None


def _own_arguments(obj: Any) -> frozenset[str]:
    """The named arguments of `obj` itself (no base class)."""
    params = inspect.signature(obj).parameters.values()
    return frozenset(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def nested_fields(target: str, argument: str) -> frozenset[str] | None:
    """The fields of a dataclass-annotated argument (`model.lora`: LoraSettings), if it is one."""
    obj = get_object(target)
    hints = {f.name: f.type for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    annotation = hints.get(argument)
    cls = get_object(f"{obj.__module__}.{annotation}") if isinstance(annotation, str) else annotation
    return frozenset(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


def consumer_reads(consumer: str, key: str) -> bool:
    """Whether `consumer` (a file, or `module:function`) reads `key`."""
    if ":" in consumer:
        module, name = consumer.split(":")
        return key in arguments(f"{module}.{name}")
    return re.search(rf"\b{re.escape(key)}\b", (ROOT / consumer).read_text()) is not None


def unread(node: Any, path: str = "") -> Iterator[str]:
    """The full keys under `node` that nothing reads."""
    if not isinstance(node, dict):
        return
    target = node.get("_target_")
    takes = arguments(target) if target else None
    for key, value in node.items():
        full = f"{path}.{key}" if path else str(key)
        if str(key).startswith("_") or full == "hydra":
            continue
        generic = re.sub(r"^(settings|ood\.datasets|callbacks\.ood_eval\.datasets)\.\w+", r"\1.*", full)
        if target:
            if takes is not None and key not in takes:
                yield f"{full} (not an argument of {target})"
                continue
            fields = (
                nested_fields(target, key) if isinstance(value, dict) and "_target_" not in value else None
            )
            if fields is not None:
                yield from (f"{full}.{k} (not a field)" for k in value if k not in fields)
                continue
            if isinstance(value, dict) and "_target_" not in value and generic + ".*" not in CONSUMERS:
                continue  # a mapping handed whole to the target (e.g. the hydra-free `extra` of from_pretrained)
        elif full in interpolated() or generic in interpolated():
            pass
        elif not isinstance(value, dict):
            parent, _, leaf = generic.rpartition(".")
            reader = CONSUMERS.get(generic) or next(
                (c for p, c in CONSUMERS.items() if p.endswith(".*") and fnmatch.fnmatch(parent, p)), None
            )
            if reader is None or not consumer_reads(reader, leaf):
                yield f"{full} (no reader)"
            continue
        reader = next(
            (c for p, c in CONSUMERS.items() if p.endswith(".*") and fnmatch.fnmatch(generic, p)), None
        )
        if isinstance(value, dict) and value.get("format") == "task" and reader is not None:
            reader = TASK_READER
            yield from unread(value.get("source"), f"{full}.source")
        if reader is not None and ":" in reader and isinstance(value, dict):
            yield from (
                f"{full}.{k} (not an argument of {reader})" for k in value if not consumer_reads(reader, k)
            )
            continue
        yield from unread(value, full)


@pytest.mark.parametrize("name,overrides", configs(), ids=lambda x: x if isinstance(x, str) else ",".join(x))
def test_every_key_of_conf_is_read(name, overrides):
    cfg = OmegaConf.to_container(compose_config(name, overrides), resolve=False)
    assert list(unread(cfg)) == []


@pytest.mark.parametrize(
    "override,expected",
    [
        ("+colour=red", "colour (no reader)"),
        (
            "+module.rollout.colour=red",
            "module.rollout.colour (not an argument of soft_tokens.rollout.RolloutConfig)",
        ),
        ("+model.lora.colour=red", "model.lora.colour (not a field)"),
        ("+trainer.colour=red", "trainer.colour (not an argument of lightning.pytorch.Trainer)"),
        (
            "+callbacks.ood_eval.datasets.arc.colour=red",
            "callbacks.ood_eval.datasets.arc.colour (not an argument of",
        ),
    ],
)
def test_a_key_that_nothing_reads_is_named(override, expected):
    cfg = OmegaConf.to_container(
        compose_config("train", ["callbacks=ood", "data=gsm8k", override]), resolve=False
    )
    found = list(unread(cfg))
    assert len(found) == 1 and found[0].startswith(expected)


def test_the_sampling_temperature_has_one_owner_per_model():
    """train.yaml and the model files do not set it; conf/sampling/ does, chosen by the model group."""
    owners = [
        p.relative_to(CONF).as_posix()
        for p in CONF.rglob("*.yaml")
        if "\nsampling_temperature:" in p.read_text()
    ]
    assert sorted(owners) == ["sampling/default.yaml", "sampling/embedded.yaml"]
    temperature = {
        m: compose_config("train", [f"model={m}"]).sampling_temperature for m in ("embedded", "llama3_2_3b")
    }
    assert temperature == {"embedded": 0.7, "llama3_2_3b": 1.0}
    assert "answer_temperature" not in compose_config("evaluate", []).rollout
