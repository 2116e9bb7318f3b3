"""Periodic out-of-domain multiple-choice evaluation (HellaSwag, ARC, MMLU): accuracy and NLL drift.

The paper's claim: soft/fuzzy training keeps the base model's out-of-domain behaviour, hard training drifts.
So next to the policy's accuracy and per-token NLL of the correct choice, this logs the NLL change against
the base model, scored once: the frozen reference model when the module has one, else the policy itself at
step 0, before any update (cached, and saved in checkpoints so that resumed runs keep the same base).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from callbacks.periodic import PeriodicEval
from soft_tokens.eval.metrics import MeanAccuracy, MeanNLL
from soft_tokens.eval.ood import ChoiceItem, load_choice_items, score_choices
from soft_tokens.training.distributed import full_parameters

log = logging.getLogger(__name__)


class OODEval(PeriodicEval):
    """Every `every_n_steps` optimizer steps (and at step 0 and the last step) score the OOD datasets.

    `datasets` maps a name to the arguments of `soft_tokens.eval.ood.load_choice_items` (format, path, name,
    split, limit, seed): e.g. {"arc": {"format": "arc", "path": "allenai/ai2_arc", "name": "ARC-Challenge",
    "split": "test"}}, or a local file as `path`. Logs `ood/<name>/accuracy`, `ood/<name>/nll`,
    `ood/<name>/nll_delta_vs_base` (policy minus base), and the base's `ood/<name>/base_accuracy` and
    `ood/<name>/base_nll`. Each process scores a disjoint shard; the metrics are summed over processes.
    """

    def __init__(
        self,
        datasets: Mapping[str, Mapping[str, Any]],
        every_n_steps: int = 100,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("OODEval needs at least one dataset")
        super().__init__(every_n_steps)
        self.dataset_cfgs = {str(k): dict(v) for k, v in datasets.items()}
        self.batch_size = batch_size
        self.max_length = max_length
        self.items: dict[str, list[ChoiceItem]] | None = None
        self.base: dict[str, dict[str, float]] = {}
        self._warned = False

    # ----- data
    def _load(self) -> dict[str, list[ChoiceItem]]:
        if self.items is None:
            self.items = {name: load_choice_items(**cfg) for name, cfg in self.dataset_cfgs.items()}
            for name, items in self.items.items():
                log.info("ood dataset %s: %d items", name, len(items))
        return self.items

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._load()

    # ----- scoring
    @torch.no_grad()
    def score(self, model, pl_module, trainer: L.Trainer) -> dict[str, dict[str, float]]:
        """{dataset: {"accuracy", "nll"}} of `model` over all processes' shards."""
        out = {}
        device = pl_module.device
        for name, items in self._load().items():
            shard = items[trainer.global_rank :: trainer.world_size]
            acc, nll = MeanAccuracy().to(device), MeanNLL().to(device)
            if shard:
                with full_parameters(trainer):  # FSDP: each rank scores its shard alone, with the whole model
                    res = score_choices(
                        model,
                        pl_module.tokenizer,
                        shard,
                        batch_size=self.batch_size,
                        max_length=self.max_length,
                    )
                acc.update(res.correct)
                nll.update(res.answer_nll, res.answer_tokens)
            out[name] = {"accuracy": float(acc.compute()), "nll": float(nll.compute())}
        return out

    def measure(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Score the policy (and the base, the first time) on every dataset: the metrics."""
        step = trainer.global_step
        ref = pl_module.ref_model
        if not self.base and ref is not None:
            self.base = self.score(ref, pl_module, trainer)
        policy = self.score(pl_module.policy, pl_module, trainer)
        if not self.base:
            if step == 0:
                self.base = policy  # the policy before any update is the base model
            elif not self._warned:
                self._warned = True
                log.warning(
                    "ood eval: no base scores (no reference model, and the run did not start at step 0 with "
                    "this callback); nll_delta_vs_base is not logged"
                )
        metrics = {}
        for name, m in policy.items():
            metrics[f"ood/{name}/accuracy"] = m["accuracy"]
            metrics[f"ood/{name}/nll"] = m["nll"]
            if name in self.base:
                metrics[f"ood/{name}/nll_delta_vs_base"] = m["nll"] - self.base[name]["nll"]
                metrics[f"ood/{name}/base_accuracy"] = self.base[name]["accuracy"]
                metrics[f"ood/{name}/base_nll"] = self.base[name]["nll"]
        return metrics

    # ----- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base = {k: dict(v) for k, v in state_dict.get("base", {}).items()}
