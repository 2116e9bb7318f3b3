"""The token-representer contract: how a CoT step turns the last logits into the next input.

Everything the rollout, the teacher-forced pass (logprobs.py), the training module and evaluation use of a
representer is declared on `TokenRepresenter`: two abstract methods (`step`, `log_prob`) and the optional
capabilities, each with its default. docs/extending.md walks through writing one.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from soft_tokens.representers.sampling import k3_kl

Rng = torch.Generator | None  # the random source of a sampled step (None: torch's global one)


@dataclass
class Aux(Mapping):
    """Base of a representer's declared per-step tensors (`Step.aux`): one dataclass field per tensor [N, ...].

    The rollout stores each field that is not None under its name, per CoT position ([N, S, ...]), and hands
    them back in `Replay.aux`; `from_replay` reads them as the subclass again. A Mapping of its set fields, so
    the stored layout is the field names and tensors.
    """

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self) if getattr(self, f.name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, key: str) -> Tensor:
        value = getattr(self, key, None) if key in {f.name for f in fields(self)} else None
        if value is None:
            raise KeyError(key)
        return value

    @classmethod
    def from_replay(cls, replay: Replay, owner: object, need: tuple[str, ...] = ()) -> Any:
        """The replay's stored tensors as this class, or a ValueError naming the ones it needs (the fields
        without default, plus the optional ones in `need`)."""
        required = sorted({f.name for f in fields(cls) if f.default is MISSING} | set(need))
        stored = replay.aux or {}
        if not set(required) <= stored.keys():
            raise ValueError(f"{owner!r} needs the rollout's aux tensors {required} to score a step")
        return cls(**{f.name: stored[f.name] for f in fields(cls) if f.name in stored})


@dataclass
class Step:
    """One CoT step for N rows: the input embedding fed next and its token id (sample or argmax shadow)."""

    embeds: Tensor  # [N, d]
    ids: Tensor  # [N]
    logp: Tensor  # [N] log-probability of the fed input under the representer (float32)
    aux: Mapping[str, Tensor] | None = None  # the representer's `Aux` for `log_prob` (stored per position)
    confident: Tensor | None = None  # [N] bool: the step counts toward an early stop of the CoT


@dataclass
class Replay:
    """The inputs a CoT step is re-scored from, teacher-forced: the logits, what was fed, its id, E, aux and
    the final hidden state. `fed` is set for a continuous representer only (read it with `fed_input`)."""

    logits: Tensor  # [..., V] logits of the step under the policy being scored
    fed: Tensor | None  # [..., d] the fed input of a continuous representer, else None
    ids: Tensor  # [...] the step's token id (sample or argmax shadow)
    embedding: Tensor  # [V, d] the input embedding matrix of the policy being scored
    aux: Mapping[str, Tensor] | None = None  # the step's stored `Step.aux` tensors, [..., *]
    hidden: Tensor | None = None  # [..., d] the final hidden state the logits came from (hidden-state noise)

    def under(self, logits: Tensor, embedding: Tensor, hidden: Tensor | None = None) -> Replay:
        """The same fed step scored under other logits, embedding matrix and hidden state (the reference's)."""
        return replace(self, logits=logits, embedding=embedding, hidden=hidden)

    def fed_input(self, owner: TokenRepresenter) -> Tensor:
        """The fed inputs [..., d]; a ValueError when there are none: `owner` is not `continuous` (its input
        is E[ids], not stored) or the replay was built without them."""
        if self.fed is not None:
            return self.fed
        why = "the replay has none" if owner.continuous else "it is not continuous: its input is E[ids]"
        raise ValueError(f"{owner!r} asked for the fed embeddings, but {why}")


class TokenRepresenter(ABC):
    """A CoT token representation, run greedy (evaluation) or sampled (training).

    Required: `step` (decode time, no gradient) and `log_prob` (teacher-forced, differentiable); a subclass
    without either cannot be constructed. Optional capabilities, with their defaults here: `continuous`,
    `trainable`, `stop_patience`, `prepare`, `project`, `kl`, `entropy`, `knobs`; `name`, `greedy` and
    `as_greedy` are set by this class.
    """

    # Capability: the fed input is not the embedding of the returned id, so the rollout stores it
    # (`Rollout.fed`) and the replay hands it back (`Replay.fed_input`).
    continuous: bool = False
    # Capability: False for the training-free inference settings, which have no log-probability (the
    # training module and the config check refuse them).
    trainable: bool = True
    # Capability: a row whose last `stop_patience` steps were all `Step.confident` ends its CoT early.
    stop_patience: int = 1

    def __init__(self, greedy: bool = False, name: str | None = None) -> None:
        self.greedy = bool(greedy)  # evaluation's deterministic setting (no noise, argmax)
        self.name = name or type(self).__name__.removesuffix("Representer").lower()  # metric suffix

    @abstractmethod
    def step(self, logits: Tensor, embedding: Tensor, generator: Rng = None) -> Step:
        """Next input for each row from its last logits [N, V] and the input embedding matrix [V, d]."""

    @abstractmethod
    def log_prob(self, replay: Replay) -> Tensor:
        """Log-probability [...] of what was fed at each replayed step under `replay.logits`."""

    def as_greedy(self) -> TokenRepresenter:
        """A copy of this representer that decodes greedily (hard: argmax; soft/fuzzy: no noise)."""
        out = copy.copy(self)
        out.greedy = True
        return out

    def prepare(self, embedding: Tensor) -> None:
        """Capability: called once at the start of every rollout with the current embedding matrix."""
        return None

    def project(
        self, hidden: Tensor, head: torch.nn.Module, embedding: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Capability: next-token logits [N, V] from final hidden states [N, d], and a per-row carry (None
        here: the plain head). A representer whose `project` returns a carry takes it back as
        `step(..., pre=carry)` for the same rows (the soft representer's fused mixture, hidden-state noise)."""
        return head(hidden), None

    def kl(self, replay: Replay, ref: Replay) -> Tensor:
        """Capability: per-step KL(policy || reference) estimate [...] at the fed inputs; used when beta > 0.

        `ref` is the same step under the reference's logits and embedding (`Replay.under`). By default
        Schulman's k3 at the fed input, from `log_prob` under the policy and the reference.
        """
        return k3_kl(self.log_prob(replay), self.log_prob(ref).detach())

    def entropy(self, logits: Tensor) -> Tensor:
        """Capability: entropy [...] of the next-token distribution at temperature 1 (a CoT diagnostic)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)

    def knobs(self) -> str:
        """Capability: the settings `repr` shows after the name (", key=value" each; none by default)."""
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
