"""Token representers: how each chain-of-thought step is fed back to the model."""

from soft_tokens.representers.base import Step, TokenRepresenter
from soft_tokens.representers.hard import HardRepresenter
from soft_tokens.representers.soft import SoftRepresenter

__all__ = ["HardRepresenter", "SoftRepresenter", "Step", "TokenRepresenter"]
