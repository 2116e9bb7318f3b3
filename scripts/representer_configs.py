"""Representers of the diagnostic scripts by name, built as `train.py representer=<name>` builds them.

The names are the files of conf/representer/ (the one source of truth); each is composed by Hydra as the
`representer` group (its defaults list included: soft_grpo extends gumbel) and instantiated with hydra's
`instantiate`, as train.py instantiates `cfg.representer`, after the script's own knobs are set where that
config has the key (a hard representer has no `gamma`). An unknown name is an InputError listing the known
ones.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

try:
    from scripts.script_inputs import InputError
except ModuleNotFoundError:  # run as `python scripts/<name>.py`: scripts/ itself is on the path
    from script_inputs import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "representer"


def representer_names() -> list[str]:
    """The representer choices of train.py (conf/representer/*.yaml), sorted."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def representer_config(name: str) -> DictConfig:
    """conf/representer/<name>.yaml, or InputError naming the known representers."""
    if name not in representer_names():
        raise InputError(
            f"unknown representer {name!r}; the representers are {', '.join(representer_names())}"
        )
    return composed(name).copy()


@cache
def composed(name: str) -> DictConfig:
    """The `representer` group's choice `name`, composed by Hydra from conf/ (as train.py's config has it)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+representer={name}"])
    return cfg.representer


def takes(name: str, key: str) -> bool:
    """Whether representer `name`'s config has `key` (e.g. soft's `gamma`, not hard's)."""
    return key in representer_config(name)


def build_representer(name: str, **knobs: Any):
    """The representer of conf/representer/<name>.yaml with `knobs` set where its config has the key.

    Errors of a knob's value (a negative gamma) are InputErrors naming the representer.
    """
    from hydra.errors import InstantiationException
    from omegaconf import OmegaConf

    from soft_tokens.config_types import ConfigTypeError, check_config_types
    from soft_tokens.configured import instantiate

    cfg = representer_config(name)
    for key, value in knobs.items():
        if key in cfg:
            cfg[key] = value
    try:  # the knobs' ranges are checked as train.py checks them (config_types), not by the constructor
        check_config_types(OmegaConf.create({"representer": cfg}))
        return instantiate(cfg)
    except ConfigTypeError as err:
        raise InputError(f"representer {name!r}: {err}") from None
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise InputError(f"representer {name!r}: {cause}") from None
