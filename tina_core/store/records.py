"""What a line of a run's JSONL files must hold to be indexed: the types and ranges that the
index's columns take (steps and checkpoints BIGINT, attempts and GPU indexes INTEGER, times and
values DOUBLE).

A line that breaks them (``{"step": 35, "attempt": 99999999999}``, a step of -3 or 2.5, a time
given as text) is one bad line: ``store.ingest`` quarantines it like a malformed one and the rest
of the workspace is indexed as usual; ``tina import`` refuses the file, naming the line.

Light: the standard library and ``tina_core.events`` (``tina import`` and the ingest share it).
"""

from __future__ import annotations

import math
from typing import Any

from tina_core.events import Kind, is_kind

# Steps, checkpoint steps and sizes: integers a DOUBLE holds exactly, well inside BIGINT.
MAX_STEP = 2**53
MAX_INT = 2**31 - 1  # INTEGER: attempts, GPU indexes


def number(v: Any) -> float | None:
    """A JSON number as the index's DOUBLE (one beyond a double's range is infinite, as DuckDB's
    own reader takes it); None for anything else (text, true/false, null)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return math.copysign(math.inf, v)


def integer(v: Any, lo: int, hi: int) -> int | None:
    """An integral JSON number (``3`` or ``3.0``) within ``lo..hi``, else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float):
        if not v.is_integer():
            return None
        v = int(v)
    return v if isinstance(v, int) and lo <= v <= hi else None


def step_of(v: Any) -> int | None:
    """A step (or checkpoint step, or count) the index can hold, else None."""
    return integer(v, 0, MAX_STEP)


def _integer_problem(rec: dict, key: str, lo: int, hi: int, *, default: Any = None) -> str | None:
    v = rec.get(key, default)
    if integer(v, lo, hi) is not None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        return f"{key!r} is not an integer" if key in rec else f"no integer {key!r}"
    return f"{key!r} {v} is out of range ({lo}..{hi})"


def _time_problem(rec: dict) -> str | None:
    ts = rec.get("ts")
    if ts is None:
        return None
    t = number(ts)
    return None if t is not None and math.isfinite(t) else f"'ts' {ts!r} is not a time (epoch seconds)"


def metrics_problem(rec: dict) -> str | None:
    """Why a metrics line cannot be indexed, or None (metric values of any number are kept;
    values that are not numbers are left out)."""
    return (_integer_problem(rec, "step", 0, MAX_STEP) or _integer_problem(rec, "attempt", 1, MAX_INT, default=1)
            or _time_problem(rec))


def events_problem(rec: dict) -> str | None:
    """Why an events line cannot be indexed, or None."""
    if not isinstance(rec.get("event"), str):
        return "no 'event' name"
    if problem := _time_problem(rec):
        return problem
    if is_kind(rec, Kind.EVAL_FINISHED):
        ck = rec.get("checkpoint")
        if isinstance(ck, (int, float)) and not isinstance(ck, bool) and step_of(ck) is None:
            return f"'checkpoint' {ck} is not a step (0..{MAX_STEP})"
    return None


def system_problem(rec: dict) -> str | None:
    """Why a system.jsonl line cannot be indexed, or None."""
    if not isinstance(rec.get("gpus"), list):
        return "no 'gpus' list"
    if problem := _time_problem(rec):
        return problem
    for g in rec["gpus"]:
        if isinstance(g, dict) and g.get("index") is not None and integer(g["index"], 0, MAX_INT) is None:
            return f"GPU index {g['index']!r} is not one (0..{MAX_INT})"
    return None
