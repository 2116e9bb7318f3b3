"""evaluate.py's own counts and setting names, checked on the composed config before torch loads.

`max_examples`, `num_samples`, `batch_size`, `save_completions`, `k_values` and each setting's `num_samples`
are integers in their range (a negative `max_examples` would be a Python slice that drops problems from the
end; `num_samples=0` would run one sample), and `only` names configured settings (a single name is accepted
as a one-element list). Errors are ConfigTypeErrors naming the key, as the config check's are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig

from soft_tokens.config_types import ConfigTypeError

# key -> (smallest value, whether null is allowed and what it means)
COUNTS: dict[str, tuple[int, str | None]] = {
    "max_examples": (1, "the whole split"),
    "num_samples": (1, None),
    "batch_size": (1, None),
    "save_completions": (0, None),
}


def check_count(key: str, value: Any, minimum: int, null_means: str | None = None) -> None:
    """Raise ConfigTypeError naming `key` unless `value` is an integer >= minimum (or null where allowed)."""
    if value is None and null_means is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        null = f", or null ({null_means})" if null_means else ""
        raise ConfigTypeError(f"config key {key}={value!r}: expected an integer >= {minimum}{null}")


def only_names(only: Any) -> list[str] | None:
    """`only` as a list of names: None stays None (every setting), a single name is a one-element list."""
    if only is None:
        return None
    if isinstance(only, str):
        return [only]
    if isinstance(only, list | tuple | ListConfig) and all(isinstance(n, str) for n in only):
        return [str(n) for n in only]
    raise ConfigTypeError(
        f"config key only={only!r}: expected a setting name or a list of them, e.g. [hard_greedy]"
    )


def check_only(only: Any, settings: Mapping[str, Any]) -> None:
    """Raise ConfigTypeError unless `only` is null or names at least one configured setting, all known."""
    names = only_names(only)
    if names is None:
        return
    known = [str(n) for n, spec in settings.items() if spec is not None]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"unknown settings {unknown}" if unknown else "names no setting (null runs them all)"
        raise ConfigTypeError(f"config key only={names}: {what}; configured: {known}")


def check_k_values(key: str, ks: Any, num_samples: int) -> None:
    """Raise ConfigTypeError unless `ks` is null or a list of integers in 1..num_samples."""
    if ks is None:
        return
    values = list(ks) if isinstance(ks, list | tuple | ListConfig) else [ks]
    for k in values:
        check_count(key, k, 1)
    if max(values, default=0) > num_samples or not values:
        raise ConfigTypeError(f"config key {key}={values}: each k must lie in 1..num_samples={num_samples}")


def check_eval_options(cfg: DictConfig) -> None:
    """Check evaluate.yaml's counts, each setting's num_samples and k_values, and `only` (names the key)."""
    for key, (minimum, null_means) in COUNTS.items():
        check_count(key, cfg.get(key), minimum, null_means)
    check_k_values("k_values", cfg.get("k_values"), cfg.num_samples)
    for name, spec in (cfg.get("settings") or {}).items():
        if spec is None:
            continue
        n = spec.get("num_samples", 1)
        check_count(f"settings.{name}.num_samples", n, 1)
        check_k_values(f"settings.{name}.k_values", spec.get("k_values"), n)
    check_only(cfg.get("only"), cfg.get("settings") or {})
