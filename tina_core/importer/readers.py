"""`tina import`: make a finished run from another tool's metrics, so it can be analysed (phase
transition, recommended checkpoint, report) beside runs trained here.

One module per format, each turning its rows into canonical records (importer.records):
``jsonl`` (tina's metrics.jsonl, TRL 1.x-style JSONL), ``trainer_state`` (the HF Trainer's
``trainer_state.json``, any TRL version), ``table`` (CSV/TSV: plain, W&B export, a notebook's
printed progress table), ``notebook`` (the progress table inside an executed ``.ipynb``) and
``trackio`` (a trackio project database). Several files of one run (W&B exports one metric per
panel) are merged by step. This module picks the reader and builds the run directory atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from tina_core.analysis import signals
from tina_core.events import Kind
from tina_core.importer import jsonl, notebook, table, trackio, trainer_state
from tina_core.importer.records import Read, check_width, went_back
from tina_core.rundir import RunDir, TinaError, new_run_id, now_iso, runs_root, write_json_atomic

IMPORTING = ".importing"  # under runs/: imports being built

_BY_SUFFIX = {".csv": "csv", ".tsv": "csv", ".jsonl": "metrics.jsonl", ".json": "trainer_state",
              ".ipynb": "notebook", ".db": "trackio", ".sqlite": "trackio", ".sqlite3": "trackio"}
FORMATS = "metrics.jsonl, trainer_state.json, a CSV/TSV (W&B export, notebook table), an .ipynb or a trackio .db"


def _sniff(path: Path) -> str:
    head = path.read_bytes()[:4096]
    if head.startswith(trackio.SQLITE_MAGIC):
        return "trackio"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    first = text.split("\n", 1)[0]
    if text.startswith("{"):
        if '"cells"' in text and '"nbformat"' in text or '"cells"' in first:
            return "notebook"
        return "metrics.jsonl" if first.rstrip().endswith("}") and '"step"' in first else "trainer_state"
    if "," in first or "\t" in first:
        return "csv"
    raise TinaError(f"{path}: unknown format (expected {FORMATS})")


def read_file(path: Path, run: str | None = None) -> Read:
    """One metrics file in any accepted format; ``run`` picks one run of a file holding several
    (a W&B export, a trackio database)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TinaError(f"{path}: no such file")
    fmt = _BY_SUFFIX.get(path.suffix.lower()) or _sniff(path)
    if fmt == "trainer_state" and path.suffix.lower() == ".json" and _sniff(path) == "notebook":
        fmt = "notebook"
    if fmt == "csv":
        got = table.read(path, run)
    elif fmt == "trainer_state":
        got = trainer_state.read(path)
    elif fmt == "notebook":
        got = notebook.read(path, run)
    elif fmt == "trackio":
        got = trackio.read(path, run)
    else:
        got = jsonl.read(path)
    if not got.records:
        raise TinaError(f"{path}: no metric rows with a step found (read as {fmt})")
    return got


def read_any(paths: Sequence[Path] | Path, run: str | None = None) -> Read:
    """The records of one run from one or more files: files after the first add their metrics to
    the same steps (a later file's value wins)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise TinaError("nothing to import: give a metrics file")
    reads = [read_file(Path(p), run) for p in paths]
    if len(reads) == 1:
        return reads[0]
    by_key: dict[tuple[int, int], dict] = {}
    for r in reads:
        for rec in r.records:
            by_key.setdefault((rec["attempt"], rec["step"]), {}).update(rec)
    extra: dict = {}
    for r in reads:
        extra.update(r.extra)
    return Read("+".join(dict.fromkeys(r.format for r in reads)), [by_key[k] for k in sorted(by_key)],
                sum(r.skipped for r in reads), extra, "; ".join(r.detail for r in reads if r.detail))


def import_run(home: Path, path: Path | Sequence[Path], name: str | None = None, *, run: str | None = None,
               watch: Sequence[str] | None = None) -> RunDir:
    """Make the run in one step: it is built under ``runs/.importing/`` (which nothing lists: only
    ``runs/<id>/`` holding a run.json is a run) and renamed into place once complete, so a crash
    midway never leaves a run with some of its metrics. ``watch``: the signals the phase detector
    watches (a ``watch_changed`` event by ``import``); by default they are chosen automatically."""
    paths = [Path(p).expanduser() for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
    got = read_any(paths, run)
    records = got.records
    keys = sorted({k for r in records for k in r if k not in ("step", "attempt")})
    detail = "; ".join(d for d in (got.detail, went_back(records)) if d)
    check_width(", ".join(map(str, paths)), len(keys), "metrics")  # a JSONL line may hold any number
    chosen = signals.resolve_all(watch, keys) if watch else None
    first = paths[0]
    if name is None:
        name = got.extra.get("name") or (first.parent.name if first.stem in ("metrics", "trainer_state")
                                         and first.parent.name else first.stem)
    root = runs_root(Path(home))
    staging = root / IMPORTING
    staging.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id(name)
    while (root / run_id).exists():
        run_id = new_run_id(name)
    rd = RunDir(staging / run_id)
    rd.checkpoints.mkdir(parents=True)
    sources = [str(p.resolve()) for p in paths]
    try:
        last = max(r["step"] for r in records if r["attempt"] == records[-1]["attempt"])
        with open(rd.metrics, "w") as f:
            f.write("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        rd.event(Kind.IMPORTED, source=sources[0], sources=sources, format=got.format, steps=len(records),
                 skipped_rows=got.skipped, detail=detail)
        if chosen:
            rd.event(Kind.WATCH_CHANGED, signals=chosen, by="import")
        rd.event(Kind.FINISHED, step=last)
        write_json_atomic(rd.run_json, {
            "run_id": run_id, "name": name, "recipe": None, "created": now_iso(), "hardware": None,
            "device": None, "gpu_count": None, "gpu_hour_usd": None, "command": [],
            "stop_at_step": last, "max_steps": got.extra.get("max_steps", last),
            "save_steps": got.extra.get("save_steps"), "logging_steps": got.extra.get("logging_steps"),
            "dataset_size": None, "imported": True, "source": sources[0], "sources": sources,
            "format": got.format})
        os.rename(rd.path, root / run_id)
    except BaseException:
        shutil.rmtree(rd.path, ignore_errors=True)
        raise
    return RunDir(root / run_id)
