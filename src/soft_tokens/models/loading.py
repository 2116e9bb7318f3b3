"""Loading policies, reference models and tokenizers the Hugging Face way (hub name or local folder)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from soft_tokens.models.lora import LoraSettings
from soft_tokens.models.model_files import (
    ModelNotFound,
    check_model_folder,
    check_tokenizer_folder,
    not_cached,
)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPES: dict[str, torch.dtype | str] = {
    **TORCH_DTYPES,
    "auto": "auto",
}  # model.dtype: auto = the checkpoint's


@dataclass
class ModelConfig:
    """Where the policy comes from and how to load it; safe by default (safetensors, no remote code).

    `random_init` builds the architecture (config.json of `architecture`, default `name_or_path`) with
    random weights and `config_overrides` applied (e.g. fewer layers): tests and benchmarks of the real
    presets use it offline with the configs in assets/architectures/.
    """

    name_or_path: str
    tokenizer: str | None = None  # defaults to name_or_path
    dtype: str = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    random_init: bool = False
    architecture: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    pad_token: str | None = None  # used when the tokenizer has none (defaults to the EOS token)
    untie_embeddings: bool = False  # a tied model gets its own copy of E as the LM head
    lora: LoraSettings = field(default_factory=LoraSettings)  # r=None: full fine-tuning (models/lora.py)
    extra: dict[str, Any] = field(default_factory=dict)  # passed to from_pretrained

    def __post_init__(self) -> None:
        self.lora = LoraSettings.of(self.lora)
        for option in ("name_or_path", "tokenizer", "architecture"):
            check_local_path(getattr(self, option), f"model.{option}")
        if is_local_path(self.name_or_path) and not (self.random_init and self.architecture):
            check_model_folder(self.name_or_path, "model.name_or_path", weights=not self.random_init)
        if is_local_path(self.tokenizer or self.name_or_path):
            option = "model.tokenizer" if self.tokenizer else "model.name_or_path"
            check_tokenizer_folder(self.tokenizer or self.name_or_path, option)

    @property
    def torch_dtype(self) -> torch.dtype | str:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[self.dtype]

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, left-padded, with a pad token."""
        name = self.tokenizer or self.name_or_path
        with hub_errors(name, "model.tokenizer" if self.tokenizer else "model.name_or_path"):
            tok = AutoTokenizer.from_pretrained(
                name, revision=self.revision, trust_remote_code=self.trust_remote_code
            )
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = self.pad_token or tok.eos_token
        return tok

    def load_model(self) -> PreTrainedModel:
        """The causal LM, from pretrained weights (safetensors only) or from its config with random weights."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.random_init:
            with hub_errors(self.architecture or self.name_or_path, "model.architecture"):
                config = AutoConfig.from_pretrained(self.architecture or self.name_or_path, **kwargs)
            for key, value in self.config_overrides.items():
                setattr(config, key, value)
            model = AutoModelForCausalLM.from_config(
                config, dtype=self.torch_dtype, trust_remote_code=self.trust_remote_code
            )
        else:
            with hub_errors(self.name_or_path, "model.name_or_path"):
                model = AutoModelForCausalLM.from_pretrained(
                    self.name_or_path, dtype=self.torch_dtype, use_safetensors=True, **kwargs, **self.extra
                )
        if self.untie_embeddings:
            untie_embeddings(model)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model


def untie_embeddings(model: PreTrainedModel) -> PreTrainedModel:
    """Make the LM head an independent copy of the input embedding matrix (no-op for an untied model)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return model
    head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False
    return model


def is_local_path(value: str | None) -> bool:
    """Whether a model name is a local path (hub ids, `org/name`, never start with / . ~ nor nest deeper)."""
    text = str(value or "")
    return bool(text) and (text.startswith(("/", "./", "../", "~")) or text.count("/") > 1)


def check_local_path(value: str | None, option: str) -> None:
    """Refuse a local path that does not exist."""
    if is_local_path(value) and not Path(str(value)).expanduser().exists():
        raise FileNotFoundError(f"{option}={value}: no such file or folder")


@contextmanager
def hub_errors(name: str, option: str) -> Iterator[None]:
    """Loading `name`: a hub id that is neither cached nor downloadable is named with what to do."""
    try:
        yield
    except OSError as err:
        if is_local_path(name) or Path(name).exists():
            raise
        cause = err.__cause__ if isinstance(err, ModelNotFound) and err.__cause__ else err  # named once, here
        raise not_cached(name, option, cause) from cause
