"""`tina import`, `tina report`, `tina diff` and `tina ingest` as printed on a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tina_core.importer.readers import import_run
from tina_core.report.table import build_report, render_csv, render_text, write_plots
from tina_core.store.index import Store


def cli_import(home: Path, path: Path, name: str | None = None) -> int:
    rd = import_run(home, path, name)
    store = Store(home)
    store.ingest([rd.run_id])
    info = rd.info()
    ph = store.phase(rd.run_id)
    print(f"imported {path} ({info['format']}) as {rd.run_id}: {len(store.metric_keys(rd.run_id))} "
          f"metrics over {info['stop_at_step']} steps")
    if ph and ph["status"] != "none":
        print(f"phase transition: {ph['status']} at step {ph['step']} ({ph['signal']})")
    return 0


def cli_report(home: Path, fmt: str = "table", plots: Path | None = None, refs: list[str] = ()) -> int:
    report = build_report(home, refs)
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render_csv(report))
    else:
        sys.stdout.write(render_text(report, markdown=fmt == "md"))
    if plots is not None:
        for p in write_plots(report, Store(home), Path(plots)):
            print(f"wrote {p}", file=sys.stderr)
    return 0


def cli_diff(home: Path, refs: list[str], as_json: bool = False) -> int:
    from tina_core.recipe import diff

    sides, diffs = diff.diff_refs(home, refs)
    if as_json:
        sys.stdout.write(json.dumps(diff.as_json(sides, diffs), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(diff.render_text(sides, diffs))
    return 0


def cli_ingest(home: Path, rebuild: bool) -> int:
    store = Store(home)
    stats = store.rebuild() if rebuild else store.ingest()
    total_q = store.query("SELECT count(*) FROM quarantine")[0][0]
    print(f"{'rebuilt' if rebuild else 'ingested'} {stats.runs} runs ({stats.updated} with new data): "
          f"{stats.lines} lines, {stats.rows} rows, {stats.quarantined} lines quarantined "
          f"in {stats.seconds:.2f}s -> {store.path}")
    if total_q:
        print(f"{total_q} malformed lines are set aside in the quarantine table "
              f"(SELECT * FROM quarantine)", flush=True)
    return 0


