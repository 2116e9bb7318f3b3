"""Building a configured object (`_target_`) with Hydra's `instantiate`, its failure shown with its cause.

Hydra reports any exception raised while importing a target's module (a missing dependency, a TypeError in
a class body) as "Error locating target 'my_topk.TopK' ... Are you sure that module is installed?", the
cause visible only under HYDRA_FULL_ERROR=1. `instantiate` here raises instead a `BuildError` that names the
config key, the target and the underlying exception with the file and line it came from.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, ListConfig


class BuildError(InstantiationException):
    """A configured object could not be built: the message names the key, the target and the cause."""


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate(config, ...), raising a BuildError with the cause instead of Hydra's message."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        if isinstance(err, BuildError):
            raise
        cause = root_cause(err)
        raise BuildError(
            build_failure(config_key(config, err), target_of(config, err), err, cause)
        ) from cause


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of `err`'s chain of causes (Hydra wraps the real one once or twice)."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def config_key(config: Any, err: BaseException) -> str:
    """The failing node's full key: Hydra's `full_key` when it names one (a nested target), else the node's."""
    found = re.search(r"full_key: (\S+)", str(err))
    if found:
        return found.group(1)
    if isinstance(config, DictConfig | ListConfig):
        return config._get_full_key(None) or "<config>"
    return "<config>"


def target_of(config: Any, err: BaseException) -> str:
    """The `_target_` Hydra names in its message (the nested one that failed), else the node's own."""
    found = re.search(r"target '([^']+)'", str(err))
    if found:
        return found.group(1)
    target = config.get("_target_") if isinstance(config, Mapping) else None
    return str(target or "?")


def build_failure(key: str, target: str, err: BaseException, cause: BaseException) -> str:
    """The message of a failed build: what failed (import or call), the cause and where it was raised."""
    module, _, name = target.rpartition(".")
    if isinstance(cause, ModuleNotFoundError) and cause.name == target:
        return f"{key}: module {module} has no {name!r} (_target_: {target}); fix the _target_"
    if isinstance(cause, ModuleNotFoundError) and cause.name and f"{module}.".startswith(f"{cause.name}."):
        return (
            f"{key}: cannot import {target} (no module named {cause.name!r}); put the folder holding "
            f"{cause.name.split('.')[0]} on PYTHONPATH or fix the _target_"
        )
    what = f"{type(cause).__name__}: {cause}{_raised_at(cause)}"
    if "Error locating target" in str(err):
        return f"{key}: importing {module} for _target_ {target} failed: {what}"
    return f"{key}: building {target} failed: {what}"


def _raised_at(cause: BaseException) -> str:
    """' (file:line)' of the last frame outside the import machinery that raised `cause`, or ''."""
    frames = traceback.extract_tb(cause.__traceback__) if cause.__traceback__ is not None else []
    frames = [f for f in frames if not f.filename.startswith("<frozen")]
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
