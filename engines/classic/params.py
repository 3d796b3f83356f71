"""Reading render-request parameters and formatting times: shared by the engine workers."""
from __future__ import annotations

import json
import math
import os


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


def env_params() -> dict:
    """The run's engine parameters given at start (TALKIE_ENGINE_PARAMS, a JSON object; {} when
    absent). A ValueError says what is wrong with it; the worker reports it as a fatal."""
    raw = os.environ.get("TALKIE_ENGINE_PARAMS", "").strip()
    if not raw:
        return {}
    try:
        params = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"TALKIE_ENGINE_PARAMS is not JSON: {e}") from None
    if not isinstance(params, dict):
        raise ValueError("TALKIE_ENGINE_PARAMS must be a JSON object")
    return params
