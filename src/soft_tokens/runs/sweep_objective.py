"""The value a Hydra sweeper optimizes (conf/hparams_search/): the run's metric named by `optimized_metric`."""

from __future__ import annotations

from collections.abc import Mapping


def sweep_objective(metrics: Mapping[str, float], name: str | None) -> float | None:
    """metrics[name] as a float for the sweeper; None when no `optimized_metric` is set (a plain run)."""
    if not name:
        return None
    if name not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        raise SystemExit(
            f"config error: optimized_metric={name!r} is not a metric of this run (it has: {known}); "
            "set optimized_metric to one of them (val/accuracy_best needs callbacks.best_score and a "
            "checkpoint callback, as conf/hparams_search/embedded_optuna.yaml sets)"
        )
    return float(metrics[name])
