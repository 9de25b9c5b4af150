"""What every reader of ``tina import`` turns its rows into: tina metrics records under canonical
names, whatever the tool, era or spelling (see tina_core.analysis.metric_keys).

Robust to what real logs hold: NaN and infinities are kept as such (the index leaves them out of
curves; a number beyond a double's range is infinite, as in the index), blank cells and text
("No log") are skipped, a row without a step is skipped (counted), several entries of one step
(train and eval, a summary) are merged, and a log whose steps go back (a notebook cell that was run
again, a resumed run) is read as a later attempt that supersedes the earlier one from the step it
restarted at, as the index does for tina's own restarts. A number the index cannot hold (a step of
-3, 2.5 or 2**70, an attempt of 99999999999, a time that is not one: ``store.records``) refuses the
whole file, naming the row, and nothing is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tina_core.analysis import metric_keys
from tina_core.rundir import TinaError
from tina_core.store.records import metrics_problem
from tina_core.store.records import number as json_number


# At most this many metrics in one run (a W&B export of many runs' panels has a few thousand
# columns): a file with more is not one run's metrics, and would fill every later listing.
MAX_METRICS = 10_000


def check_width(where: str, count: int, what: str = "columns") -> None:
    """Refuse a table (or a log) with more metrics than MAX_METRICS, before reading its rows."""
    if count > MAX_METRICS:
        raise TinaError(f"{where}: {count:,} {what}, more than the {MAX_METRICS:,} metrics tina reads of one run "
                        "(not one run's metrics?); nothing was imported")


@dataclass
class Read:
    """What one file gave: records ``{"step", "attempt", <canonical key>: number}`` in file order,
    rows skipped (no step), run.json fields it knows (max_steps...) and a line saying what was read
    (shown by ``tina import``)."""

    format: str
    records: list[dict]
    skipped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


def number(v: Any) -> float | None:
    """A metric value: a JSON number, or text that reads as one (``nan``, ``inf`` included); None
    for anything else."""
    if isinstance(v, (int, float)) or v is None:
        return json_number(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


def checked_step(path: Path | str, where: str, rec: dict, key: str = "step") -> int | None:
    """The step of one row (``rec[key]``, a number or text), None when it has none; a step, attempt
    or time the index cannot hold refuses the file."""
    v = number(rec.get(key))
    if v is None:
        return None
    problem = metrics_problem({**{k: rec[k] for k in ("attempt", "ts") if k in rec}, "step": v})
    if problem:
        raise TinaError(f"{path}, {where}: {problem}; nothing was imported")
    return int(v)


def values(rec: dict, skip: Iterable[str] = ()) -> dict[str, float]:
    """The numeric metrics of one row under canonical names (a canonical key wins over a legacy
    spelling of it); ``skip``: canonical names that are not metrics (the step column)."""
    skip = set(skip) | set(metric_keys.RECORD_FIELDS)
    out = {}
    for k, v in metric_keys.normalise_record({str(k): v for k, v in rec.items() if k is not None}).items():
        if k in skip or not k:
            continue
        f = number(v)
        if f is not None:
            out[k] = f
    return out


def went_back(records: list[dict]) -> str | None:
    """What ``merge`` made of steps that went back, in words (``tina import`` says it): each later
    attempt supersedes the earlier one's steps from where it restarted, and those are not shown."""
    firsts: dict[int, int] = {}
    for r in records:
        firsts[r["attempt"]] = min(firsts.get(r["attempt"], r["step"]), r["step"])
    superseded = sum(1 for r in records if any(a > r["attempt"] and s <= r["step"] for a, s in firsts.items()))
    if len(firsts) < 2:
        return None
    return (f"the steps went back {len(firsts) - 1} time(s) (a cell run again, a resume): each time read as a later "
            f"attempt from there, {superseded} step(s) logged before it superseded")


def merge(rows: Iterable[tuple[int, dict[str, float]]]) -> list[dict]:
    """Rows ``(step, values)`` in file order -> one record per (attempt, step), ascending within
    each attempt. A step lower than the one before starts the next attempt."""
    attempts: list[dict[int, dict]] = [{}]
    last = None
    for step, vals in rows:
        if last is not None and step < last:
            attempts.append({})
        attempts[-1].setdefault(step, {}).update(vals)
        last = step
    return [{"step": s, "attempt": a, **by_step[s]}
            for a, by_step in enumerate(attempts, start=1) for s in sorted(by_step) if by_step[s]]
