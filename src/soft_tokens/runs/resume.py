"""Resuming and forking runs (docs/resuming.md): a resume continues the same run, or is refused before it
writes anything; a fork (`fork=true`) starts a new run folder from a checkpoint and records its parent.

The settings a run was started with are its folder's `config.yaml` (the resolved config train.py writes);
a checkpoint outside a run's `checkpoints/` folder is compared with the hyper-parameters it holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from omegaconf import DictConfig, OmegaConf

from soft_tokens.runs.folder import CHECKPOINT_FOLDER, check_checkpoint_file
from soft_tokens.runs.summary import COMPLETED, RunFinished, RunRefused, read_summary

RECORD = "config.yaml"
PARENT = "parent.json"
# The settings that define a run: a resume must leave them as they were, or fork.
DEFINING = ("seed", "model", "prompt", "data", "representer", "estimator", "reward", "module")
# ... except these, which change how fast or in how much memory a step runs, not what it computes.
NOT_DEFINING = (
    "model.gradient_checkpointing",
    "model.attn_implementation",
    "module.rollout_micro_batch",
    "module.logprob_chunk_size",
    "module.max_bad_steps",
    "module.rollout.decode_threads",
    "module.rollout.direct_decode",
    "data.num_workers",
)
# Settings a fork cannot change either: the checkpoint's weights must fit the model, and the optimizer state
# and schedule Lightning restores must fit the optimizer and scheduler. (A fork's new lr, weight decay,
# betas, eps or momentum are applied to the restored optimizer: SoftTokensModule.on_train_start.)
KEPT_BY_FORKS = (
    "model.name_or_path",
    "model.architecture",
    "model.config_overrides",
    "model.untie_embeddings",
    "model.lora.r",
    "model.lora.target_modules",
    "module.optim.name",
    "module.optim.scheduler",
)


class ResumeRefused(RunRefused):
    """A resume that would mix two runs in one folder, or a checkpoint that cannot be resumed from."""

    kind = "resume refused"


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith((f"{p}.", f"{p}[")) for p in prefixes)


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = node
    return out


def run_settings(config: Mapping[str, Any], root: str | None = None) -> dict[str, Any]:
    """{key: value} of the settings that define a run, in a resolved config; with `root` (this checkout's
    root), a path under the config's own repository root is read as the same path under `root`."""
    own = str((config.get("paths") or {}).get("root_dir") or "")
    flat = _flatten({k: config[k] for k in DEFINING if k in config}, "", {})
    out = {}
    for key, value in flat.items():
        if _under(key, NOT_DEFINING):
            continue
        if root and own not in ("", ".") and isinstance(value, str) and value.startswith(own):
            value = root + value[len(own) :]  # a run folder copied to another checkout
        out[key] = value
    return out


def checkpoint_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The run settings a Lightning checkpoint of this project records in its hyper-parameters."""
    hp = checkpoint.get("hyper_parameters") or {}
    module = {
        k: hp[k] for k in ("samples_per_prompt", "seed", "freeze_embeddings", "cot_grad_weight") if k in hp
    }
    module.update(rollout=hp.get("rollout") or {}, optim=hp.get("optim") or {})
    return run_settings({"model": hp.get("model") or {}, "module": module})


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (before, after)} of the keys both hold with different values (keys one lacks: added since)."""
    return {k: (before[k], after[k]) for k in sorted(before.keys() & after.keys()) if before[k] != after[k]}


def _listed(changed: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())


def run_of(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/<file>.ckpt` with `<run>/config.yaml`)."""
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent.parent
    return run if ckpt.parent.name == CHECKPOINT_FOLDER and (run / RECORD).is_file() else None


def recorded_settings(ckpt_path: str | Path, root: str | None = None) -> tuple[dict[str, Any], str]:
    """(the settings the checkpoint's run was started with, its paths under `root`; where they were read)."""
    run = run_of(ckpt_path)
    if run is not None:
        try:
            recorded = yaml.safe_load((run / RECORD).read_text()) or {}
            return run_settings(recorded, root), str(run / RECORD)
        except (yaml.YAMLError, OSError, AttributeError) as err:
            raise ResumeRefused(f"{run / RECORD}: the run's settings cannot be read ({err})") from None
    import torch

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is refused the same way
        raise ResumeRefused(f"ckpt_path={ckpt_path}: not a readable checkpoint ({err})") from None
    return checkpoint_settings(checkpoint), f"the hyper-parameters in {ckpt_path}"


def check_resume(cfg: DictConfig) -> dict[str, Any] | None:
    """Refuse a resume that changes a setting of its run (or a fork that changes its weights' shape or the
    optimizer); for a fork, return the record of its parent. Reads only; writes nothing."""
    ckpt_path, fork = cfg.get("ckpt_path"), bool(cfg.get("fork"))
    if not ckpt_path:
        if fork:
            raise ResumeRefused(
                "fork=true needs the checkpoint to fork from: ckpt_path=<run>/checkpoints/last.ckpt"
            )
        return None
    try:
        check_checkpoint_file(ckpt_path, folders=True)
    except (OSError, ValueError) as err:
        raise ResumeRefused(str(err)) from None
    current = OmegaConf.to_container(cfg, resolve=True)
    root = str((current.get("paths") or {}).get("root_dir") or "")
    root = root if root not in ("", ".") else None
    before, where = recorded_settings(ckpt_path, root)
    changed = changes(before, run_settings(current, root))  # resolved values on both sides
    kept = {k: v for k, v in changed.items() if _under(k, KEPT_BY_FORKS)}
    if fork and kept:
        raise ResumeRefused(
            f"ckpt_path={ckpt_path}: a fork keeps the model, its LoRA layout and the optimizer and scheduler of "
            f"its checkpoint ({where}), but these changed: {_listed(kept)}. Start a new run without ckpt_path "
            "instead"
        )
    if changed and not fork:
        way_out = (
            "add fork=true to start a new run folder from this checkpoint with the new settings"
            if not kept
            else f"start a new run without ckpt_path (a fork, fork=true, cannot change {', '.join(kept)} either)"
        )
        raise ResumeRefused(
            f"ckpt_path={ckpt_path}: resuming continues the run with its own settings ({where}), but these changed: "
            f"{_listed(changed)}. Drop these overrides to resume it, or {way_out} (docs/resuming.md)"
        )
    if not fork:
        return None
    parent = run_of(ckpt_path)
    return {"parent_run": str(parent or ""), "checkpoint": str(Path(ckpt_path).resolve()), "changed": changed}


def checkpoint_step(ckpt_path: str | Path) -> int | None:
    """The global step a checkpoint file holds (None for a checkpoint folder or an unreadable file)."""
    import torch

    if Path(ckpt_path).is_dir():
        return None
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        return int(checkpoint["global_step"])
    except Exception:  # noqa: BLE001 - the resume itself reports an unreadable checkpoint
        return None


def check_unfinished(cfg: DictConfig) -> None:
    """Refuse, as RunFinished, a resume of a completed run whose checkpoint is already at trainer.max_steps:
    it would train nothing and rewrite the run's summary. Reads only; writes nothing."""
    ckpt_path, max_steps = cfg.get("ckpt_path"), int(cfg.trainer.get("max_steps") or -1)
    if not ckpt_path or bool(cfg.get("fork")) or max_steps <= 0:
        return
    try:
        summary = read_summary(cfg.paths.output_dir)
    except (OSError, ValueError):
        return
    step = checkpoint_step(ckpt_path) if summary["status"] == COMPLETED else None
    if step is None or step < max_steps:
        return
    raise RunFinished(
        f"this run ({cfg.paths.output_dir}) finished at step {step} (trainer.max_steps={max_steps}); nothing "
        f"to do, nothing changed. To train longer raise trainer.max_steps (e.g. trainer.max_steps={2 * step}) "
        f"with the same ckpt_path; to start a new run from it with other settings add fork=true"
    )


def write_parent(out_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a fork's parent.json (parent run, checkpoint, changed settings as [before, after])."""
    path = Path(out_dir) / PARENT
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


class FollowMovedRun(L.Callback):
    """A run folder moved (or copied) since its checkpoint was written, resumed in place: the checkpoint
    callbacks' saved paths follow it, so `last.ckpt` is overwritten (not `last-v1.ckpt` written beside it)
    and the best checkpoint keeps being tracked. Lightning would otherwise drop that state."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        resumed_from = Path(trainer.ckpt_path or "").resolve().parent
        for callback in trainer.checkpoint_callbacks:
            new = getattr(callback, "dirpath", None)
            if not new or Path(new).resolve() != resumed_from:
                continue
            for state in (checkpoint.get("callbacks") or {}).values():
                old = state.get("dirpath") if isinstance(state, dict) else None
                if old and old != new and "last_model_path" in state and Path(old).name == Path(new).name:
                    relocate(state, old, new)


def relocate(state: dict[str, Any], old: str, new: str) -> None:
    """Rewrite a ModelCheckpoint state's paths under folder `old` to the same paths under `new`."""

    def moved(path: Any) -> Any:
        return new + path[len(old) :] if isinstance(path, str) and path.startswith(old) else path

    state["dirpath"] = new
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        state[key] = moved(state.get(key))
    state["best_k_models"] = {moved(k): v for k, v in (state.get("best_k_models") or {}).items()}
