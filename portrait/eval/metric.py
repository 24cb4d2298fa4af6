"""The one shape of a metric in the evaluation output.

Every metric is ``{"value": float | None, "available": bool, "backend": str, ...}``; an unavailable one
also carries ``"reason"`` (what is missing and how to supply it). Metrics are never silently left out.
"""

from __future__ import annotations

import math
from typing import Any

Metric = dict[str, Any]


def available(value: float, backend: str, **extra: Any) -> Metric:
    """A computed metric. A non-finite ``value`` becomes an unavailable metric that says so."""
    value = float(value)
    if not math.isfinite(value):
        return unavailable(backend, f"the computation gave a non-finite value ({value})", **extra)
    return {"value": value, "available": True, "backend": backend, **extra}


def unavailable(backend: str, reason: str, **extra: Any) -> Metric:
    """A metric that could not be computed, with the reason (never empty)."""
    if not reason:
        raise ValueError("an unavailable metric needs a reason")
    return {"value": None, "available": False, "backend": backend, "reason": reason, **extra}
