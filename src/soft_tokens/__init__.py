"""soft-tokens: reinforcement learning of language models with continuous chain-of-thought tokens."""

__version__ = "0.1.0"
