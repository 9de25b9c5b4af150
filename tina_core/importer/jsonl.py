"""A JSONL metrics log: tina's own ``metrics.jsonl``, or one JSON object per logged step as TRL 1.x
callbacks and scripts write them (``step``, ``global_step``, ``train/global_step`` or W&B's
``_step``; any key spelling). A line that is not an object with a usable step is skipped and
counted."""

from __future__ import annotations

from pathlib import Path

from tina_core.importer.records import Read, checked_step, merge, values
from tina_core.rundir import parse_json

STEP_KEYS = ("step", "global_step", "train/global_step", "_step")


def read(path: Path) -> Read:
    rows, bad = [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line)
        except ValueError:
            bad += 1
            continue
        key = next((k for k in STEP_KEYS if isinstance(rec, dict) and rec.get(k) is not None), None)
        step = checked_step(path, f"line {n}", rec, key) if key else None
        if step is None:
            bad += 1
            continue
        rows.append((step, values(rec, STEP_KEYS)))
    return Read("metrics.jsonl", merge(rows), bad)
