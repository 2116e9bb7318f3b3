"""Deprecated representer arguments, still accepted: `temperature`, the old name of soft, fuzzy and Gumbel
tokens' mixture temperature `tau` (`representer.temperature=0.3` in an older YAML or override)."""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger(__name__)


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
