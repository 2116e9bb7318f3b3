"""The policy to evaluate: the base model, a Lightning checkpoint, a Hugging Face folder or a hub model id.

Lightning checkpoints are read with plain torch.load(weights_only=True): tensors and plain types only.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from soft_tokens.models.loading import ModelConfig, check_local_path, hub_errors
from soft_tokens.models.lora import LoraSettings, is_adapter_state, merge_adapter_state
from soft_tokens.models.model_files import TOKENIZER_FILES, check_model_folder
from soft_tokens.runs.folder import check_checkpoint_file

log = logging.getLogger(__name__)


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read with plain torch.load(weights_only=True): tensors and plain types only.

    The project's checkpoints hold nothing else (their hyper-parameters are dicts). A checkpoint that
    pickles any other object (a class, a function to call) is refused, never imported; so are old
    checkpoints that pickled config dataclasses.
    """
    path = Path(path)
    check_checkpoint_file(path, "checkpoint")  # before torch.load: random bytes are no pickle to judge
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: the checkpoint pickles objects other than tensors and plain types; refusing to load it "
            f"(checkpoints written before this version pickled config classes: export the policy with "
            f"save_pretrained and pass that folder as checkpoint=...). torch said: {str(err).splitlines()[0]}"
        ) from None
    except (EOFError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {err}") from None


def policy_state_dict(checkpoint: Mapping[str, Any], prefix: str = "policy.") -> dict[str, torch.Tensor]:
    """The policy's weights in a Lightning checkpoint: the `policy.*` keys of its state_dict, prefix removed."""
    state = checkpoint.get("state_dict", checkpoint)
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no {prefix}* weights in the checkpoint (keys: {sorted(state)[:5]}...)")
    return out


def _with(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of a ModelConfig with the changes its fields know about."""
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in names})


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def load_policy(
    model_cfg: ModelConfig, checkpoint: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model in eval mode, tokenizer, description) for `checkpoint`.

    checkpoint: None -> the model of `model_cfg` (the base model); a `.ckpt` file -> a Lightning checkpoint
    of this project, whose `policy.*` weights are loaded into the model built from `model_cfg` (which must
    be the training run's model); a Hugging Face folder (e.g. a run's `policy/`), or a training run folder
    holding one in `policy/` -> loaded with from_pretrained, with its own tokenizer if it has one; any other
    name -> a hub model id, loaded as from_pretrained loads it (a LoRA checkpoint's adapters are merged).
    """
    model_cfg = _with(model_cfg, gradient_checkpointing=False)
    if checkpoint is None:
        return model_cfg.load_model().eval(), model_cfg.load_tokenizer(), str(model_cfg.name_or_path)
    path = Path(checkpoint)
    if path.is_file():
        ckpt = load_lightning_checkpoint(path)
        model = model_cfg.load_model()
        state = policy_state_dict(ckpt)
        if is_adapter_state(state):  # a LoRA run's checkpoint: its adapters, merged into the base weights
            model = merge_adapter_state(model, state, trained_lora(ckpt, model_cfg), str(path))
            return model.eval(), model_cfg.load_tokenizer(), str(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RuntimeError(
                f"{path}: the policy weights do not fit the model built from model.name_or_path="
                f"{model_cfg.name_or_path} (the checkpoint was trained from {trained_model(ckpt)}): pass the "
                "training run's model config (model=... / model.name_or_path=...)"
            ) from err
        return model.eval(), model_cfg.load_tokenizer(), str(path)
    if path.is_dir() and not _is_hf_folder(path) and _is_hf_folder(path / "policy"):
        path = path / "policy"
    if not path.exists():
        return load_hub_policy(model_cfg, str(checkpoint))
    check_model_folder(path, "checkpoint")  # a Lightning .ckpt file, or else a Hugging Face model folder
    cfg = _with(
        model_cfg,
        name_or_path=str(path),
        tokenizer=folder_tokenizer(path, model_cfg),
        random_init=False,
        revision=None,
    )
    return cfg.load_model().eval(), cfg.load_tokenizer(), str(path)


def folder_tokenizer(path: Path, model_cfg: ModelConfig) -> str:
    """The tokenizer of a policy folder: its own, else the model config's, with a warning saying which.

    A policy saved by train.py (`save_policy`) carries its tokenizer and chat template; a folder without
    one (weights saved by hand) is evaluated with the base model's, which must be the one it was trained with.
    """
    if any((path / f).is_file() for f in TOKENIZER_FILES):
        return str(path)
    fallback = str(model_cfg.tokenizer or model_cfg.name_or_path)
    option = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    log.warning(
        "checkpoint=%s has no tokenizer (%s; a policy saved by train.py carries one): using the tokenizer of "
        "%s=%s; pass model.tokenizer=<folder> if the policy was trained with another",
        path,
        " or ".join(TOKENIZER_FILES[:2]),
        option,
        fallback,
    )
    return fallback


def load_hub_policy(
    model_cfg: ModelConfig, name: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A hub model id loaded as from_pretrained loads it (from the Hugging Face cache when offline), its own tokenizer."""
    check_local_path(name, "checkpoint")
    cfg = _with(model_cfg, name_or_path=name, tokenizer=name, random_init=False, revision=None)
    with hub_errors(name, "checkpoint"):
        return cfg.load_model().eval(), cfg.load_tokenizer(), name


def trained_model(checkpoint: Mapping[str, Any]) -> str:
    """The model a checkpoint was trained from, as its hyper-parameters record it (name and LoRA rank)."""
    trained = (checkpoint.get("hyper_parameters") or {}).get("model")
    if not isinstance(trained, Mapping):
        return "a model its hyper-parameters do not name"
    lora = trained.get("lora") if isinstance(trained.get("lora"), Mapping) else {}
    rank = f", model.lora.r={lora['r']}" if lora.get("r") else ""
    return f"model.name_or_path={trained.get('name_or_path')}{rank}"


def trained_lora(checkpoint: Mapping[str, Any], model_cfg: ModelConfig) -> LoraSettings:
    """The LoRA settings a checkpoint was trained with (its hyper-parameters), else those of `model_cfg`."""
    trained = (checkpoint.get("hyper_parameters") or {}).get("model")
    lora = trained.get("lora") if isinstance(trained, Mapping) else getattr(trained, "lora", None)
    settings = LoraSettings.of(lora)
    return settings if settings.enabled else model_cfg.lora
