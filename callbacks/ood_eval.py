"""Periodic out-of-domain evaluation (HellaSwag, ARC, MMLU, or another math task): accuracy and NLL drift.

The paper's claim: soft/fuzzy training keeps the base model's out-of-domain behaviour, hard training drifts.
So next to the policy's accuracy and per-token NLL of the correct answer, this logs the NLL change against
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
from soft_tokens.data.sources import Source
from soft_tokens.data.types import Example
from soft_tokens.eval.metrics import MeanAccuracy, MeanNLL
from soft_tokens.eval.ood import ChoiceItem, load_choice_items, score_choices, solution_items
from soft_tokens.eval.solve import InferenceSetting, solve
from soft_tokens.representers import HardRepresenter
from soft_tokens.training.distributed import full_parameters

log = logging.getLogger(__name__)


class OODEval(PeriodicEval):
    """Every `every_n_steps` optimizer steps (and at step 0 and the last step) score the OOD datasets.

    `datasets` maps a name to the arguments of `soft_tokens.eval.ood.load_choice_items` (format, path, name,
    split, limit, seed): e.g. {"arc": {"format": "arc", "path": "allenai/ai2_arc", "name": "ARC-Challenge",
    "split": "test"}}, or a local file as `path`. Logs `ood/<name>/accuracy`, `ood/<name>/nll`,
    `ood/<name>/nll_delta_vs_base` (policy minus base), and the base's `ood/<name>/base_accuracy` and
    `ood/<name>/base_nll`. Each process scores a disjoint shard; the metrics are summed over processes.

    A math task is given as {"format": "task", "source": <a data source>} (e.g. `soft_tokens.data.mnns.
    MnnsSource(split="test", n=500)`): its accuracy is hard-greedy pass@1 scored by the module's reward, its
    NLL the per-token NLL of the reference solution after the prompt (`soft_tokens.eval.ood.solution_items`).
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
        self.items: dict[str, list[ChoiceItem] | list[Example]] | None = None
        self.base: dict[str, dict[str, float]] = {}
        self._warned = False

    # ----- data
    def _load(self) -> dict[str, list[ChoiceItem] | list[Example]]:
        if self.items is None:
            self.items = {name: _load_dataset(name, cfg) for name, cfg in self.dataset_cfgs.items()}
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
                    correct, answer_nll, answer_tokens = self._score_shard(model, pl_module, shard)
                acc.update(correct)
                nll.update(answer_nll, answer_tokens)
            out[name] = {"accuracy": float(acc.compute()), "nll": float(nll.compute())}
        return out

    def _score_shard(self, model, pl_module, shard: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(correct, summed answer NLL, answer tokens) per item of a multiple-choice or math-task shard."""
        if isinstance(shard[0], Example):
            greedy = InferenceSetting("hard_greedy", HardRepresenter(name="hard", greedy=True))
            solved = solve(
                model,
                pl_module.engine,
                pl_module.format_prompt,
                shard,
                greedy,
                pl_module.reward.score_batch,
                batch_size=self.batch_size,
            )
            shard_items = solution_items(shard, pl_module.format_prompt)
        else:
            solved, shard_items = None, shard
        res = score_choices(
            model, pl_module.tokenizer, shard_items, batch_size=self.batch_size, max_length=self.max_length
        )
        correct = solved.correct[:, 0] if solved is not None else res.correct
        return correct, res.answer_nll, res.answer_tokens

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


def load_task(format: str, source: Source) -> list[Example]:
    """A math task's problems as an out-of-domain set: `format` "task", `source` a data source with load()."""
    if format != "task" or not hasattr(source, "load"):
        raise ValueError(
            f"a task needs format 'task' and a data source, got {format!r} and {type(source).__name__}"
        )
    examples = source.load()
    if not examples:
        raise ValueError("its source yielded no problems")
    return examples


def _load_dataset(name: str, cfg: Mapping[str, Any]) -> list[ChoiceItem] | list[Example]:
    """A multiple-choice dataset's items, or a math task's problems ({"format": "task", "source": Source})."""
    if cfg.get("format") != "task":
        return load_choice_items(**cfg)
    if set(cfg) != {"format", "source"}:
        raise ValueError(
            f"ood dataset {name!r}: a task takes exactly `format: task` and `source`, got keys {sorted(cfg)}"
        )
    try:
        return load_task(**cfg)
    except ValueError as err:
        raise ValueError(f"ood dataset {name!r}: {err}") from None
