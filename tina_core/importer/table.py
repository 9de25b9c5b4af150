"""A table of metrics: a CSV or TSV with a step column and a column per metric. Three shapes are
common and all read the same way:

- a plain export (``step,reward,...``);
- a W&B CSV export: ``Step`` (or ``train/global_step``) and ``<run> - <metric>`` columns with their
  ``<run> - <metric>__MIN`` / ``__MAX`` companions (left out); an export of several runs needs the
  run named;
- the progress table a notebook prints (HF Trainer, Unsloth): ``Step``, ``Training Loss`` and the
  logged names spelled with spaces (``rewards / strict_format_reward_func / mean``).

``rows_to_read`` also serves the tables found in a notebook's outputs (importer.notebook).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from tina_core.analysis import metric_keys
from tina_core.importer.records import Read, check_width, checked_step, merge, values
from tina_core.rundir import TinaError

# Preferred first: W&B's `_step` (and a panel export's `Step`) counts its own log calls, which are
# optimizer steps only when every call logs train/global_step too.
STEP_COLUMNS = ("train/global_step", "global_step", "step", "_step")
WANDB_SEP = " - "


def _split_run(col: str) -> tuple[str | None, str]:
    """(W&B run name or None, metric name) of a column header."""
    run, sep, metric = col.rpartition(WANDB_SEP)
    return (run.strip(), metric.strip()) if sep and run.strip() and metric.strip() else (None, col.strip())


def rows_to_read(where: str, header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str,
                 run: str | None = None, detail: str = "", first_line: int = 2, row_word: str = "line") -> Read:
    """A table (header and rows of cells, as text) as a Read; ``where`` names it in errors, and a
    row by ``row_word`` and its number (the first is ``first_line``)."""
    check_width(where, len(header))
    cols: dict[int, str] = {}
    runs: dict[str, None] = {}
    for i, col in enumerate(header):
        col = (col or "").strip().lstrip("\ufeff")
        if not col or col.endswith(("__MIN", "__MAX")):
            continue
        who, metric = _split_run(col)
        if who is not None:
            runs[who] = None
            if run is not None and who != run:
                continue
        cols[i] = metric
    if len(runs) > 1 and run is None:
        raise TinaError(f"{where}: the export holds several runs ({', '.join(runs)}): name one with --run")
    if run is not None and runs and run not in runs:
        raise TinaError(f"{where}: no run {run!r} in this export (it holds: {', '.join(runs)})")
    canon = {i: metric_keys.normalise_key(name) for i, name in cols.items()}
    by_name = {name.lower(): i for i, name in cols.items()}
    by_canon = {c: i for i, c in canon.items()}
    step_col = next((by_name.get(s, by_canon.get(s)) for s in STEP_COLUMNS
                     if by_name.get(s, by_canon.get(s)) is not None), None)
    if step_col is None:
        raise TinaError(f"{where}: no step column (expected one of {', '.join(STEP_COLUMNS)}, or Step); "
                        f"columns are: {', '.join(c for c in header[:12] if c)}")
    step_cols = {i for i, name in cols.items() if name.lower() in STEP_COLUMNS or canon[i] in STEP_COLUMNS}
    out, bad = [], 0
    for n, cells in enumerate(rows, first_line):
        if not any((c or "").strip() for c in cells):
            continue
        step = checked_step(where, f"{row_word} {n}", {"step": cells[step_col]}) if step_col < len(cells) else None
        if step is None:
            bad += 1
            continue
        rec = {cols[i]: cells[i] for i in cols if i < len(cells) and i not in step_cols}
        out.append((step, values(rec)))
    of = f" of run {run or next(iter(runs))}" if runs else ""
    printed = " of a notebook's progress table" if any(n.lower() == "training loss" for n in cols.values()) else ""
    return Read(fmt, merge(out), bad, {}, detail or f"{len(rows)} rows{of}{printed}")


def read(path: Path, run: str | None = None) -> Read:
    """The table, read row by row: its width is checked on the header before any row is read (a
    million columns are refused at once), and a field beyond the csv module's limit (128 KiB) is
    a clear error naming its line."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        first = f.readline()
        if not first.strip():
            raise TinaError(f"{path}: empty table")
        delimiter = "\t" if first.count("\t") > first.count(",") else ","
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
            check_width(str(path), len(header))
            rows = list(reader)
        except csv.Error as e:
            raise TinaError(f"{path}, line {reader.line_num}: not a table tina can read ({e}); nothing was "
                            "imported") from None
    return rows_to_read(str(path), header, rows, "csv", run)
