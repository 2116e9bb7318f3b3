"""Helpers for Lightning's multi-process strategies."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

# Packages decoder-layer classes may come from (remote-code models load under transformers_modules).
LAYER_CLASS_PACKAGES = ("transformers.", "transformers_modules.")


def layer_class(path: str) -> type[torch.nn.Module]:
    """A decoder-layer class from its dotted path (e.g. transformers.models.llama.modeling_llama.LlamaDecoderLayer).

    Only modules of `LAYER_CLASS_PACKAGES` are imported, and the object must be a torch module class.
    """
    module_name, _, name = path.rpartition(".")
    if not module_name.startswith(LAYER_CLASS_PACKAGES):
        raise ValueError(f"layer class {path!r}: only classes under {LAYER_CLASS_PACKAGES} are imported")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import the layer class {path!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(f"layer class {path!r} is not a torch.nn.Module class")
    return cls


def fsdp_strategy(
    layer_classes: list[str],
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = True,
    **kwargs,
) -> FSDPStrategy:
    """Lightning's FSDP strategy with one FSDP unit per decoder layer (classes as dotted paths, for YAML)."""
    classes = set()
    for path in layer_classes:
        with contextlib.suppress(ValueError):
            classes.add(layer_class(path))
    if not classes:
        raise ValueError(f"none of the layer classes {layer_classes} exist in this transformers version")
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        use_orig_params=True,
        state_dict_type="full",
        **kwargs,
    )


@contextlib.contextmanager
def full_parameters(trainer: L.Trainer | None) -> Iterator[None]:
    """Gather FSDP-sharded parameters for code that runs outside training_step (evaluation callbacks)."""
    if trainer is not None and isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(trainer.strategy.model, writeback=False, recurse=True):
            yield
    else:
        yield
