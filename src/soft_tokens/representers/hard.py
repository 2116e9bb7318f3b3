"""Hard tokens: the CoT is ordinary sampled (or argmax) tokens."""

from __future__ import annotations

from torch import Tensor

from soft_tokens.representers.base import Replay, Rng, Step, TokenRepresenter
from soft_tokens.representers.sampling import categorical_log_prob, choose_token


class HardRepresenter(TokenRepresenter):
    """Feeds E[y] with y ~ softmax(logits / temperature), or y = argmax(logits) when greedy."""

    def __init__(self, temperature: float = 1.0, greedy: bool = False, name: str | None = None) -> None:
        super().__init__(greedy=greedy, name=name)
        self.temperature = float(temperature)  # its range is checked on the config (config_types.RANGES)

    def step(self, logits: Tensor, embedding: Tensor, generator: Rng = None) -> Step:
        """A token sampled at the temperature (argmax when greedy), fed as its embedding."""
        ids, logp = choose_token(logits, self.temperature, self.greedy, generator)
        return Step(embeds=embedding[ids], ids=ids, logp=logp)

    def log_prob(self, replay: Replay) -> Tensor:
        """log softmax(logits / temperature)[ids]."""
        return categorical_log_prob(replay.logits, replay.ids, self.temperature)

    def knobs(self) -> str:
        """The sampling temperature."""
        return f", temperature={self.temperature}"
