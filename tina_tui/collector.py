"""What the cockpit shows, gathered off the event loop.

``Collector.collect`` runs in a thread worker once a second: it ingests, queries the store and the
run directories, and returns one immutable ``Snapshot`` (``tina_tui.view``, the view model) that the
app posts as a single message.
Widgets never query anything themselves, and show nothing else: the snapshot's text from the runs'
files (names, keys, reasons, log lines) is written out as ``tina_core.terminal`` makes it, so no
escape sequence in it reaches the terminal. Everything derives from the run directories (through the
store), so opening the cockpit after hours away shows all that happened meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tina_core import runstate
from tina_core.alerts import ALERT_EVENTS, event_text
from tina_core.caches import Cache
from tina_core.events import Kind, is_kind
from tina_core.rundir import FileStamp, JsonlTail, RunDir, RunFiles, RunInfo, TinaError, list_run_dirs, read_whole_lines
from tina_core.store.guard import Guarded
from tina_core.sweep.state import engine_may_change
from tina_core.terminal import shown
from tina_tui.view import (CHARTS, Notice, Overlay, OverlayRun, RunView, Snapshot, chart_keys, checkpoint_rows,
                           described, printable_snapshot)

if TYPE_CHECKING:
    from tina_core.analysis.transition import PhaseTransition
    from tina_core.store.index import GpuSample, IndexedCheckpoint
    from tina_tui.view import RunRow

REFRESH_BUDGET_S = 0.2    # per refresh, for ingesting and describing runs beyond the selected one
SERIES_POINTS = 400      # per chart; sparklines bucket these further into columns
LOG_BACKFILL = 64 * 1024  # bytes of train.log shown when a run is first opened
LOG_KEEP = 2000           # lines kept in the log widget


def _marker_key(run_id: str) -> str:
    """The key of a run's phase-marker notices: each change replaces the last one shown."""
    return f"marker:{run_id}"


class FileTail:
    """Incremental reader of one growing text file (toolong's pattern: remember the offset, read
    only whole new lines, start over if the file shrank)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset: int | None = None

    def read(self) -> tuple[list[str], bool]:
        """(new complete lines, reset) where reset means the caller should drop what it had."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return [], False
        reset = False
        if self.offset is None or size < self.offset:
            self.offset, reset = max(0, size - LOG_BACKFILL), True
        if size == self.offset:
            return [], reset
        skip_partial = reset and self.offset > 0
        data, self.offset = read_whole_lines(self.path, self.offset, size)
        if not data:
            return [], reset
        lines = data.decode(errors="replace").splitlines()
        if skip_partial:  # backfill started mid-line
            lines = lines[1:]
        return lines[-LOG_KEEP:], reset


@dataclass(frozen=True)
class _Queried:
    """What the index says about the run in view (kept while its files stay as ingested)."""

    series: dict[str, list[tuple[float, float]]]
    epoch: list[tuple[float, float]]
    phase: PhaseTransition | None
    checkpoints: list[IndexedCheckpoint]
    system: list[GpuSample]
    detail: dict[str, list[tuple[float, float]]]
    chart_keys: dict[str, str]


class Collector:
    """Gathers snapshots. Holds the tails' offsets and the caches between refreshes; one collect
    at a time."""

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.clock = clock
        self._lock = threading.Lock()
        self._store = None
        self._store_error: str | None = None
        self._index_notes: list[str] = []  # what the index did unasked (a file set aside), to announce
        # run rows as shown (printable_snapshot), by the row they were made from: a kept row's is kept
        self._shown: dict[int, tuple[RunRow, RunRow]] = {}
        # Run objects by run: a run that is not live is described again only when its files, its
        # heartbeat or the index's hold of them changed (the clock moves a live run's figures).
        self._runs: Cache[str, RunRow] = Cache("collector.runs", None)
        # The run in view as the index answered it, while its files stay as they were: a live run
        # between its steps (Tina logs one a minute) asks nothing again.
        self._views: Cache[str, tuple[int, _Queried]] = Cache("collector.view", 1)
        self._view_version = 0
        # The marked runs' overlay while none of their files moved and the detail metric is the
        # same: a live run's refresh between its steps asks nothing for the runs it is compared with.
        self._overlays: Cache[str, Overlay] = Cache("collector.overlay", 1)
        self.pending = False
        self._log: FileTail | None = None
        self._events: dict[str, JsonlTail] = {}  # each run's events since the cockpit first saw it
        self._phase_status: dict[str, str] = {}
        self._states: dict[str, tuple[str | None, bool]] = {}  # run -> (state, orphaned)

    def _open_store(self):
        """The store, or None while it cannot be opened (the run directories still answer)."""
        if self._store is None:
            try:
                from tina_core.store.index import Store

                self._store = Store(self.home)
                self._store.on_note = self._index_notes.append
            except Exception as e:
                self._store_error = f"index unavailable: {e}"
                return None
        return self._store

    def collect(self, selected: str | None, detail_key: str | None = None,
                marks: dict[str, int] | None = None) -> Snapshot:
        """One snapshot of the workspace; ``detail_key``: a metric wanted at full resolution;
        ``marks``: the runs marked for the overlay, with their glyphs."""
        marks = marks or {}
        with self._lock:  # the tails' offsets and caches are shared state
            t0 = time.perf_counter()
            self._store_error = None
            index = Guarded(self._open_store())
            dirs = list_run_dirs(self.home)
            files = {rd.run_id: RunFiles.of(rd) for rd in dirs}
            if selected not in files:  # none yet, or it has gone: the newest run
                selected = dirs[-1].run_id if dirs else None
            # One connection for the refresh, opened only once something needs it: a refresh with
            # nothing new never touches the database.
            with index.batch():
                deferred = self._ingest(index, files, selected, t0, marks)
                snap = self._collect(index, selected, dirs, files, detail_key, deferred, t0)
                snap.overlay = self._overlay(index, marks, snap.runs, files, detail_key)
            snap.error = snap.error or index.error or self._store_error
            snap.notices += [Notice("warning", note) for note in self._index_notes]
            self._index_notes.clear()
            snap = printable_snapshot(snap, self._shown)
            snap.took_s = time.perf_counter() - t0
            return snap

    def _ingest(self, index: Guarded, files: dict[str, RunFiles], selected: str | None, t0: float,
                marks: dict[str, int]) -> set[str]:
        """Ingest the runs whose files moved since the store last ingested them (a failed ingest
        is not recorded, so it is tried again): the run in view first, then the others while the
        budget lasts. A first index build of a big workspace shows the run in view at once; the
        rest fills in over the next refreshes. Returns the runs left for later."""
        from tina_core.store.index import Store

        deferred: set[str] = set()
        changed = [rid for rid, f in files.items() if index.available and not index.is_current(rid, f)]
        others = 0  # at least one besides the selected goes in each time, however slow the machine
        for rid in sorted(changed, key=lambda r: (r != selected, r not in marks)):  # then the marked ones
            if rid != selected and others and time.perf_counter() - t0 > REFRESH_BUDGET_S:
                deferred.add(rid)
                continue
            others += rid != selected
            index.ask(Store.ingest, [rid])
        return deferred

    def _describe(self, index: Guarded, rd: RunDir, now: float, files: RunFiles, *,
                  cached_only: bool = False) -> tuple[RunRow, str]:
        """The run object, reused while the run is not live and what it was made from is the same;
        and how: "kept", "described" now, or "late" (left for the next refresh)."""
        from tina_core.report import runs as runs_mod

        rid = rd.run_id
        made_from = (files, FileStamp.of(rd.supervisor), index.is_current(rid, files))
        hit = self._runs.get(rid)
        if hit is not None and hit.version == made_from and not runstate.is_live(hit.value["state"]) \
                and not engine_may_change(hit.value):
            return hit.value, "kept"
        if cached_only:  # over this refresh's budget: the last known row, or the name for now
            return (hit.value if hit else runs_mod.stub(rd, "...", pending=True)), "late"
        failures = index.failures
        run: RunRow
        try:
            run = runs_mod.describe(self.home, rd, index, now=now)
        except Exception as e:  # one unreadable run must not hide the others
            run = runs_mod.stub(rd, "unreadable", error=f"{type(e).__name__}: {e}")
        if index.failures != failures:  # partly from the run directory alone: not as the index would say
            made_from = (files, made_from[1], False)
        self._runs.put(rid, made_from, run)
        return run, "described"

    def _collect(self, index: Guarded, selected: str | None, dirs: list[RunDir], files: dict[str, RunFiles],
                 detail_key: str | None, deferred: set[str], start: float) -> Snapshot:
        notices: list[Notice] = []
        error = None
        now = self.clock()
        ids = [rd.run_id for rd in dirs]
        # The selected run first, then the others while the refresh's budget lasts (ingesting
        # counts against it too); rows not described yet are filled in by the refreshes that
        # follow (a big workspace's first frame shows at once instead of after every run is read).
        order = sorted(range(len(dirs)), key=lambda i: dirs[i].run_id != selected)
        rows: dict[int, RunRow] = {}
        described = 0  # besides the selected: at least one each time, however slow the machine
        for i in order:
            rid = dirs[i].run_id
            over = (described and time.perf_counter() - start > REFRESH_BUDGET_S and rid != selected) \
                or rid in deferred
            rows[i], how = self._describe(index, dirs[i], now, files[rid], cached_only=over)
            described += rid != selected and how == "described"
            notices += self._new_events(dirs[i]) + self._run_notices(rows[i])
        run_list = [rows[i] for i in range(len(dirs))]
        # a run shown by its name only asks for the next refresh at once; one shown as it was
        # waits for the next tick (live runs would otherwise keep the cockpit refreshing)
        self.pending = bool(deferred) or any(r.get("pending") for r in run_list)
        self._runs.clear(lambda rid: rid not in files)
        view = None
        if selected is not None:
            run = run_list[ids.index(selected)]
            try:
                view = self._view(index, run, files[selected], detail_key)
            except (TinaError, OSError, ValueError) as e:
                error = f"{selected}: {e}"
        return Snapshot(runs=run_list, view=view, notices=notices, error=error)

    def report(self, run_ids: list[str]) -> dict[str, Any]:
        """``tina report``'s report over these runs (every run when none), through this cockpit's
        store, between two refreshes (the ablation table, ``T``)."""
        from tina_core.report.table import build_report

        with self._lock:
            return shown(build_report(self.home, run_ids, store=self._open_store()))

    def _overlay(self, index: Guarded, marks: dict[str, int], runs: list[RunRow], files: dict[str, RunFiles],
                 detail_key: str | None) -> Overlay | None:
        """The marked runs' charted series and transitions, once two or more are marked."""
        from tina_core.store.index import Store

        by_id = {r["run_id"]: r for r in runs}
        marked = [(rid, mark) for rid, mark in marks.items() if rid in by_id and not by_id[rid].get("pending")]
        if len(marked) < 2:
            return None
        made_from = tuple((rid, mark, files[rid], index.is_current(rid, files[rid]),
                           repr(by_id[rid].get("phase_transition"))) for rid, mark in marked) + (detail_key,)
        hit = self._overlays.get("overlay", made_from)
        if hit is not None:
            return hit.value

        def points(pts: list | None) -> list[tuple[float, float]]:
            return [(float(s), float(v)) for s, v in pts or [] if v is not None]

        failures = index.failures
        out = []
        for rid, mark in marked:
            run = by_id[rid]
            many = index.ask(Store.metric_series_many, rid, [k for k, _ in CHARTS], max_points=SERIES_POINTS) or {}
            detail = points(index.ask(Store.metric_series, rid, detail_key, max_points=None)) if detail_key else []
            phase = run["phase_transition"] if described(run) else None
            out.append(OverlayRun(rid, str(run["name"] or rid), mark, phase,
                                  {k: points(many.get(k)) for k, _ in CHARTS}, detail))
        self._view_version += 1
        overlay = Overlay(tuple(out), version=self._view_version)
        if index.failures == failures:  # never kept when the index did not answer
            self._overlays.put("overlay", made_from, overlay)
        return overlay

    def _query(self, index: Guarded, run: RunRow, detail_key: str | None) -> _Queried:
        from tina_core.report.runs import LIVE_PHASE_MAX_AGE_S
        from tina_core.store.index import Store

        rid = run["run_id"]

        def points(pts: list | None) -> list[tuple[float, float]]:
            return [(float(s), float(v)) for s, v in pts or [] if v is not None]

        age = LIVE_PHASE_MAX_AGE_S if runstate.is_live(run["state"]) else 0.0
        d = run if described(run) else None
        phase = index.ask(Store.phase, rid, max_age_s=age) if index.available else d and d["phase_transition"]
        keys = chart_keys(phase or {"watch": d and d["watch"]})  # another tool's runs name their rewards
        many = index.ask(Store.metric_series_many, rid, [*keys.values(), "epoch"], max_points=SERIES_POINTS) or {}
        series = {k: points(many.get(keys[k])) for k, _ in CHARTS}
        epoch = points(many.get("epoch"))
        detail = {}
        if detail_key:
            detail[detail_key] = points(index.ask(Store.metric_series, rid, keys.get(detail_key, detail_key),
                                                  max_points=None))
        # no system.jsonl (a CPU run): nothing to ask for
        system = (index.ask(Store.system_latest, rid) or []) if (self.home / "runs" / rid / "system.jsonl").exists() else []
        return _Queried(series=series, epoch=epoch, phase=phase,
                        checkpoints=index.ask(Store.checkpoints, rid) or [], system=system, detail=detail,
                        chart_keys=keys)

    def _view(self, index: Guarded, run: RunRow, files: RunFiles, detail_key: str | None = None) -> RunView:
        rid = run["run_id"]
        rd = RunDir(self.home / "runs" / rid)
        made_from = (files, detail_key, index.is_current(rid, files))
        hit = self._views.get(rid, made_from)
        if hit is None and not index.available:  # the index is busy or damaged: as it last said
            hit = self._views.get(rid)
        if hit is None:
            failures = index.failures
            queried = self._query(index, run, detail_key)
            if index.failures != failures:  # asked again next time
                made_from = (files, detail_key, False)
            self._view_version += 1
            version = self._view_version
            self._views.put(rid, made_from, (version, queried))
        else:
            version, queried = hit.value
        pick = run["checkpoint_pick"] if described(run) else None
        ckpts = checkpoint_rows(run, queried.checkpoints, queried.series, queried.epoch, queried.phase,
                                pick and pick["recommended"], pick and pick["best_evaluated"])
        if self._log is None or self._log.path != rd.train_log:
            self._log = FileTail(rd.train_log)
        lines, reset = self._log.read()
        return RunView(run=run, series=queried.series, phase=queried.phase, checkpoints=ckpts, system=queried.system, log_lines=lines, log_reset=reset,
                       detail=queried.detail, version=version,
                       chart_keys=queried.chart_keys)

    def _new_events(self, rd: RunDir) -> list[Notice]:
        tail = self._events.get(rd.run_id)
        if tail is None:
            self._events[rd.run_id] = JsonlTail(rd.events, from_end=True)
            return []
        out: list[Notice] = []
        new = tail.read()[0]
        name = (RunInfo.read(rd).name or rd.run_id) if new else rd.run_id  # run.json read only when needed
        for ev in new:
            said = event_text(name, ev)
            if said:
                out.append(Notice(*said, bell=is_kind(ev, *ALERT_EVENTS),
                                  key=_marker_key(rd.run_id) if is_kind(ev, Kind.TRANSITION) else None))
        return out

    def _run_notices(self, run: RunRow) -> list[Notice]:
        """Changes no event announces, for every run, seen since the last refresh: a supervisor that
        died (kill -9, reboot: it could not write one) and the phase marker appearing or firming on a
        run no supervisor watches."""
        if not described(run) and run.get("pending"):
            return []
        d = run if described(run) else None  # an unreadable run: its state alone
        rid, name, out = run["run_id"], run["name"], []
        state = (run["state"], bool(d and d["orphan_trainer_pid"]))
        was, self._states[rid] = self._states.get(rid), state
        if was is not None and runstate.is_live(was[0]) and not was[1] and state[1]:
            out.append(Notice("error", f"{name}: its supervisor is gone; the trainer trains on unsupervised, its time "
                                       "counted: r takes it over, s stops it at a checkpoint"))
        elif was is not None and runstate.is_live(was[0]) and state[0] == "crashed":
            out.append(Notice("error", f"{name}: its supervisor is gone (crashed at step {d and d['step']}); "
                                       "r resumes from the latest checkpoint", bell=True))
        p = (d and d["phase_transition"]) or {}
        status = p.get("status") or "none"
        before = self._phase_status.get(rid)
        self._phase_status[rid] = status
        # a supervised run's watch records each change as a `transition` event, announced above
        if before is not None and before != status and status != "none" and (d and d["supervisor"]) != "alive":
            out.append(Notice("warning", f"{name}: phase transition {status} at step {p.get('step')} "
                                         f"({p.get('signal')} {p.get('direction', '')})", bell=True,
                              key=_marker_key(rid)))
        return out

