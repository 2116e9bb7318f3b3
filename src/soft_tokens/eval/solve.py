"""Inference settings and solving a list of problems under one: the shared core of validation and evaluate.py.

An inference setting is a way to decode the CoT (a representer, greedy or sampled), how many samples per
problem, and the k of the pass@k it reports (docs/method.md, "Inference settings and metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor
from transformers import PreTrainedModel

from soft_tokens.data.types import Example
from soft_tokens.metrics import default_k_values
from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.rollout import RolloutEngine


@dataclass
class InferenceSetting:
    """A named way to decode the CoT (a representer, greedy or sampled) and how many samples per problem."""

    name: str
    representer: TokenRepresenter
    num_samples: int = 1


@dataclass
class EvalSetting:
    """An inference setting to run, with the k of its pass@k.

    `accuracy_key`, used by the math-eval callback, logs pass@1 under that metric name instead.
    """

    setting: InferenceSetting
    k_values: list[int]
    accuracy_key: str | None = None

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def greedy(self) -> bool:
        return bool(self.setting.representer.greedy)


def build_setting(name: str, spec: Any) -> EvalSetting:
    """An EvalSetting from a representer, or from {representer, num_samples, k_values} (configs or objects).

    k_values defaults to 1, the powers of two below num_samples, and num_samples.
    """
    if isinstance(spec, TokenRepresenter):
        return EvalSetting(InferenceSetting(name, spec, 1), [1])
    if not isinstance(spec, Mapping) or "representer" not in spec:
        raise TypeError(
            f"inference setting {name!r}: expected a representer or {{representer, num_samples}}, got {spec!r:.200}"
        )
    rep = spec["representer"]
    if not isinstance(rep, TokenRepresenter):
        rep = instantiate(rep)
    n = int(spec.get("num_samples") or 1)
    ks = sorted({int(k) for k in (spec.get("k_values") or default_k_values(n))})
    if ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"inference setting {name!r}: k_values {ks} must lie in 1..num_samples={n}")
    return EvalSetting(InferenceSetting(name, rep, n), ks)


def build_settings(specs: Mapping[str, Any], only: Sequence[str] | None = None) -> list[EvalSetting]:
    """The settings of a config mapping (name -> spec), in order, keeping `only` those names if given."""
    names = list(specs)
    if only:
        unknown = [n for n in only if n not in specs]
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; configured: {names}")
        names = [n for n in names if n in set(only)]
    return [build_setting(str(n), specs[n]) for n in names if specs[n] is not None]


@dataclass
class Solutions:
    """Outcome of solving n problems with k samples each."""

    correct: Tensor  # [n, k] bool
    rewards: Tensor  # [n, k]
    completions: list[list[str]] = field(default_factory=list)
    cot_texts: list[list[str]] = field(default_factory=list)
    entropy_sum: Tensor | None = None  # [L] summed CoT entropy by position
    entropy_count: Tensor | None = None  # [L] number of rows reaching each position
    cot_lengths: Tensor | None = None  # [n, k]

    def entropy_profile(self) -> Tensor:
        """Mean CoT entropy by position [L] (nan where no row reached the position)."""
        return self.entropy_sum / self.entropy_count.clamp(min=1) + torch.where(
            self.entropy_count > 0, 0.0, torch.nan
        )


def solve(
    model: PreTrainedModel,
    engine: RolloutEngine,
    prompt: Callable[[str], str],
    examples: list[Example],
    setting: InferenceSetting,
    score: Callable[[list[str], list[str]], tuple[Tensor, Tensor]],
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> Solutions:
    """Roll out every problem `setting.num_samples` times (answers greedy) and score the completions.

    `score(completions, golds)` returns (rewards, correct) tensors. Batches hold whole sample groups.
    """
    was_training = model.training
    model.eval()
    k = setting.num_samples
    per_batch = max(1, batch_size // k)
    correct, rewards, completions, cots, lengths = [], [], [], [], []
    L = engine.cfg.max_cot_tokens
    ent_sum, ent_count = torch.zeros(L), torch.zeros(L)
    for i in range(0, len(examples), per_batch):
        chunk = examples[i : i + per_batch]
        prompts = [prompt(ex.question) for ex in chunk for _ in range(k)]
        ro = engine.generate(model, prompts, setting.representer, answer_greedy=True, generator=generator)
        r, c = score(ro.completions, [ex.answer for ex in chunk for _ in range(k)])
        rewards.append(r.view(-1, k))
        correct.append(c.view(-1, k))
        completions += [ro.completions[j : j + k] for j in range(0, len(prompts), k)]
        cots += [ro.cot_texts[j : j + k] for j in range(0, len(prompts), k)]
        lengths.append(ro.cot_lengths.cpu().view(-1, k))
        ent = (ro.entropy * ro.cot_mask).sum(0).cpu()[:L]
        ent_sum[: len(ent)] += ent
        ent_count[: len(ent)] += ro.cot_mask.sum(0).cpu()[:L].float()
        if progress is not None:
            progress(len(chunk))
    model.train(was_training)
    empty = torch.zeros(0, k)
    return Solutions(
        correct=torch.cat(correct) if correct else empty.bool(),
        rewards=torch.cat(rewards) if rewards else empty,
        completions=completions,
        cot_texts=cots,
        entropy_sum=ent_sum,
        entropy_count=ent_count,
        cot_lengths=torch.cat(lengths) if lengths else empty.long(),
    )
