"""What the cockpit shows, gathered off the event loop.

``Collector.collect`` runs in a thread worker once a second: it ingests, queries the store and the
run directories, and returns one immutable ``Snapshot`` that the app posts as a single message.
Widgets never query anything themselves. Everything derives from the run directories (through the
store), so opening the cockpit after hours away shows all that happened meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tina_core.alerts import ALERT_EVENTS, event_text
from tina_core.rundir import RunDir, TinaError, list_run_dirs

FORMAT = "rewards/format_reward/mean"
LENGTH = "completions/mean_length"
ACCURACY = "rewards/accuracy_reward/mean"

# (key, short label) of the charted metrics, in display order: the two format signals first.
CHARTS: tuple[tuple[str, str], ...] = (
    (FORMAT, "format"),
    (LENGTH, "length"),
    (ACCURACY, "accuracy"),
    ("reward", "reward"),
    ("kl", "kl"),
    ("learning_rate", "lr"),
)
REFRESH_BUDGET_S = 0.2    # per refresh, for ingesting and describing runs beyond the selected one
SERIES_POINTS = 400      # per chart; sparklines bucket these further into columns
LOG_BACKFILL = 64 * 1024  # bytes of train.log shown when a run is first opened
LOG_KEEP = 2000           # lines kept in the log widget
TINA_PROMPTS_PER_STEP = 8  # 2 GPUs x 4 accumulation steps x G completions / G, in every Tina recipe

@dataclass(frozen=True)
class Notice:
    severity: str
    text: str
    bell: bool = False  # an alert (tina_core.alerts.ALERT_EVENTS): the terminal's bell rings too


@dataclass
class RunView:
    """The selected run in full."""

    run: dict[str, Any]
    series: dict[str, list[tuple[float, float]]]
    phase: dict[str, Any] | None
    recommendation: dict[str, Any] | None
    checkpoints: list[dict[str, Any]]
    system: list[dict[str, Any]]
    log_lines: list[str]
    log_reset: bool            # True: replace the log widget's content, else append
    # Every logged step of the metric the detail view shows (the charts get a summary).
    detail: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def step_range(self) -> tuple[float, float]:
        """Steps spanned by the charts: from 0 to the furthest of trained and stop_at steps, so a
        live run fills in from the left and the marker column never moves as steps arrive."""
        hi = max([self.run.get("step") or 0, self.run.get("stop_at_step") or 0]
                 + [s for pts in self.series.values() for s, _ in pts[-1:]])
        return 0.0, float(max(hi, 1))


@dataclass
class Snapshot:
    runs: list[dict[str, Any]]
    view: RunView | None
    notices: list[Notice] = field(default_factory=list)
    error: str | None = None
    took_s: float = 0.0


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
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return [], reset
        skip_partial = reset and self.offset > 0
        self.offset += end + 1
        lines = data[: end + 1].decode(errors="replace").splitlines()
        if skip_partial:  # backfill started mid-line
            lines = lines[1:]
        return lines[-LOG_KEEP:], reset


class EventTail:
    """New lifecycle events per run since the cockpit first saw that run."""

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        try:
            self.offset = rd.events.stat().st_size
        except FileNotFoundError:
            self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.rd.events.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            return []
        with self.rd.events.open("rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for raw in data[: end + 1].splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def _nearest_at_or_before(points: list[tuple[float, float]], step: float) -> float | None:
    best = None
    for s, v in points:
        if s <= step:
            best = v
        else:
            break
    return best if best is not None else (points[0][1] if points else None)


def checkpoint_rows(run: dict[str, Any], store_ckpts: list[dict[str, Any]],
                    series: dict[str, list[tuple[float, float]]], epoch_series: list[tuple[float, float]],
                    phase: dict[str, Any] | None, recommended: int | None,
                    best: int | None = None) -> list[dict[str, Any]]:
    """One row per checkpoint with everything the table shows, joined from the run object (cost at
    the checkpoint), the store (evals, avg) and the metric series (format/length/epoch there)."""
    by_step: dict[int, dict[str, Any]] = {}
    for c in run.get("checkpoints") or []:
        by_step.setdefault(int(c["step"]), {}).update(cost_usd_at=c.get("cost_usd_at"), evals=c.get("evals") or {})
    for c in store_ckpts:
        row = by_step.setdefault(int(c["step"]), {})
        if c.get("evals"):
            row["evals"] = c["evals"]
        if c.get("avg") is not None:
            row["avg"] = c["avg"]
    phase_step = phase.get("step") if phase and phase.get("status") in ("tentative", "confirmed") else None
    # Without a logged epoch (an imported run): Tina's 8 prompts per optimizer step.
    epoch_steps = (run.get("dataset_size") or 0) / TINA_PROMPTS_PER_STEP
    rows = []
    for step in sorted(by_step):
        row = by_step[step]
        evals = row.get("evals") or {}
        avg = row.get("avg")
        if avg is None and evals:
            avg = sum(evals.values()) / len(evals)
        epoch = _nearest_at_or_before(epoch_series, step) if epoch_series else None
        if epoch is None and epoch_steps:
            epoch = step / epoch_steps
        rows.append({
            "step": step,
            "epoch_pct": None if epoch is None else 100.0 * epoch,
            "format": _nearest_at_or_before(series.get(FORMAT, []), step),
            "length": _nearest_at_or_before(series.get(LENGTH, []), step),
            # "at" counts as before: the recommendation is the latest checkpoint at or before it
            "phase": None if phase_step is None else
            "before" if step < phase_step else "at" if step == phase_step else "after",
            "cost_usd_at": row.get("cost_usd_at"),
            "evals": evals,
            "avg": avg,
            "recommended": step == recommended,
            "best": step == best,
        })
    if rows:
        # The base model first, as Tina reports gains over it; e on it evaluates the base model.
        base = (run.get("base") or {}).get("evals") or {}
        rows.insert(0, {"step": "base", "epoch_pct": None, "format": None, "length": None, "phase": None,
                        "cost_usd_at": None, "evals": base, "avg": sum(base.values()) / len(base) if base else None,
                        "recommended": False, "best": False})
    return rows


LIVE = ("running", "stopping")


def _file_sig(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return None


def run_signature(rd: RunDir, *, with_heartbeat: bool) -> tuple:
    """Changes whenever anything the cockpit shows about a run could have changed."""
    names = ("run.json", "events.jsonl", "metrics.jsonl", "system.jsonl") + (
        ("supervisor.json",) if with_heartbeat else ())
    sig: list[Any] = [_file_sig(rd.path / name) for name in names]
    # A new checkpoint directory changes checkpoints/; its completion marker changes the newest one.
    try:
        names = os.listdir(rd.checkpoints)
        newest = max(names, key=lambda n: int(n.rpartition("-")[2]) if n.rpartition("-")[2].isdigit() else -1,
                     default=None)
        sig.append((len(names), newest, newest and os.stat(rd.checkpoints / newest).st_mtime_ns))
    except (FileNotFoundError, ValueError):
        sig.append(None)
    return tuple(sig)


class Collector:
    """Gathers snapshots. Holds the tails' offsets between refreshes; one collect at a time."""

    def __init__(self, home: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.clock = clock
        self._lock = threading.Lock()
        self._store = None
        self._store_error: str | None = None
        self._cycle_store = None
        self._session: contextlib.ExitStack | None = None
        self._in_session = False
        self._described: dict[str, tuple[tuple, dict[str, Any]]] = {}
        self._view_cache: tuple[tuple, tuple] | None = None
        self._ingested: dict[str, tuple] = {}
        self.pending = False
        self._log: FileTail | None = None
        self._events: dict[str, EventTail] = {}
        self._phase_status: dict[str, str] = {}
        self._states: dict[str, tuple[str | None, bool]] = {}  # run -> (state, orphaned)

    def _open_store(self):
        """The store, or None while it cannot be opened (the run directories still answer)."""
        if self._store is None:
            try:
                from tina_core.store.index import Store

                self._store = Store(self.home)
            except Exception as e:
                self._store_error = f"index unavailable: {e}"
                return None
        return self._store

    def _store_in_session(self):
        """The store with this refresh's connection open. One connection for the rest of the
        refresh, opened only once something needs it: a refresh with nothing new never touches
        the database."""
        store = self._cycle_store
        if store is not None and self._session is not None and not self._in_session:
            self._session.enter_context(store.session())
            self._in_session = True
        return store

    def _ask(self, method: str, *args: Any, default: Any = None, **kw: Any) -> Any:
        store = self._store_in_session()
        if store is None:
            return default
        try:
            return getattr(store, method)(*args, **kw)
        except Exception as e:  # a locked or damaged index must not blank the cockpit
            self._store_error = f"index: {method}: {e}"
            return default

    def collect(self, selected: str | None, detail_key: str | None = None) -> Snapshot:
        """One snapshot of the workspace; ``detail_key``: a metric wanted at full resolution."""
        with self._lock:  # the tails' offsets and caches are shared state
            t0 = time.perf_counter()
            self._store_error = None
            self._cycle_store = store = self._open_store()
            dirs = list_run_dirs(self.home)
            sigs = {rd.run_id: run_signature(rd, with_heartbeat=False) for rd in dirs}
            changed = [rid for rid, sig in sigs.items() if self._ingested.get(rid) != sig]
            if selected not in sigs:  # none yet, or it has gone: the newest run
                selected = dirs[-1].run_id if dirs else None
            deferred: set[str] = set()
            try:
                with contextlib.ExitStack() as self._session:
                    self._in_session = False
                    if store is not None and changed:
                        # Only the runs whose files moved, in this refresh's one connection: the
                        # run in view first, then the others while the budget lasts. A first
                        # index build of a big workspace shows the run in view at once; the rest
                        # fills in over the next refreshes.
                        for rid in sorted(changed, key=lambda r: r != selected):
                            if rid != selected and time.perf_counter() - t0 > REFRESH_BUDGET_S:
                                deferred.add(rid)
                                continue
                            self._ask("ingest", [rid])
                            self._ingested[rid] = sigs[rid]
                    snap = self._collect(selected, dirs, sigs, detail_key, deferred, t0)
            except TinaError as e:  # the database is busy: show the run directories alone
                self._store_error = str(e)
                self._cycle_store = None
                snap = self._collect(selected, dirs, sigs, detail_key, started=t0)
            finally:
                self._session = None
            snap.error = snap.error or self._store_error
            snap.took_s = time.perf_counter() - t0
            return snap

    def _describe(self, rd: RunDir, now: float, files_sig: tuple, *, cached_only: bool = False) -> dict[str, Any]:
        """The run object, reused while the run is not live and its files have not changed (the
        clock only moves the figures of a live run)."""
        from tina_core.report import runs as runs_mod

        sig = (files_sig, _file_sig(rd.path / "supervisor.json"))  # files_sig: run_signature without it
        hit = self._described.get(rd.run_id)
        if hit is not None and hit[0] == sig and hit[1].get("state") not in LIVE:
            return hit[1]
        if cached_only:  # over this refresh's budget: the last known row, or the name for now
            return hit[1] if hit else {"run_id": rd.run_id, "name": rd.info().get("name") or rd.run_id,
                                       "state": "...", "pending": True}
        try:
            run = runs_mod.describe(self.home, rd, store=self._store_in_session(), now=now)
        except Exception as e:  # one unreadable run must not hide the others
            run = {"run_id": rd.run_id, "name": rd.info().get("name") or rd.run_id, "state": "unreadable",
                   "error": f"{type(e).__name__}: {e}"}
        self._described[rd.run_id] = (sig, run)
        return run

    def _collect(self, selected: str | None, dirs: list[RunDir], sigs: dict[str, tuple],
                 detail_key: str | None = None, deferred: set[str] = frozenset(),
                 started: float | None = None) -> Snapshot:
        notices: list[Notice] = []
        error = None
        now = self.clock()
        ids = [rd.run_id for rd in dirs]
        # The selected run first, then the others while the refresh's budget lasts (ingesting
        # counts against it too); rows not described yet are filled in by the refreshes that
        # follow (a big workspace's first frame shows at once instead of after every run is read).
        start = time.perf_counter() if started is None else started
        order = sorted(range(len(dirs)), key=lambda i: dirs[i].run_id != selected)
        rows: dict[int, dict[str, Any]] = {}
        for i in order:
            rid = dirs[i].run_id
            over = (time.perf_counter() - start > REFRESH_BUDGET_S and rid != selected) or rid in deferred
            rows[i] = self._describe(dirs[i], now, sigs[rid], cached_only=over)
            notices += self._new_events(dirs[i]) + self._run_notices(rows[i])
        run_list = [rows[i] for i in range(len(dirs))]
        self.pending = bool(deferred) or any(r.get("pending") for r in run_list)
        self._described = {k: v for k, v in self._described.items() if k in sigs}
        view = None
        if selected is not None:
            run = run_list[ids.index(selected)]
            try:
                view = self._view(run, sigs[selected], detail_key)
            except (TinaError, OSError, ValueError) as e:
                error = f"{selected}: {e}"
        return Snapshot(runs=run_list, view=view, notices=notices, error=error)

    def _series(self, rid: str, keys: list[str]) -> dict[str, list[tuple[float, float]]]:
        many = self._ask("metric_series_many", rid, keys, max_points=SERIES_POINTS, default=None) or {}
        return {k: [(float(s), float(v)) for s, v in many.get(k) or [] if v is not None] for k in keys}

    def _view(self, run: dict[str, Any], files_sig: tuple, detail_key: str | None = None) -> RunView:
        rid = run["run_id"]
        rd = RunDir(self.home / "runs" / rid)
        key = (rid, files_sig, self._cycle_store is not None, detail_key)
        if self._view_cache is None or self._view_cache[0] != key:
            from tina_core.report.runs import LIVE_PHASE_MAX_AGE_S

            series = self._series(rid, [k for k, _ in CHARTS] + ["epoch"])
            epoch = series.pop("epoch")
            age = LIVE_PHASE_MAX_AGE_S if run.get("state") in LIVE else 0.0
            phase = self._ask("phase", rid, max_age_s=age, default=run.get("phase_transition"))
            rec = self._ask("recommendation", rid, max_age_s=age)
            detail = {}
            if detail_key:
                full = self._ask("metric_series", rid, detail_key, max_points=None, default=None) or []
                detail[detail_key] = [(float(s), float(v)) for s, v in full if v is not None]
            queried = (series, epoch, phase, rec,
                       self._ask("checkpoints", rid, default=[]) or [],
                       # no system.jsonl (a CPU run), nothing to ask for
                       (self._ask("system_latest", rid, default=[]) or []) if rd.system.exists() else [],
                       detail)
            if not self._store_error:  # never cache a failed query
                self._view_cache = (key, queried)
        else:
            queried = self._view_cache[1]
        series, epoch, phase, rec, store_ckpts, system, detail = queried
        recommended = (rec or {}).get("recommended", run.get("recommended_checkpoint"))
        ckpts = checkpoint_rows(run, store_ckpts, series, epoch, phase, recommended,
                                (rec or {}).get("best_evaluated", run.get("best_evaluated_checkpoint")))
        if self._log is None or self._log.path != rd.train_log:
            self._log = FileTail(rd.train_log)
        lines, reset = self._log.read()
        return RunView(run=run, series=series, phase=phase, recommendation=rec, checkpoints=ckpts,
                       system=system, log_lines=lines, log_reset=reset, detail=detail)

    def _new_events(self, rd: RunDir) -> list[Notice]:
        tail = self._events.get(rd.run_id)
        if tail is None:
            self._events[rd.run_id] = EventTail(rd)
            return []
        out = []
        name = rd.info().get("name") or rd.run_id
        for ev in tail.read():
            said = event_text(name, ev)
            if said:
                out.append(Notice(*said, bell=ev.get("event") in ALERT_EVENTS))
        return out

    def _run_notices(self, run: dict[str, Any]) -> list[Notice]:
        """Changes no event announces, for every run, seen since the last refresh: a supervisor that
        died (kill -9, reboot: it could not write one) and the phase marker appearing or firming."""
        if run.get("pending"):
            return []
        rid, name, out = run["run_id"], run.get("name", run["run_id"]), []
        state = (run.get("state"), bool(run.get("orphan_trainer_pid")))
        was, self._states[rid] = self._states.get(rid), state
        if was is not None and was[0] in LIVE and not was[1] and state[1]:
            out.append(Notice("error", f"{name}: its supervisor is gone; the trainer trains on unsupervised, its time "
                                       "counted: r takes it over, s stops it at a checkpoint"))
        elif was is not None and was[0] in LIVE and state[0] == "crashed":
            out.append(Notice("error", f"{name}: its supervisor is gone (crashed at step {run.get('step')}); "
                                       "r resumes from the latest checkpoint", bell=True))
        p = run.get("phase_transition") or {}
        status = p.get("status") or "none"
        before = self._phase_status.get(rid)
        self._phase_status[rid] = status
        if before is not None and before != status and status != "none":
            out.append(Notice("warning", f"{name}: phase transition {status} at step {p.get('step')} "
                                         f"({p.get('signal')} {p.get('direction', '')})", bell=True))
        return out

