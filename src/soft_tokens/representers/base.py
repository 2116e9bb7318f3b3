"""The token-representer contract: how a CoT step turns the last logits into the next input."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from soft_tokens.representers.sampling import k3_kl

log = logging.getLogger(__name__)

Rng = torch.Generator | None  # the random source of a sampled step (None: torch's global one)


@dataclass
class Step:
    """One CoT step for N rows: the input embedding fed next and its token id (sample or argmax shadow)."""

    embeds: Tensor  # [N, d]
    ids: Tensor  # [N]
    logp: Tensor  # [N] log-probability of the fed input under the representer (float32)
    aux: dict[str, Tensor] | None = None  # per-row tensors [N, ...] the rollout stores for `log_prob`
    confident: Tensor | None = None  # [N] bool: the step counts toward an early stop of the CoT


@dataclass
class Replay:
    """The inputs a CoT step is re-scored from, teacher-forced: the logits, what was fed, its id, E, aux and
    the final hidden state."""

    logits: Tensor  # [..., V] logits of the step under the policy being scored
    fed: Tensor | None  # [..., d] the fed input of a continuous representer, else None
    ids: Tensor  # [...] the step's token id (sample or argmax shadow)
    embedding: Tensor  # [V, d] the input embedding matrix of the policy being scored
    aux: dict[str, Tensor] | None = None  # the step's stored `Step.aux` tensors, [..., *]
    hidden: Tensor | None = None  # [..., d] the final hidden state the logits came from (hidden-state noise)

    def under(self, logits: Tensor, embedding: Tensor, hidden: Tensor | None = None) -> Replay:
        """The same fed step scored under other logits, embedding matrix and hidden state (the reference's)."""
        return replace(self, logits=logits, embedding=embedding, hidden=hidden)


def positive(name: str, value: float) -> float:
    """`value` as a float, or a ValueError naming `name` unless it is > 0."""
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def renamed_tau(tau: float, temperature: float | None, owner: str) -> float:
    """`tau`, or the value given under its old name `temperature`, with a deprecation message."""
    if temperature is None:
        return tau
    msg = (
        f"{owner}: `temperature` is the old name of the mixture temperature; use `tau` (representer.tau=...)"
    )
    warnings.warn(msg, DeprecationWarning, stacklevel=3)
    log.warning(msg)
    return temperature


class TokenRepresenter:
    """Base class: a CoT token representation, run greedy (evaluation) or sampled (training).

    Subclasses implement `step` (decode time, no gradient) and `log_prob` (teacher-forced, differentiable).
    `continuous` says whether the fed input differs from the embedding of the returned id, in which case the
    rollout must store the fed embeddings to replay them. A step may return `aux` tensors (stored by the
    rollout per CoT position and handed back to `log_prob` and `kl` in the `Replay`) and a `confident` flag
    per row: a row whose last `stop_patience` steps were all confident ends its CoT early. `trainable` is
    False for the training-free inference settings, which have no log-probability.
    """

    continuous: bool = False
    trainable: bool = True
    stop_patience: int = 1

    def __init__(self, greedy: bool = False, name: str | None = None) -> None:
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

    def step(
        self, logits: Tensor, embedding: Tensor, generator: Rng = None, pre: Tensor | None = None
    ) -> Step:
        """Next input for each row from its last logits [N, V], the input embedding matrix [V, d] and what
        `project` made with the logits (`pre`, None unless it made something)."""
        raise NotImplementedError

    def log_prob(self, replay: Replay) -> Tensor:
        """Log-probability [...] of what was fed at each replayed step under `replay.logits`."""
        raise NotImplementedError

    def kl(self, replay: Replay, ref: Replay) -> Tensor:
        """Per-step KL(policy || reference) estimate [...] at the fed inputs; used when beta > 0.

        `ref` is the same step under the reference's logits and embedding (`Replay.under`). By default
        Schulman's k3 at the fed input, from `log_prob` under the policy and the reference.
        """
        return k3_kl(self.log_prob(replay), self.log_prob(ref).detach())

    def entropy(self, logits: Tensor) -> Tensor:
        """Entropy [...] of the model's next-token distribution at temperature 1 (a CoT diagnostic)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)

    def knobs(self) -> str:
        """The settings `repr` shows after the name (subclasses add theirs)."""
        return ""

    def __repr__(self) -> str:
        mode = "greedy" if self.greedy else "sample"
        return f"{type(self).__name__}(name={self.name!r}{self.knobs()}, {mode})"


class TrainingFreeRepresenter(TokenRepresenter):
    """Base of the inference-only settings: a continuous input with no log-probability to train on."""

    continuous = True
    trainable = False

    def _untrainable(self) -> NotImplementedError:
        return NotImplementedError(
            f"{self!r} is a training-free inference setting with no log-probability: train with "
            "representer=hard, soft, fuzzy or gumbel, and use this one in evaluate.py or the math-eval callback"
        )

    def log_prob(self, replay: Replay) -> Tensor:
        """Raises: a training-free setting has no log-probability."""
        raise self._untrainable()

    def kl(self, replay: Replay, ref: Replay) -> Tensor:
        """Raises: a training-free setting has no log-probability."""
        raise self._untrainable()
