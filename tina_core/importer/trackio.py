"""A trackio project database (``~/.cache/huggingface/trackio/<project>.db``, SQLite): its
``metrics`` table holds one row per log call, ``run_name``, ``step`` (trackio's own count) and
``metrics`` (a JSON object; NaN and infinities written as the strings "NaN", "Infinity"). The
Trainer's trackio callback logs ``train/global_step`` in every row, which is used as the step when
present. A database with several runs needs the run named. Opened read-only: importing never
touches trackio's files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tina_core.importer.records import Read, checked_step, merge, values
from tina_core.rundir import TinaError, parse_json

SQLITE_MAGIC = b"SQLite format 3\x00"


def read(path: Path, run: str | None = None) -> Read:
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise TinaError(f"{path}: cannot open as a trackio database ({e})") from None
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(metrics)")}
        if not {"run_name", "step", "metrics"} <= cols:
            raise TinaError(f"{path}: not a trackio database (no metrics table with run_name, step, metrics)")
        runs = [r for (r,) in con.execute("SELECT DISTINCT run_name FROM metrics ORDER BY run_name")]
        if run is None and len(runs) > 1:
            raise TinaError(f"{path}: the database holds several runs ({', '.join(runs)}): name one with --run")
        name = run if run is not None else (runs[0] if runs else None)
        if name not in runs:
            raise TinaError(f"{path}: no run {name!r} in this database (it holds: {', '.join(runs) or 'none'})")
        order = "id" if "id" in cols else "rowid"
        cursor = con.execute(f"SELECT {order}, step, metrics FROM metrics WHERE run_name = ? ORDER BY {order}",
                             [name])
        rows, bad = [], 0
        for row_id, step_col, text in cursor:
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
    return Read("trackio", merge(rows), bad, {"name": name}, f"run {name} ({len(rows) + bad} rows)")
