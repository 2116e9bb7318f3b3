"""LoRA through peft: adapters on a frozen policy, the adapter-disabled reference, adapter-only state, merging.

With `model.lora.r` set, only the adapters train; the KL reference is the same weights with the adapters
disabled (`AdapterDisabled`), so no second model is loaded; checkpoints hold the adapters only; an export
merges them into the base weights, so the folder loads with plain `from_pretrained`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from soft_tokens.config_types import check_value

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER = "default"  # peft's name for the one adapter
NAME = re.compile(r"[A-Za-z0-9_.]+")  # a module name or a dotted path in the model


@dataclass
class LoraSettings:
    """peft's LoraConfig knobs (TRL's `peft_config`); `r=None` turns LoRA off."""

    r: int | None = None
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None  # None: peft's default; a string: one module name

    @property
    def enabled(self) -> bool:
        return self.r is not None

    @staticmethod
    def of(value: LoraSettings | Mapping[str, Any] | None) -> LoraSettings:
        """Settings from a LoraSettings, a mapping of its fields (a YAML block) or None (off)."""
        if value is None or isinstance(value, LoraSettings):
            return value or LoraSettings()
        out = LoraSettings(**dict(value))
        out.target_modules = module_names(out.target_modules)
        if out.r is not None and (isinstance(out.r, bool) or not isinstance(out.r, int)):
            raise ValueError(f"model.lora.r={out.r!r} must be a positive integer (or null: no LoRA)")
        for key in ("r", "alpha", "dropout"):
            check_value(f"model.lora.{key}", getattr(out, key))
        return out


def module_names(value: str | Sequence[str] | None) -> list[str] | None:
    """target_modules as a list of module names: a bare string is one name (peft would read it as a regex)."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else [str(m) for m in value]
    for name in names:
        if not NAME.fullmatch(name):
            raise ValueError(
                f"model.lora.target_modules: {name!r} is not a module name (letters, digits, _ and .); list the "
                "names, e.g. model.lora.target_modules=[q_proj,v_proj] (regular expressions are not supported)"
            )
    return names


def add_adapters(model: PreTrainedModel, settings: LoraSettings) -> PreTrainedModel | PeftModel:
    """The model wrapped with fresh LoRA adapters (only they require grad); the model itself if LoRA is off."""
    if not settings.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=module_names(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    check_rank(model, settings.r)
    wrapped = get_peft_model(model, config)
    check_embeddings_not_adapted(wrapped)
    check_rank(wrapped, settings.r)
    return wrapped


def check_rank(model: nn.Module, r: int) -> None:
    """Refuse a rank above the smaller dimension of an adapted layer (or, before wrapping, the hidden size)."""
    from peft.tuners.lora import LoraLayer

    layers = {
        n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, LoraLayer)
    }
    if not layers:  # not wrapped yet: every decoder projection has the hidden size as one of its dimensions
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        layers = {"the model (hidden size)": (hidden, hidden)} if isinstance(hidden, int) else {}
    for name, dims in layers.items():
        if r > min(dims):
            raise ValueError(
                f"model.lora.r={r} exceeds the smaller dimension of {name} ({dims[0]} x {dims[1]}): a rank "
                f"above {min(dims)} adds parameters without adding capacity; choose model.lora.r <= {min(dims)}"
            )


def check_embeddings_not_adapted(model: PeftModel) -> None:
    """Raise if an adapter sits on E or the LM head: soft tokens read E (and the head) as plain weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for what, module in (
        ("input embeddings", model.get_input_embeddings()),
        ("LM head", model.get_output_embeddings()),
    ):
        if isinstance(module, BaseTunerLayer):
            raise ValueError(
                f"model.lora.target_modules puts an adapter on the {what}; the representers read E and the head "
                "as plain weights, so target only decoder layers (e.g. [q_proj,k_proj,v_proj,o_proj])"
            )


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class _Disabled(nn.Module):
    """A submodule of a peft model, called with the adapters disabled; other attributes are the submodule's."""

    def __init__(self, peft_model: PeftModel, module: nn.Module) -> None:
        super().__init__()
        self.__dict__["_peft"] = peft_model  # kept out of the module tree
        self.inner = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._peft.disable_adapter():
            return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


class AdapterDisabled:
    """The reference view of a LoRA policy: its base weights, by the accessors the teacher-forced pass uses."""

    def __init__(self, model: PeftModel) -> None:
        self.model = model

    def get_decoder(self) -> nn.Module:
        return _Disabled(self.model, self.model.get_decoder())

    def get_input_embeddings(self) -> nn.Module:
        return _Disabled(self.model, self.model.get_input_embeddings())

    def get_output_embeddings(self) -> nn.Module:
        return _Disabled(self.model, self.model.get_output_embeddings())


def adapter_keys(model: nn.Module, prefix: str = "") -> set[str]:
    """State-dict keys (with `prefix`) of the trainable parameters: the adapters of a LoRA model."""
    return {prefix + name for name, p in model.named_parameters() if p.requires_grad}


def is_adapter_state(state: Mapping[str, Tensor]) -> bool:
    """Whether a policy state dict holds LoRA adapters (peft's key names)."""
    return any(".lora_A." in k for k in state)


def load_adapter_state(model: PeftModel, state: Mapping[str, Tensor], where: str) -> None:
    """Load adapter weights into a LoRA model; every adapter of the model must be in `state`, nothing else."""
    expected = adapter_keys(model)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: the adapter weights do not fit this LoRA model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): pass the training run's model config, model.lora included"
        )
    model.load_state_dict(dict(state), strict=False)


def merged_state_dict(model: PeftModel) -> dict[str, Tensor]:
    """The base model's weights with each adapter's delta added, under the base model's own key names.

    The model is left as it is (no merge in place), so training or a later export goes on unchanged.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {
        f"{name}.base_layer.weight": module.get_delta_weight(ADAPTER)
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
    }
    out = {}
    with torch.no_grad():
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            if key in deltas:
                value = (value + deltas[key].to(value.dtype)).contiguous()
            out[key.replace(".base_layer.", ".")] = value
    return out


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain transformers model (same class and config as the base) holding the merged weights."""
    base = model.get_base_model()
    with torch.device("meta"):
        plain = type(base)(base.config)
    plain.load_state_dict(merged_state_dict(model), strict=False, assign=True)
    plain.tie_weights()
    buffers = {name.replace(".base_layer.", "."): b for name, b in base.named_buffers()}
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (e.g. rotary frequencies) are in no state dict
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, buffers[name], persistent=False)
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"merging the LoRA adapters left parameters unset: {missing[:3]}")
    return plain.to(base.dtype)


def merge_adapter_state(
    model: PreTrainedModel, state: Mapping[str, Tensor], settings: LoraSettings, where: str
) -> PreTrainedModel:
    """A plain model: `model` with LoRA adapters of `settings` loaded from `state`, merged into its weights."""
    if not settings.enabled:
        raise ValueError(f"{where} holds LoRA adapters but no model.lora.r is known: pass model.lora.r=...")
    wrapped = add_adapters(model, settings)
    load_adapter_state(wrapped, state, where)
    return wrapped.merge_and_unload()
