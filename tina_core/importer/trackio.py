"""A trackio project database (``~/.cache/huggingface/trackio/<project>.db``, SQLite): its
``metrics`` table holds one row per log call, ``run_name``, ``step`` (trackio's own count) and
``metrics`` (a JSON object; NaN and infinities written as the strings "NaN", "Infinity"). The
Trainer's trackio callback logs ``train/global_step`` in every row, which is used as the step when
present. A database with several runs needs the run named. Opened read-only: importing never
touches trackio's files.

A database is a file someone gave us: its ``metrics`` may be a view that never ends (a recursive
one), so every query runs under a budget of SQLite's own steps sized by the file (a read of
trackio's tables takes about 20 steps a row, and a row takes more than 50 bytes), and Ctrl-C
stops it: SQLite swallows the KeyboardInterrupt a query's callback raises, so the read listens for
SIGINT itself.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from tina_core.importer.records import Read, checked_step, merge, values
from tina_core.rundir import TinaError, parse_json

SQLITE_MAGIC = b"SQLite format 3\x00"
STEPS_PER_BYTE = 100           # of the file: what a read may take, far above what trackio's tables need
MIN_STEPS = 10_000_000         # however small the file (about half a second)
CHECK_EVERY = 10_000           # SQLite steps between two looks at the budget and at Ctrl-C


@contextlib.contextmanager
def _bounded(con: sqlite3.Connection, path: Path) -> Iterator[None]:
    """Queries on ``con`` end once they have taken the file's budget of steps (a TinaError) or on
    Ctrl-C (a KeyboardInterrupt), instead of running for ever."""
    budget = MIN_STEPS + STEPS_PER_BYTE * path.stat().st_size
    taken, interrupted = [0], threading.Event()

    def check() -> int:
        taken[0] += CHECK_EVERY
        return int(interrupted.is_set() or taken[0] > budget)  # non-zero: SQLite interrupts the query

    con.set_progress_handler(check, CHECK_EVERY)
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if main else None
    try:
        yield
    except sqlite3.OperationalError as e:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        if taken[0] > budget:
            raise TinaError(f"{path}: reading it took more than {budget:,} SQLite steps, far more than a trackio "
                            "database of its size needs (is its metrics a view that never ends?); nothing was "
                            "imported") from None
        raise TinaError(f"{path}: cannot read the trackio database ({e})") from None
    finally:
        if main:
            signal.signal(signal.SIGINT, before)
        if interrupted.is_set():  # Ctrl-C between two queries
            raise KeyboardInterrupt


def read(path: Path, run: str | None = None) -> Read:
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise TinaError(f"{path}: cannot open as a trackio database ({e})") from None
    try:
        with _bounded(con, path):
            cols = {r[1] for r in con.execute("PRAGMA table_info(metrics)")}
            if not {"run_name", "step", "metrics"} <= cols:
                raise TinaError(f"{path}: not a trackio database (no metrics table with run_name, step, metrics)")
            named = [r for (r,) in con.execute("SELECT DISTINCT run_name FROM metrics ORDER BY run_name")]
            runs = [str(r) for r in named if r is not None]
            nameless = len(named) - len(runs)
            if run is None and len(runs) > 1:
                raise TinaError(f"{path}: the database holds several runs ({', '.join(runs)}): name one with --run")
            if run is None and not runs and nameless:
                raise TinaError(f"{path}: its metrics rows have no run name (NULL), which trackio always writes: "
                                "not a database tina can read a run from")
            name = run if run is not None else (runs[0] if runs else None)
            if name not in runs:
                raise TinaError(f"{path}: no run {name!r} in this database (it holds: {', '.join(runs) or 'none'})")
            order = "id" if "id" in cols else "rowid"
            rows, bad = [], 0
            for row_id, step_col, text in con.execute(
                    f"SELECT {order}, step, metrics FROM metrics WHERE run_name = ? ORDER BY {order}", [name]):
                try:
                    rec = parse_json(text)
                except (TypeError, ValueError):
                    bad += 1
                    continue
                if not isinstance(rec, dict):
                    bad += 1
                    continue
                where = f"metrics row {row_id}"
                step = checked_step(path, where, rec, "train/global_step")
                step = step if step is not None else checked_step(path, where, {"step": step_col})
                if step is None:
                    bad += 1
                    continue
                rows.append((step, values(rec, ("train/global_step", "step"))))
    except sqlite3.DatabaseError as e:
        raise TinaError(f"{path}: cannot read the trackio database ({e})") from None
    finally:
        con.close()
    nulls = f"; {nameless} rows without a run name left out" if nameless else ""
    return Read("trackio", merge(rows), bad, {"name": name}, f"run {name} ({len(rows) + bad} rows{nulls})")
