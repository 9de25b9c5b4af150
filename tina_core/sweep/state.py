"""What a sweep's run is doing, as its engine sees it: the ``queue`` field of its run object and the
state its engine adds to what its events say.

The run directory says ``queued`` until the engine starts the run, and then what any run says. The
engine knows more: Slurm's reason for a task that waits, the node a task runs on, a stopped run that
Slurm has requeued (queued again: it will resume), a queued run whose task Slurm cancelled before it
started (``cancelled``), a task Slurm killed (time limit, node failure: named, never a silent crash).
The local engine's queue is a daemon of this machine: whether it lives, and why a run waits.

Light: `tina ls` and the cockpit call ``overlay`` for every run of a sweep.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, TypedDict

from tina_core.events import Kind, is_kind, last_of
from tina_core.rundir import RunDir
from tina_core.sweep import record, slurm

POLL_S = 5.0  # how old an answer of squeue may be (one call a listing; the cockpit asks every second)


class Queue(TypedDict):
    """The ``queue`` field of a sweep's run object (None for a run outside a sweep)."""

    engine: str                 # local | slurm
    index: int | None           # the run's place in its sweep (the array task id)
    job: str | None             # slurm: ARRAYJOB_TASK
    slurm_state: str | None     # slurm: PENDING, RUNNING, TIMEOUT... (None once Slurm forgot the task)
    reason: str | None          # why it waits (Slurm's reason, or the local queue's)
    node: str | None            # where it runs (slurm)
    killed: str | None          # what Slurm ended it by, when it was ended from outside (time limit...)


def engine_may_change(run: Mapping[str, Any]) -> bool:
    """Whether the run's engine may change what it shows without touching its files: a queued run
    (why it waits), a Slurm run until it finished or was cancelled (Slurm may requeue a stopped or
    killed one, or cancel a queued one). Such an object is never kept as it is."""
    q, state = run.get("queue") or {}, run.get("state")
    return bool(q) and state not in ("finished", "cancelled", "failed") and (q.get("engine") == "slurm"
                                                                             or state == "queued")


_polled: dict[str, tuple[float, dict[str, slurm.SlurmTask] | None]] = {}


def slurm_tasks(job_id: str, *, max_age_s: float = POLL_S) -> dict[str, slurm.SlurmTask] | None:
    """The array's tasks as squeue saw them at most ``max_age_s`` ago (None: Slurm did not answer)."""
    now = time.monotonic()
    seen = _polled.get(job_id)
    if seen is None or now - seen[0] > max_age_s:
        seen = _polled[job_id] = (now, slurm.tasks([job_id]))
    return seen[1]


class Sweeps:
    """The sweep records a listing needs, each read once."""

    def __init__(self, home) -> None:
        self.home = home
        self._read: dict[str, record.Sweep | None] = {}

    def get(self, name: str) -> record.Sweep | None:
        if name not in self._read:
            try:
                self._read[name] = record.read_sweep(self.home, name)
            except Exception:  # a missing or damaged sweep.json: the run shows as its events say
                self._read[name] = None
        return self._read[name]


def overlay(sweeps: Sweeps, run_dir: RunDir, info: dict[str, Any], state: str,
            events: list[dict[str, Any]]) -> tuple[str, Queue | None]:
    """``(state, queue)`` of a run: its state as its events say it, seen with its engine's eyes."""
    name = info.get("sweep")
    if not name:
        return state, None
    sweep = sweeps.get(name)
    queued = last_of(events, Kind.QUEUED) or {}
    engine = sweep.engine if sweep else queued.get("engine", "local")
    index = info.get("sweep_index")
    q = Queue(engine=engine, index=index, job=None, slurm_state=None, reason=None, node=None, killed=None)
    if sweep is None:
        return state, {**q, "reason": f"its sweep's record ({name}) is missing"} if state == "queued" else q
    if engine == "local":
        if state == "queued":
            q["reason"] = (f"waiting for a free slot, {sweep.max_parallel} at a time"
                           if record.queue_pid(sweeps.home, name) else
                           "no queue is running (tina ls or the cockpit starts it again)")
        return state, q
    return _slurm(sweep, index, state, events, q)


REQUEUE_STOP = "slurm (requeue)"  # a stop's ``by`` when Slurm requeues the task (tina_core.sweep.task)


def _requeueing(events: list[dict[str, Any]]) -> bool:
    """The run stopped because its task is being requeued (by Slurm, or by itself before its time
    limit): it runs again."""
    last = last_of(events, Kind.STOPPED, Kind.REQUEUED, Kind.SLURM_TASK)
    return last is not None and (is_kind(last, Kind.REQUEUED) or last.get("by") == REQUEUE_STOP)


def _slurm(sweep: record.Sweep, index: int | None, state: str, events: list[dict[str, Any]],
           q: Queue) -> tuple[str, Queue]:
    took = last_of(events, Kind.SLURM_TASK)
    q["node"] = took.get("node") if took else None
    if sweep.job_id is None or index is None:
        if state == "queued":
            q["reason"] = "not submitted to Slurm (yet)"
        return state, q
    q["job"] = job = f"{sweep.job_id}_{index}"
    if state in ("finished", "cancelled"):
        return state, q
    known = slurm_tasks(sweep.job_id)
    if known is None:
        if state == "queued":
            q["reason"] = "Slurm does not answer (squeue failed)"
        return state, q
    task = known.get(job)
    if task is None:
        # Slurm has forgotten the task (MinJobAge after it ended): one that never took its run never will
        if state == "queued":
            q["reason"] = "its Slurm task is gone without having started it"
            return "cancelled", q
        return state, q
    q["slurm_state"] = task.state
    if task.waiting:
        q["reason"] = task.reason or task.state
        # a run stopped or killed whose task Slurm has requeued: it will resume
        return ("queued" if state in ("queued", "stopped", "crashed") else state), q
    if task.running:
        q["node"] = task.node or q["node"]
        if state == "queued":
            q["reason"] = f"starting on {task.node}"
        elif state == "stopped" and _requeueing(events):  # its task ends, Slurm runs it again
            q["reason"] = "requeued"
            return "queued", q
        return state, q
    # the task has ended
    q["killed"] = task.killed if task.state != "CANCELLED" or state != "stopped" else None
    if state == "queued":
        q["reason"] = f"its Slurm task ended ({task.state}) before it started the run"
        return ("cancelled" if task.state == "CANCELLED" else "failed"), q
    return state, q
