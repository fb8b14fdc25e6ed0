"""Small helpers the benchmark scripts share: the CPU-time clock their budgets run on, and how a spread of seeds is
written in their tables."""

from __future__ import annotations

import resource
from collections.abc import Sequence

import numpy as np


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads): what the work costs on idle cores, however
    busy the machine is while it runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median_and_range(values: Sequence[float]) -> str:
    """``0.123`` for one value, ``median (min-max)`` for several, to three decimals."""
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return f"{values[0]:.3f}"
    return f"{np.median(values):.3f} ({values.min():.3f}-{values.max():.3f})"
