"""Seeds of independent random streams derived from one run seed."""

from __future__ import annotations

_PRIME = 1_000_003  # a prime above any stream index in use (ranks, problem indices), so seeds do not collide


def mix_seed(seed: int, *streams: int) -> int:
    """The seed of stream `streams` of run `seed`: `seed * P + s` for one stream, applied left to right for more."""
    mixed = seed
    for s in streams:
        mixed = mixed * _PRIME + s
    return mixed
