"""The token-representer contract: how a CoT step turns the last logits into the next input."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from soft_tokens.representers.sampling import k3_kl


@dataclass
class Step:
    """One CoT step for N rows: the input embedding fed next and its token id (sample or argmax shadow)."""

    embeds: Tensor  # [N, d]
    ids: Tensor  # [N]
    logp: Tensor  # [N] log-probability of the fed input under the representer (float32)
    aux: dict[str, Tensor] | None = None  # per-row tensors [N, ...] the rollout stores for `log_prob`
    confident: Tensor | None = None  # [N] bool: the step counts toward an early stop of the CoT


class TokenRepresenter:
    """Base class: a CoT token representation, run greedy (evaluation) or sampled (training).

    Subclasses implement `step` (decode time, no gradient) and `log_prob` (teacher-forced, differentiable).
    `continuous` says whether the fed input differs from the embedding of the returned id, in which case the
    rollout must store the fed embeddings to replay them. A step may return `aux` tensors (stored by the
    rollout per CoT position and handed back to `log_prob` and `kl`) and a `confident` flag per row: a row
    whose last `stop_patience` steps were all confident ends its CoT early. `trainable` is False for the
    training-free inference settings, which have no log-probability.
    """

    continuous: bool = False
    trainable: bool = True
    stop_patience: int = 1

    def __init__(self, temperature: float = 1.0, greedy: bool = False, name: str | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.greedy = bool(greedy)
        self.name = name or type(self).__name__.removesuffix("Representer").lower()

    def as_greedy(self) -> TokenRepresenter:
        """A copy of this representer that decodes greedily (hard: argmax; soft/fuzzy: no noise)."""
        out = copy.copy(self)
        out.greedy = True
        return out

    def prepare(self, embedding: Tensor) -> None:
        """Called once at the start of every rollout with the current embedding matrix (for cached state)."""

    def project(
        self, hidden: Tensor, head: torch.nn.Module, embedding: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Next-token logits [N, V] from final hidden states [N, d], and an optional per-row result that the
        rollout hands to `step(..., pre=)` (None here; soft tokens return their mixture, made in the same pass
        over E as the logits)."""
        return head(hidden), None

    def step(self, logits: Tensor, embedding: Tensor, generator: torch.Generator | None = None) -> Step:
        """Next input for each row from its last logits [N, V] and the input embedding matrix [V, d]."""
        raise NotImplementedError

    def log_prob(
        self,
        logits: Tensor,
        fed: Tensor | None,
        ids: Tensor,
        embedding: Tensor,
        aux: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Log-probability [...] of what was fed (ids [...], fed embeds [..., d], the step's aux [..., *])
        under logits [..., V]."""
        raise NotImplementedError

    def kl(
        self,
        logits: Tensor,
        ref_logits: Tensor,
        fed: Tensor | None,
        ids: Tensor,
        embedding: Tensor,
        ref_embedding: Tensor,
        aux: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Per-step KL(policy || reference) estimate [...] at the fed inputs; used when beta > 0.

        By default Schulman's k3 at the fed input, from `log_prob` under the policy and the reference.
        """
        logp = self.log_prob(logits, fed, ids, embedding, aux)
        return k3_kl(logp, self.log_prob(ref_logits, fed, ids, ref_embedding, aux).detach())

    def entropy(self, logits: Tensor) -> Tensor:
        """Entropy [...] of the model's next-token distribution at temperature 1 (a CoT diagnostic)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)

    def __repr__(self) -> str:
        mode = "greedy" if self.greedy else "sample"
        return f"{type(self).__name__}(name={self.name!r}, temperature={self.temperature}, {mode})"


class TrainingFreeRepresenter(TokenRepresenter):
    """Base of the inference-only settings: a continuous input with no log-probability to train on."""

    continuous = True
    trainable = False

    def _untrainable(self) -> NotImplementedError:
        return NotImplementedError(
            f"{self!r} is a training-free inference setting with no log-probability: train with "
            "representer=hard, soft, fuzzy or gumbel, and use this one in evaluate.py or the math-eval callback"
        )

    def log_prob(
        self,
        logits: Tensor,
        fed: Tensor | None,
        ids: Tensor,
        embedding: Tensor,
        aux: dict[str, Tensor] | None = None,
    ) -> Tensor:
        raise self._untrainable()

    def kl(
        self,
        logits: Tensor,
        ref_logits: Tensor,
        fed: Tensor | None,
        ids: Tensor,
        embedding: Tensor,
        ref_embedding: Tensor,
        aux: dict[str, Tensor] | None = None,
    ) -> Tensor:
        raise self._untrainable()
