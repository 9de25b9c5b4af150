"""`tina import`, `tina report`, `tina diff` and `tina ingest` as printed on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from tina_core.analysis.signals import short
from tina_core.cli.output import json_text
from tina_core.importer.readers import import_run
from tina_core.report import run_cache
from tina_core.report.runs import list_runs
from tina_core.report.table import build_report, render_csv, render_text, write_plots
from tina_core.rundir import RunInfo, TinaError, write_error_text
from tina_core.store.index import Store
from tina_core.terminal import printable, shown


def cli_import(home: Path, paths: Sequence[Path] | Path, name: str | None = None, *, run: str | None = None,
               watch: Sequence[str] = ()) -> int:
    from tina_core.cli.runs import why_lines

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rd = import_run(home, paths, name, run=run, watch=list(watch) or None)
    store = Store(home)
    store.ingest([rd.run_id])
    info = RunInfo.read(rd)
    detail = rd.read_events()[0].get("detail")
    # what the file says (a trackio run's name, its headers) is written out (tina_core.terminal)
    described = shown(list_runs(home, store, run_dirs=[rd])[0])
    ph = described["phase_transition"]
    print(printable(f"imported {', '.join(map(str, paths))} ({info.extra.get('format')}{': ' + detail if detail else ''}) as "
                    f"{rd.run_id}: {len(store.metric_keys(rd.run_id))} metrics over {info.stop_at_step} steps"))
    if ph and ph["status"] != "none":
        print(f"phase transition: {ph['status']} at step {ph['step']} ({short(ph['signal'])}, "
              f"{ph['confidence']} confidence)")
    else:
        print("phase transition: none")
    for line in why_lines(described):
        print(line)
    return 0


def cli_report(home: Path, fmt: str = "table", plots: Path | None = None, refs: Sequence[str] = (),
               sweep: str | None = None) -> int:
    if plots is not None:  # a folder that cannot be one is said before anything is printed
        try:
            Path(plots).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TinaError(f"--plots {plots}: cannot use it as a folder ({e.strerror or e})") from None
    if sweep is not None:
        from tina_core.sweep.record import runs_of

        refs = [*refs, *runs_of(home, sweep)]
    report = build_report(home, refs)
    if fmt == "json":
        sys.stdout.write(json_text(report) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render_csv(report))
    else:
        sys.stdout.write(render_text(report, markdown=fmt == "md"))
    if plots is not None:
        try:
            for p in write_plots(report, Store(home), Path(plots)):
                print(f"wrote {p}", file=sys.stderr)
        except OSError as e:
            raise TinaError(f"--plots {plots}: {write_error_text(e)}") from None
    return 0


def cli_diff(home: Path, refs: list[str], as_json: bool = False) -> int:
    from tina_core.recipe import diff

    sides, diffs = diff.diff_refs(home, refs)
    if as_json:
        sys.stdout.write(json_text(diff.as_json(sides, diffs)) + "\n")
    else:
        sys.stdout.write(diff.render_text(sides, diffs))
    return 0


def cli_ingest(home: Path, rebuild: bool) -> int:
    store = Store(home)
    if rebuild:
        run_cache.clear(home)  # everything described again from the rebuilt index
    stats = store.rebuild() if rebuild else store.ingest()
    total_q = store.query("SELECT count(*) FROM quarantine")[0][0]
    print(f"{'rebuilt' if rebuild else 'ingested'} {stats.runs} runs ({stats.updated} with new data): "
          f"{stats.lines} lines, {stats.rows} rows, {stats.quarantined} lines quarantined "
          f"in {stats.seconds:.2f}s -> {store.path}")
    if total_q:
        print(f"{total_q} malformed lines are set aside in the quarantine table "
              f"(SELECT * FROM quarantine)", flush=True)
    return 0


