"""Token representers: how each chain-of-thought step is fed back to the model."""

from soft_tokens.representers.base import Replay, Step, TokenRepresenter
from soft_tokens.representers.gumbel import GumbelSoftmaxRepresenter
from soft_tokens.representers.hard import HardRepresenter
from soft_tokens.representers.mixture_of_inputs import MixtureOfInputsRepresenter
from soft_tokens.representers.soft import SoftRepresenter
from soft_tokens.representers.soft_thinking import SoftThinkingRepresenter

__all__ = [
    "GumbelSoftmaxRepresenter",
    "HardRepresenter",
    "MixtureOfInputsRepresenter",
    "Replay",
    "SoftRepresenter",
    "SoftThinkingRepresenter",
    "Step",
    "TokenRepresenter",
]
