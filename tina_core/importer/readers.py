"""`tina import`: make a finished run from another tool's metrics, so it can be analysed (phase
transition, recommended checkpoint, report) beside runs trained here.

Accepted: a tina/TRL ``metrics.jsonl`` (one JSON object per line with a ``step``), a Hugging Face
``trainer_state.json`` (its ``log_history``, e.g. Tina's own TRL 0.15 logs), or a CSV export with a
step column (``step``, W&B's ``_step`` or ``train/global_step``) and one column per metric. Keys
are normalised to TRL 1.x names (see metric_keys). A line without a step is skipped (counted); a
number the index cannot hold (a step of -3 or 2**70, an attempt of 99999999999, a time that is not
one: ``store.records``) refuses the whole file, naming the line, and nothing is imported.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from tina_core.analysis import metric_keys
from tina_core.rundir import RunDir, TinaError, new_run_id, now_iso, runs_root, write_json_atomic
from tina_core.store.records import metrics_problem, number

IMPORTING = ".importing"  # under runs/: imports being built
# UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8" export puts first
TEXT = "utf-8-sig"

# Preferred first: W&B's `_step` counts its own log calls, not optimizer steps.
STEP_COLUMNS = ("train/global_step", "global_step", "step", "_step")
# W&B UI exports name columns "<run name> - <metric>" and add "__MIN"/"__MAX" companions.
_WANDB_PREFIX = re.compile(r"^.+? - (?=[A-Za-z_])")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return number(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


def _step(v: Any) -> int | None:
    f = _number(v)
    return int(f) if f is not None and math.isfinite(f) and f == int(f) else None


def _checked(path: Path, where: str, rec: dict, step: int) -> int:
    """``step``, once the line's numbers are ones the index can hold; else the file is refused."""
    if problem := metrics_problem({**rec, "step": step}):
        raise TinaError(f"{path}, {where}: {problem}; nothing was imported")
    return step


def _merge(rows: list[tuple[int, dict[str, float]]]) -> list[dict]:
    """One record per step (train and eval entries of a step are merged), ascending."""
    by_step: dict[int, dict] = {}
    for step, values in rows:
        by_step.setdefault(step, {}).update(values)
    return [{"step": s, "attempt": 1, **by_step[s]} for s in sorted(by_step)]


def _values(rec: dict, skip: tuple[str, ...], from_text: bool = False) -> dict[str, float]:
    out = {}
    for k, v in metric_keys.normalise_record(rec).items():
        if k in skip or k in metric_keys.RECORD_FIELDS:
            continue
        f = _number(v) if from_text or not isinstance(v, str) else None
        if f is not None:
            out[k] = f
    return out


def read_metrics_jsonl(path: Path) -> tuple[list[dict], int]:
    rows, bad = [], 0
    for n, line in enumerate(path.read_text(encoding=TEXT, errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        step = _step(rec.get("step")) if isinstance(rec, dict) else None
        if step is None:
            bad += 1
            continue
        rows.append((_checked(path, f"line {n}", rec, step), _values(rec, ())))
    return _merge(rows), bad


def read_trainer_state(path: Path) -> tuple[list[dict], dict]:
    try:
        state = json.loads(path.read_text(encoding=TEXT, errors="replace"))
    except ValueError as e:
        raise TinaError(f"{path}: not valid JSON ({e})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise TinaError(f"{path}: expected a trainer_state.json with a 'log_history' list")
    rows = [(_checked(path, f"log_history[{i}]", e, _step(e["step"])), _values(e, ()))
            for i, e in enumerate(history) if isinstance(e, dict) and _step(e.get("step")) is not None]
    extra = {k: state.get(k) for k in ("max_steps", "save_steps", "num_train_epochs",
                                       "train_batch_size") if state.get(k) is not None}
    return _merge(rows), extra


def read_csv(path: Path) -> tuple[list[dict], int]:
    with open(path, newline="", encoding=TEXT, errors="replace") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise TinaError(f"{path}: empty CSV")
        names = {}
        for col in reader.fieldnames:
            if col is None or col.endswith(("__MIN", "__MAX")):
                continue
            names[col] = _WANDB_PREFIX.sub("", col.strip())
        lower = {n.lower(): c for c, n in names.items()}
        step_col = next((lower[s] for s in STEP_COLUMNS if s in lower), None)
        if step_col is None:
            raise TinaError(f"{path}: no step column (expected one of {', '.join(STEP_COLUMNS)}); "
                            f"columns are: {', '.join(reader.fieldnames[:12])}")
        skip = tuple(metric_keys.normalise_key(names[lower[s]]) for s in STEP_COLUMNS if s in lower)
        rows, bad = [], 0
        for rec in reader:
            step = _step(rec.get(step_col))
            if step is None:
                bad += 1
                continue
            values = _values({names[c]: v for c, v in rec.items() if c in names and v != ""}, skip, from_text=True)
            rows.append((_checked(path, f"line {reader.line_num}", {}, step), values))
    return _merge(rows), bad


def read_any(path: Path) -> tuple[str, list[dict], dict]:
    """(format, records, extra run.json fields) of a metrics file in any accepted format."""
    if not path.is_file():
        raise TinaError(f"{path}: no such file")
    fmt = {".csv": "csv", ".jsonl": "metrics.jsonl", ".json": "trainer_state"}.get(path.suffix.lower())
    if fmt is None:  # no telling suffix: look inside
        head = path.read_bytes()[:4096].removeprefix(codecs.BOM_UTF8).lstrip()
        first = head.split(b"\n", 1)[0]
        if head.startswith(b"{"):
            fmt = "metrics.jsonl" if first.rstrip().endswith(b"}") and b'"step"' in first else "trainer_state"
        elif b"," in first:
            fmt = "csv"
        else:
            raise TinaError(f"{path}: unknown format (expected metrics.jsonl, trainer_state.json or a CSV)")
    extra: dict[str, Any] = {}
    if fmt == "csv":
        records, extra["skipped_rows"] = read_csv(path)
    elif fmt == "trainer_state":
        records, extra = read_trainer_state(path)
    else:
        records, extra["skipped_rows"] = read_metrics_jsonl(path)
    if not any(len(r) > 2 for r in records):
        raise TinaError(f"{path}: no metric rows with a step found (read as {fmt})")
    return fmt, records, extra


def import_run(home: Path, path: Path, name: str | None = None) -> RunDir:
    """Make the run in one step: it is built under ``runs/.importing/`` (which nothing lists: only
    ``runs/<id>/`` holding a run.json is a run) and renamed into place once complete, so a crash
    midway never leaves a run with some of its metrics."""
    path = Path(path).expanduser()
    fmt, records, extra = read_any(path)
    if name is None:
        name = path.parent.name if path.stem in ("metrics", "trainer_state") and path.parent.name else path.stem
    root = runs_root(Path(home))
    staging = root / IMPORTING
    staging.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(name)
    while (root / run_id).exists():
        run_id = new_run_id(name)
    rd = RunDir(staging / run_id)
    rd.checkpoints.mkdir(parents=True)
    try:
        last = records[-1]["step"]
        with open(rd.metrics, "w") as f:
            f.write("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        rd.event("imported", source=str(path.resolve()), format=fmt, steps=len(records),
                 skipped_rows=extra.get("skipped_rows", 0))
        rd.event("finished", step=last)
        write_json_atomic(rd.run_json, {
            "run_id": run_id, "name": name, "recipe": None, "created": now_iso(), "hardware": None,
            "device": None, "gpu_count": None, "gpu_hour_usd": None, "command": [],
            "stop_at_step": last, "max_steps": extra.get("max_steps", last),
            "save_steps": extra.get("save_steps"), "dataset_size": None, "imported": True,
            "source": str(path.resolve()), "format": fmt})
        os.rename(rd.path, root / run_id)
    except BaseException:
        shutil.rmtree(rd.path, ignore_errors=True)
        raise
    return RunDir(root / run_id)
