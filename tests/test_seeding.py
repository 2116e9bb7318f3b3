"""Derived seeds: the formula the rollout and evaluation streams have always used, and no collisions."""

from __future__ import annotations

from soft_tokens.rollout.seeding import mix_seed


def test_one_stream_is_seed_times_the_prime_plus_the_stream():
    assert mix_seed(3, 1) == 3 * 1_000_003 + 1
    assert mix_seed(0, 7) == 7 and mix_seed(5) == 5


def test_streams_of_nearby_seeds_do_not_collide():
    seeds = {mix_seed(seed, rank, i) for seed in range(4) for rank in range(8) for i in range(500)}
    assert len(seeds) == 4 * 8 * 500
