"""Checks of a model folder before loading it: one message naming the folder, what is missing or wrong, and
what is supported, instead of the error a library raises deep inside loading (or a wrong model loading)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

SUPPORTED = (
    "supported: causal LMs (architectures *ForCausalLM, *LMHeadModel) saved with save_pretrained: "
    "config.json, *.safetensors weights, a tokenizer"
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "tiktoken.model",
)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded as this project's policy."""


class ModelNotFound(FileNotFoundError):
    """A model name that is neither a local folder nor a model in the Hugging Face cache (or the hub)."""


def _contents(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return (
        "it is empty" if not names else f"it holds {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
    )


def check_model_folder(folder: str | Path, option: str, weights: bool = True) -> None:
    """Refuse a local folder without config.json, of a model that is not a causal LM, or (with `weights`)
    without sound safetensors weights."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"{option}={folder}: a file, not a model folder; {SUPPORTED}")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"{option}={folder}: no config.json, so not a model folder ({_contents(folder)}); {SUPPORTED}"
        )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        architectures = list(config.get("architectures") or [])
    except (ValueError, AttributeError, TypeError) as err:
        raise ModelFolderError(
            f"{option}={folder}: config.json is not a JSON object ({err}); {SUPPORTED}"
        ) from None
    if architectures and not any(str(a).endswith(CAUSAL_SUFFIXES) for a in architectures):
        raise ModelFolderError(
            f"{option}={folder}: a {', '.join(map(str, architectures))} (model_type {config.get('model_type')!r}), "
            f"not a causal language model; {SUPPORTED}"
        )
    if weights:
        check_weights(folder, option)


def check_weights(folder: Path, option: str) -> None:
    """Refuse a folder whose weights are missing, not safetensors, or truncated or garbled safetensors files."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        why = f" ({', '.join(pickled)}: not loaded, a pickle can run code)" if pickled else ""
        raise ModelFolderError(f"{option}={folder}: no weights, no *.safetensors file{why}; {SUPPORTED}")
    for path in files:
        problem = safetensors_problem(path)
        if problem:
            raise ModelFolderError(
                f"{option}={folder}: {path.name} is not a complete safetensors file ({problem}); copy or "
                f"download it again, or save the model again with save_pretrained; {SUPPORTED}"
            )


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout (header length, JSON header, data size), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            return f"its header claims {n} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return (
            f"the header describes {expected} bytes, the file has {size}: truncated?"
            if expected > size
            else (f"the header describes {expected} bytes, the file has {size}")
        )
    return None


def check_tokenizer_folder(folder: str | Path, option: str) -> None:
    """Refuse a local folder with no tokenizer file in it."""
    folder = Path(folder).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(
            f"{option}={folder}: no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}; {_contents(folder)}); {SUPPORTED}"
        )


def not_cached(name: str, option: str, err: BaseException) -> ModelNotFound:
    """The error for a hub model id that could not be loaded: where it was looked for, and what to do."""
    from huggingface_hub import constants

    where = (
        " (HF_HUB_OFFLINE is set: nothing is downloaded; download it first with `hf download "
        f"{name}`, or pass a local folder)"
        if constants.HF_HUB_OFFLINE
        else " or on the hub"
    )
    return ModelNotFound(
        f"{option}={name}: no such file or folder, and no model {name!r} in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE}{where}; {SUPPORTED}. from_pretrained said: {str(err).splitlines()[0]}"
    )


def check_chat_template(render: Callable[[str], str], where: str) -> None:
    """Render one question into a prompt; a chat template that raises is named with its folder and the fix."""
    try:
        render("What is 1 + 1?")
    except Exception as err:  # noqa: BLE001 - a template may raise anything (raise_exception, TypeError, ...)
        raise ModelFolderError(
            f"{where}: the tokenizer's chat template fails on a plain user question ({type(err).__name__}: {err}); "
            "fix chat_template in its tokenizer_config.json (or chat_template.jinja), or set "
            "prompt.chat_template=false to use the plain prompt"
        ) from None
