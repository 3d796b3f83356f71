"""Reading render-request parameters and formatting times: shared by the engine workers."""
from __future__ import annotations

import math


def flag(value, default: bool = False) -> bool:
    """A boolean parameter: true/false, 1/0, yes/no, on/off; `default` when absent."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def number(value, default: float, lo: float, hi: float) -> float:
    """A numeric parameter clamped to [lo, hi]; `default` when absent or not a finite number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    if not math.isfinite(x):
        return default
    return min(hi, max(lo, x))


def fmt_time(t: float) -> str:
    """Seconds as HH:MM:SS.s, as error messages show times in the media."""
    t = max(0.0, t)
    h = int(t // 3600)
    m = int((t % 3600) // 60)
    s = t - 3600 * h - 60 * m
    return f"{h:02d}:{m:02d}:{s:04.1f}"
