"""Evaluation metrics: the unbiased pass@k estimator and torchmetrics metrics synchronised across processes.

Every metric keeps sums as its state (`dist_reduce_fx="sum"`), so `compute()` under DDP returns the value over
all ranks' problems, whatever the shard sizes. Each rank updates with its own shard and every rank must call
`compute()` (it is a collective when torch.distributed is initialised).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torchmetrics import Metric


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating LLMs on Code").

    pass@k = 1 - C(n - c, k) / C(n, k), computed as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k / i).
    """
    n, c, k = int(n), int(c), int(k)
    if n < 1 or k < 1:
        raise ValueError(f"pass@k needs n >= 1 and k >= 1, got n={n}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples per problem, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"the number of correct samples must be in [0, n={n}], got c={c}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_batch(correct: Tensor, k: int) -> Tensor:
    """pass@k [P] of each problem (row) of a correctness matrix [P, n] (bool or 0/1), in float64."""
    if correct.dim() != 2:
        raise ValueError(f"expected a [problems, samples] matrix, got shape {tuple(correct.shape)}")
    n = correct.shape[1]
    if k < 1 or k > n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n (samples per problem), got n={n}")
    c = correct.to(torch.float64).sum(1)
    # prod_{i=n-c+1}^{n} (1 - k/i) for every row: a cumulative product over i = 1..n masked to i > n - c.
    i = torch.arange(1, n + 1, dtype=torch.float64, device=correct.device)
    factors = torch.where(i.unsqueeze(0) > (n - c).unsqueeze(1), 1.0 - k / i, torch.ones_like(i))
    out = 1.0 - factors.prod(1)
    return torch.where(n - c < k, torch.ones_like(out), out)


def default_k_values(num_samples: int) -> list[int]:
    """1, the powers of two below num_samples, and num_samples itself (e.g. 8 -> [1, 2, 4, 8])."""
    ks = {1, int(num_samples)}
    k = 2
    while k < num_samples:
        ks.add(k)
        k *= 2
    return sorted(ks)


class PassAtK(Metric):
    """Mean unbiased pass@k over problems, for several k, from per-problem correctness matrices [P, n].

    `compute()` returns {"pass@k": value} for each k in `k_values`, and with `with_se` also {"pass@k_se": the
    standard error of that mean over problems} (sample standard deviation of the per-problem values / sqrt(P);
    nan for fewer than two problems). Every update must have n >= max(k).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k_values: Iterable[int] = (1,), with_se: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.with_se = with_se
        self.k_values = sorted({int(k) for k in k_values})
        if not self.k_values or self.k_values[0] < 1:
            raise ValueError(f"k_values must be positive integers, got {list(k_values)}")
        self.add_state(
            "totals", default=torch.zeros(len(self.k_values), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "squares", default=torch.zeros(len(self.k_values), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("problems", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        """Add the problems of a correctness matrix [P, n] (a [P] vector is read as n = 1)."""
        if correct.dim() == 1:
            correct = correct.unsqueeze(1)
        if correct.shape[0] == 0:
            return
        n = correct.shape[1]
        if self.k_values[-1] > n:
            raise ValueError(
                f"pass@{self.k_values[-1]} needs at least that many samples per problem, got {n}"
            )
        correct = correct.to(self.totals.device)
        per_problem = torch.stack([pass_at_k_batch(correct, k) for k in self.k_values])  # [K, P]
        self.totals += per_problem.sum(1)
        self.squares += per_problem.pow(2).sum(1)
        self.problems += correct.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.problems
        mean = self.totals / n.clamp(min=1)
        out = {f"pass@{k}": mean[i].float() for i, k in enumerate(self.k_values)}
        if self.with_se:
            # sum (x - mean)^2 = sum x^2 - n mean^2, clamped at 0 against rounding (float64: exact to ~1e-16 n)
            var = (self.squares - n * mean.pow(2)).clamp(min=0) / (n - 1).clamp(min=1)
            se = torch.where(n > 1, (var / n.clamp(min=1)).sqrt(), torch.nan)
            out |= {f"pass@{k}_se": se[i].float() for i, k in enumerate(self.k_values)}
        return out


class MeanAccuracy(Metric):
    """Fraction of correct items (or samples): sum of correct / number of items, over all updates and ranks."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        """Add a tensor of any shape of booleans (or 0/1 values)."""
        self.correct += correct.detach().to(self.correct.device, torch.float64).sum()
        self.total += correct.numel()

    def compute(self) -> Tensor:
        return (self.correct / self.total.clamp(min=1)).float()


class MeanNLL(Metric):
    """Mean per-token negative log-likelihood: total NLL / total number of tokens, over updates and ranks."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, num_tokens: Tensor) -> None:
        """Add summed NLLs and their token counts (tensors of the same shape, e.g. one value per item)."""
        self.nll += nll.detach().to(self.nll.device, torch.float64).sum()
        self.tokens += torch.as_tensor(num_tokens).to(self.tokens.device, torch.float64).sum()

    def compute(self) -> Tensor:
        return (self.nll / self.tokens.clamp(min=1)).float()


class EntropyProfile(Metric):
    """Mean CoT entropy by position [L]: summed entropies and row counts per position, over ranks.

    `compute()` is nan where no row reached the position.
    """

    full_state_update = False

    def __init__(self, length: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.length = int(length)
        self.add_state("sums", default=torch.zeros(self.length, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(self.length, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, entropy_sum: Tensor, entropy_count: Tensor) -> None:
        """Add per-position entropy sums and counts (vectors, at most `length` long)."""
        n = min(self.length, len(entropy_sum))
        self.sums[:n] += entropy_sum[:n].detach().to(self.sums.device, torch.float64)
        self.counts[:n] += entropy_count[:n].detach().to(self.counts.device, torch.float64)

    def compute(self) -> Tensor:
        mean = self.sums / self.counts.clamp(min=1)
        return torch.where(self.counts > 0, mean, torch.nan).float()
