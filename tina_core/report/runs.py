"""The run object of `tina ls/status --json` and the TUI: state, progress, cost, phase, checkpoints.

Built from the run directory (the truth) and, when the store is available, from its index for the
phase transition, the recommendation and evaluation scores. Light: no heavy imports.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from tina_core import runstate
from tina_core.analysis import cost, policy
from tina_core.analysis.cost import CostUsd
from tina_core.analysis.pick import BracketPick, CheckpointPick, choose
from tina_core.analysis.transition import PhaseTransition, Watch
from tina_core.events import Kind, last_of, marker, of_kind, since_start
from tina_core.report import run_cache
from tina_core.rundir import RunDir, RunInfo, iter_jsonl, list_run_dirs
from tina_core.store.guard import Guarded
from tina_core.sweep.state import Queue, Sweeps, overlay

if TYPE_CHECKING:
    from tina_core.store.index import Store

class CheckpointEntry(TypedDict):
    step: int
    cost_usd_at: float | None      # training dollars when its step was logged
    evals: dict[str, float]        # task -> score
    resumable: bool                # False: an adapter snapshot pinned at the transition (evaluable only)


class BaseModel(TypedDict):
    evals: dict[str, float]
    avg: float | None


class Evaluation(TypedDict):
    eval_id: str
    checkpoint: int | str | None   # a step, or "base"
    task: str | None
    state: str                     # queued | running | finished | failed | cancelled
    score: float | None
    metric: str | None
    reason: str | None
    gpus: list[int] | None
    why: str | None                # "transition": queued by the stop policy, not a person


class RefusedEvaluation(TypedDict):
    """An evaluation the stop policy did not queue: its projected cost passed what was left of the
    run's budget (an ``eval_refused`` event)."""

    checkpoint: int | str | None   # a step, or "base"
    task: str | None
    projected_usd: float | None
    left_usd: float | None
    budget_usd: float | None


class StopPolicyFields(TypedDict):
    """tina_core.analysis.policy.StopPolicy: the recipe's ``stop`` section and the changes since."""

    stop_at_step: int | None
    after_transition: int | None
    budget_usd: float | None
    evaluate: bool


class Countdown(TypedDict):
    by: str                        # stop_at_step | after_transition | budget_usd: whichever stops first
    stop_step: int | None
    steps_left: int | None
    usd_left: float | None
    waiting: bool                  # after_transition with no confirmed marker yet
    text: str


class StoppedBy(TypedDict):
    by: str | None                 # after_transition | budget_usd | SIGTERM | Ctrl-C | trainer
    reason: str | None


class WriteError(TypedDict):
    file: str | None
    error: str | None
    attempt: int | None
    lost_bytes: int | None


class RunObject(TypedDict):
    """One run, as `tina ls/status --json`, the report and the cockpit see it (design.md's fields
    and a few more; fields are added, never renamed). ARCHITECTURE.md documents each."""

    run_id: str
    name: str
    recipe: str | None
    state: str                     # one of runstate.RUN_STATES
    step: int | None
    stop_at_step: int | None
    max_steps: int | None
    dataset_size: int | None       # its rows (run.json): an epoch's steps where the run logs no epoch
    restarts: int
    attempts: int
    started_at: str | None
    elapsed_s: float
    device: str | None             # None: an imported run's
    gpu_count: int | None
    gpu_hour_usd: float | None
    cpu_hour_usd: float | None
    price_source: str | None
    cost_usd: CostUsd
    usd_per_hour_now: float
    projected_cost_usd: float | None
    seconds_per_step: float | None
    eta_s: float | None
    stalled_s: float | None        # a live run: seconds since its latest step, once far past its pace (no ETA then)
    phase_transition: PhaseTransition | None
    watch: Watch
    recommended_checkpoint: int | None  # checkpoint_pick's, as named before it
    best_evaluated_checkpoint: int | None
    recommendation_disagrees: bool
    checkpoint_pick: CheckpointPick     # which checkpoint (analysis.pick): recommended, best evaluated, the bracket's
    checkpoints: list[CheckpointEntry]
    base: BaseModel
    evals_pending: int
    eval_worker: str | None         # "alive", "gone" (evaluations wait and no worker lives), None: none wait
    evaluations: list[Evaluation]
    evals_refused: list[RefusedEvaluation]  # the stop policy's, not queued: over the budget
    last_metrics: dict[str, float]
    failure: str | None
    write_errors: list[WriteError]
    supervisor_pid: int | None
    supervisor: str | None         # "alive", "gone" (an unfinished run nobody watches), None once ended
    orphan_trainer_pid: int | None  # a trainer training on after its supervisor died
    stop_policy: StopPolicyFields
    countdown: Countdown | None     # live runs
    stopped_by: StoppedBy | None    # a stopped run: what stopped it
    cost_to_stop_at_step_usd: float | None
    saved_usd: float | None         # against running on to stop_at_step: done (a policy stop) or to come
    saved_minutes: float | None
    pick: BracketPick | None       # checkpoint_pick's bracket, as named before it
    imported: bool
    path: str
    sweep: str | None               # the sweep the run belongs to (tina sweep --name), or None
    queue: Queue | None             # a sweep's run: its engine's view (why it waits, its node, what killed it)


class RunStub(TypedDict):
    """What the cockpit shows of a run it has not described: over a refresh's budget (state "...",
    ``pending``) or whose files could not be read (state "unreadable", ``error``)."""

    run_id: str
    name: str
    state: str
    pending: NotRequired[bool]
    error: NotRequired[str]


def stub(run_dir: RunDir, state: str, *, pending: bool = False, error: str | None = None) -> RunStub:
    out = RunStub(run_id=run_dir.run_id, name=RunInfo.read(run_dir).name or run_dir.run_id, state=state)
    if pending:
        out["pending"] = True
    if error is not None:
        out["error"] = error
    return out


LIVE_PHASE_MAX_AGE_S = 5.0  # a live run gains a step a second; detection reads all of them
_SUMMARY_KEYS = ("train_runtime", "train_loss")  # the trainer's final summary log, not a step
_EVAL_FIELDS = ("eval_id", "checkpoint", "task", "state", "score", "metric", "reason", "gpus", "why")
_REFUSED_FIELDS = ("checkpoint", "task", "projected_usd", "left_usd", "budget_usd")


def _normalise(metrics: dict[str, Any]) -> dict[str, Any]:
    try:
        from tina_core.analysis.metric_keys import normalise_key
    except ImportError:
        return metrics
    return {normalise_key(k): v for k, v in metrics.items()}


def _scores_by_checkpoint(evals: dict[str, dict[str, Any]]) -> dict[Any, dict[str, float]]:
    """``{checkpoint or "base": {task: score}}`` of the finished evaluations, the latest winning."""
    out: dict[Any, dict[str, float]] = {}
    for e in sorted((e for e in evals.values() if e["state"] == "finished"), key=lambda e: e.get("ended_ts") or 0):
        out.setdefault(e["checkpoint"], {}).update(e["scores"])
    return out


def _warn(text: str) -> None:
    print(f"tina: warning: {text}", file=sys.stderr)


def _watch_setting(run_dir: RunDir) -> Watch:
    """What the run says to watch, before it has metrics enough to choose from."""
    from tina_core.analysis.phase import params_for_run

    p = params_for_run(run_dir.path)
    return {"signals": list(p.signals), "corroborating": None, "source": p.watch_source, "by": p.watch_by,
            "candidates": []}


def describe(home: Path, run_dir: RunDir, store: "Store | Guarded | None" = None, *,
             now: float | None = None) -> RunObject:
    """The run object (design.md fields, plus a few more); ``store``: the index, whose failed
    calls are warned about and answered from the run directory."""
    index = store if isinstance(store, Guarded) else Guarded(store, warn=_warn)
    with index.batch():  # one connection for the run's questions (opening one costs ~0.2 s)
        return _describe(home, run_dir, index, time.time() if now is None else now)


def _describe(home: Path, run_dir: RunDir, index: Guarded, now: float) -> RunObject:
    from tina_core.store.index import Store  # the methods asked through the guard

    info = RunInfo.read(run_dir)
    events = run_dir.read_events()
    live = runstate.liveness(run_dir, events, now)
    # a sweep's run as its engine sees it: queued with Slurm's reason, requeued, killed by Slurm...
    state, queue = overlay(Sweeps(home), run_dir, info.as_dict(), live.state, events)
    is_live = runstate.is_live(state)
    rid = run_dir.run_id
    # The step clock from the index when there is one: re-reading metrics.jsonl costs seconds.
    clock = index.ask(Store.step_clock, rid)
    last_metrics = index.ask(Store.last_metrics, rid)
    records = [] if clock is not None and last_metrics is not None else list(iter_jsonl(run_dir.metrics))
    steps = [r for r in records if isinstance(r.get("step"), int)]
    if clock is not None:
        times, step = clock
    else:
        times, step = cost.step_times(records), (steps[-1]["step"] if steps else None)
    # A live run's open attempt (an orphaned trainer's too) counts up to now; a crashed one's up to
    # when its trainer was last known alive, not up to now.
    meter = cost.Meter(info, events, times, open_until=runstate.open_until(state, live.heartbeat, events, times, now),
                       eval_ends=runstate.open_eval_ends(run_dir, events, now))
    stalled = meter.stalled_s(now) if is_live else None
    if last_metrics is None:
        per_step = [r for r in steps if not any(k in r for k in _SUMMARY_KEYS)]
        last_metrics = _normalise({k: v for k, v in (per_step[-1] if per_step else {}).items()
                                   if k not in ("time", "ts", "attempt")})
    # A live run's phase may lag its newest steps by a few seconds (see Store.phase).
    age = LIVE_PHASE_MAX_AGE_S if is_live else 0.0
    phase = index.ask(Store.phase, rid, max_age_s=age)
    evals = runstate.evaluations(run_dir, events)
    pending = sum(1 for e in evals.values() if e["state"] in runstate.EVAL_ACTIVE_STATES)
    event_scores = _scores_by_checkpoint(evals)
    listed = index.ask(Store.checkpoints, rid)
    if listed is None:
        listed = [{"step": s, "evals": event_scores.get(s, {}), "avg": None,
                   "resumable": run_dir.checkpoint_kind(s) == "complete"}
                  for s in run_dir.checkpoint_steps(evaluable=True)]
    checkpoints = [CheckpointEntry(step=c["step"], cost_usd_at=meter.cost_at_step(c["step"]), evals=c["evals"] or {},
                                   resumable=c["resumable"]) for c in listed]
    # which checkpoint: around the marker the supervisor acted on (and pinned, and evaluated), else the index's
    chosen = choose(phase, listed, marker=marker(events), ended=_ended(run_dir))
    stop = _stop_figures(run_dir, events, state, step, meter)
    # The base model is its own entry: Tina reports gains over it.
    base = index.ask(Store.base_evals, rid)
    base = dict(sorted(((event_scores.get("base") or {}) if base is None else base).items()))

    trains = [iv for iv in meter.intervals if iv.kind == "train"]
    stop_at = info.planned_steps
    failed = of_kind(events, Kind.FAILED)
    lost = {e.get("attempt"): e["lost_log_bytes"] for e in of_kind(events, Kind.ATTEMPT_EXITED)
            if e.get("lost_log_bytes")}
    return RunObject({
        "run_id": run_dir.run_id,
        "name": info.name or run_dir.run_id,
        "recipe": info.recipe,
        "state": state,
        "step": step,
        "stop_at_step": stop_at,
        "max_steps": info.max_steps,
        "dataset_size": info.dataset_size,
        "restarts": len(of_kind(events, Kind.RESTARTED)),
        "attempts": len(trains),
        "started_at": info.created,
        "elapsed_s": round(meter.seconds("train"), 1),
        "device": info.device,
        "gpu_count": info.gpu_count,
        "gpu_hour_usd": info.gpu_hour_usd,
        "cpu_hour_usd": info.cpu_hour_usd,
        "price_source": info.price_source,
        "cost_usd": meter.cost_usd(),
        "usd_per_hour_now": round(meter.usd_per_hour_now(), 4) if is_live else 0.0,
        "projected_cost_usd": meter.projected_usd(step, finished=state == "finished"),
        "seconds_per_step": meter.seconds_per_step(),
        # a trainer stopped (SIGSTOP) or hung: no step for far longer than its pace, so no ETA
        "eta_s": meter.eta_s(step) if is_live and stalled is None else None,
        "stalled_s": stalled,
        "phase_transition": phase,
        # which signals the marker comes from and why (also inside phase_transition, once there is one)
        "watch": (phase or {}).get("watch") or _watch_setting(run_dir),
        "recommended_checkpoint": chosen["recommended"],
        "best_evaluated_checkpoint": chosen["best_evaluated"],
        "recommendation_disagrees": chosen["disagree"],
        "checkpoint_pick": chosen,
        "checkpoints": checkpoints,
        "base": {"evals": base, "avg": sum(base.values()) / len(base) if base else None},
        "evals_pending": pending,
        # "gone": evaluations wait or run with no worker alive (it was killed): nothing will end them
        # until one is started (`tina eval`, `tina status` and the cockpit start one)
        "eval_worker": None if not pending else "alive" if runstate.eval_worker_pid(home) else "gone",
        "evaluations": [cast(Evaluation, {k: e.get(k) for k in _EVAL_FIELDS}) for e in evals.values()],
        "evals_refused": [cast(RefusedEvaluation, {k: e.get(k) for k in _REFUSED_FIELDS})
                          for e in of_kind(events, Kind.EVAL_REFUSED)],
        "last_metrics": last_metrics,
        "failure": (failed[-1].get("reason") if failed else queue["reason"] if queue else None) if state == "failed"
        else None,
        # writes a full disk refused (the supervisor's own: what the trainer could not write ends it)
        "write_errors": [{"file": e.get("file"), "error": e.get("error"), "attempt": e.get("attempt"),
                          "lost_bytes": lost.get(e.get("attempt")) if e.get("file") == "train.log" else None}
                         for e in of_kind(events, Kind.WRITE_FAILED)],
        **stop,
        "pick": chosen["bracket"],
        "supervisor_pid": live.supervisor_pid if live.supervisor == "alive" else None,
        # "gone": no supervisor watches this unfinished run; an orphaned trainer may train on
        "supervisor": live.supervisor,
        "orphan_trainer_pid": live.orphan_trainer_pid,
        "imported": info.imported,
        "sweep": info.sweep,
        "queue": queue,
        "path": str(run_dir.path),
    })


def _ended(run_dir: RunDir) -> bool:
    """The run will log nothing more (its events say it ended): wording for a run without a marker."""
    from tina_core.analysis.phase import params_for_run

    return params_for_run(run_dir.path).ended


class StopFigures(TypedDict):
    """The run object's stop-policy fields (``_stop_figures``)."""

    stop_policy: StopPolicyFields
    countdown: Countdown | None
    stopped_by: StoppedBy | None
    cost_to_stop_at_step_usd: float | None
    saved_usd: float | None
    saved_minutes: float | None


def _stop_figures(run_dir: RunDir, events: list[dict[str, Any]], state: str, step: int | None,
                  meter: cost.Meter) -> StopFigures:
    """The stop policy, its countdown, why the run stopped, the dollars it saved against running on
    to stop_at_step."""
    pol = policy.for_run(run_dir, events)
    spent = meter.cost_usd()["total"]
    rate, pace = meter.train_usd_per_hour(), meter.seconds_per_step()
    clock = policy.countdown(pol, events, step, spent, policy.usd_per_step(pace, rate), policy.stop_reserve_usd(rate)) \
        if runstate.is_live(state) else None
    stopped = last_of(since_start(events)[1], Kind.STOPPED) if state == "stopped" else None
    by_policy = bool(stopped and stopped.get("by") in policy.POLICY_STOPS)
    # what ending early saves: done (a policy stop), or to come (the policy's countdown)
    end = step if by_policy else clock.stop_step if clock and clock.by != "stop_at_step" else None
    saved_usd, saved_min = policy.saved(pol.stop_at_step, end, pace, rate)
    return StopFigures(
        stop_policy=StopPolicyFields(stop_at_step=pol.stop_at_step, after_transition=pol.after_transition,
                                     budget_usd=pol.budget_usd, evaluate=pol.evaluate),
        countdown=None if clock is None else Countdown(by=clock.by, stop_step=clock.stop_step,
                                                       steps_left=clock.steps_left, usd_left=clock.usd_left,
                                                       waiting=clock.waiting, text=clock.text()),
        stopped_by=None if stopped is None else StoppedBy(by=stopped.get("by"), reason=stopped.get("reason")),
        cost_to_stop_at_step_usd=meter.projected_usd(step, finished=state == "finished"),
        saved_usd=saved_usd,
        saved_minutes=saved_min,
    )


def open_store(home: Path, run_ids: list[str] | None = None) -> Any:
    """The store brought up to date (for ``run_ids`` only, when given), or None when it is
    unavailable (``tina ls`` still works without it)."""
    try:
        from tina_core.store.index import Store
    except ImportError:
        return None
    try:
        store = Store(home)
        store.ingest(run_ids)
        return store
    except Exception as e:
        print(f"tina: warning: the index at {home} is unavailable ({e}); showing run directories only",
              file=sys.stderr)
        return None


def list_runs(home: Path, store: "Store | None" = None, run_dirs: list[RunDir] | None = None) -> list[RunObject]:
    """The workspace's run objects (``run_dirs``' only, when given). An ended run whose files are
    as they were is answered from the run-object cache (``run_cache``), without the index; the
    others are described, the index opened and brought up to date for them alone."""
    every = list_run_dirs(home) if run_dirs is None else None
    dirs = every if every is not None else run_dirs or []
    kept = run_cache.RunObjects(home)
    keys = {rd.run_id: run_cache.files_key(rd) for rd in dirs}
    runs: dict[str, Any] = {rd.run_id: kept.get(rd, keys[rd.run_id]) for rd in dirs}
    todo = [rd for rd in dirs if runs[rd.run_id] is None]
    # a run that has logged no step (a sweep's queued runs) is all in its events: no index for it
    indexed = {rd.run_id for rd in todo if rd.metrics.exists()}
    if todo:
        if store is None and indexed:
            store = open_store(home, sorted(indexed))
        now = time.time()
        index = Guarded(store, warn=_warn)
        none = Guarded(None, warn=_warn)
        with index.batch():  # one connection for the whole listing
            for rd in todo:
                failures = index.failures
                runs[rd.run_id] = run = describe(home, rd, index if rd.run_id in indexed else none, now=now)
                if index.available and index.failures == failures:  # never keep what the index could not say
                    kept.put(rd, keys[rd.run_id], run)
    kept.save(None if every is None else {rd.run_id for rd in every})
    return [runs[rd.run_id] for rd in dirs]


# --- output ---------------------------------------------------------------------------------------


