"""What state a run and its evaluations are in, read from their events and the processes they name.

The one place that knows: the run's state (from ``events.jsonl``, the supervisor's heartbeat and
its pid), each evaluation's state (folded from its ``eval_*`` events), whether a pid is still the
process that was started, and how a process group is ended. Readers (``tina ls/status``, the cost
meter, the report, the cockpit) and the daemons (the supervisor, the eval worker) all ask here, so
no reader imports a daemon.

Light: the standard library and psutil.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from tina_core.events import EVAL_ENDED, EVAL_KINDS, RUN_ENDED, Kind, is_kind, kind_of, open_attempts, since_start
from tina_core.locks import PidLock  # noqa: F401  (a sweep's queue takes it as runstate.PidLock)
from tina_core.rundir import RunDir, RunInfo, list_run_dirs, read_json, tail_records, tina_home

# --- states -------------------------------------------------------------------------------------
LIVE_STATES = ("running", "stopping")
# A run whose supervisor's watch ended: the state is the name of the event that ended it.
ENDED_STATES: tuple[str, ...] = tuple(k.value for k in RUN_ENDED)
# queued: a sweep's run its engine has not started yet (cancelled, in ENDED_STATES: one it never will)
RUN_STATES = (*LIVE_STATES, *ENDED_STATES, "crashed", "queued")
EVAL_ACTIVE_STATES = ("queued", "running")

HEARTBEAT_S = 2.0           # the supervisor rewrites supervisor.json this often
HEARTBEAT_TIMEOUT_S = 15.0  # a heartbeat older than this: the supervisor is gone
EVAL_PROCESS_MARK = "tina_core.evaluate"  # in the command line of every evaluation process
EVAL_WORKER_LOCK = "eval-worker.lock"  # $TINA_HOME/: the worker's flock, holding its pid
# This machine, as a heartbeat names it: a supervisor on another one (a Slurm node sharing the
# workspace) is judged by its heartbeat alone, never by a pid of this machine's.
HOST = socket.gethostname()


def is_live(state: str | None) -> bool:
    return state in LIVE_STATES


def can_stop(state: str | None) -> bool:
    """A stop can be asked of a live run, of a crashed one (its orphans are then stopped) and of a
    queued one (it is cancelled)."""
    return state in (*LIVE_STATES, "crashed", "queued")


def can_resume(state: str | None, supervisor_gone: bool = False) -> bool:
    """A run can be resumed once it ended early, and while no supervisor watches it: a new one
    takes its orphaned trainer over (stops it at a checkpoint, then trains on from there). A cancelled
    sweep's run starts then."""
    return state in ("stopped", "failed", "crashed", "cancelled") or (supervisor_gone and is_live(state))


def supervisor_ending(run_dir: RunDir) -> bool:
    """Whether the supervisor holding the run's lock is going: its pid is gone (a killed one's
    threads still exit for a moment), or its run has ended and it is letting go."""
    pid = (read_json(run_dir.supervisor, {}) or {}).get("pid")
    return not pid_alive(pid) or liveness(run_dir).state in ENDED_STATES


# --- processes ----------------------------------------------------------------------------------
def pid_alive(pid: Any, *, started: float | None = None, cmdline_has: str | None = None) -> bool:
    """True for a running (not zombie) process; with ``started`` (epoch s), only if it was created
    then (a recycled pid is another process); with ``cmdline_has``, only if its command line says so."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        import psutil

        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if isinstance(started, (int, float)) and abs(p.create_time() - started) >= 5:
            return False
        return cmdline_has is None or cmdline_has in " ".join(p.cmdline())
    except Exception:  # NoSuchProcess, AccessDenied on another user's pid...
        return False


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_group(pgid: int) -> None:
    """SIGKILL to a whole process group at once (vLLM workers and other children included)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def end_group(pgid: int, grace: float, *, term_group: bool = True, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL to whatever of the group is left once its leader is gone or after
    ``grace`` seconds. ``term_group`` False sends the SIGTERM to the leader only (a trainer handles
    it by saving a checkpoint, and stops its own children). ``proc``: the leader, when it is our
    child, reaped as we wait (a zombie leader would keep the group looking alive)."""
    try:
        (os.killpg if term_group else os.kill)(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        if not pid_alive(pgid):
            break
        time.sleep(0.1)
    kill_group(pgid)


# --- a run --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Liveness:
    """A run's state and the processes behind it (from its heartbeat file)."""

    state: str                    # one of RUN_STATES
    supervisor_pid: int | None
    trainer_pid: int | None
    heartbeat: float | None       # epoch s of the supervisor's last heartbeat
    # The run has not ended but no supervisor watches it (kill -9, OOM, reboot). Its state is then
    # "crashed", or "running"/"stopping" while the trainer it left trains on: an orphan, whose time
    # still counts, until `tina resume` takes it over or `tina stop` stops it at a checkpoint.
    supervisor_gone: bool = False
    orphan_trainer_pid: int | None = None
    host: str | None = None       # the supervisor's machine (None: this one, as before hosts were written)

    @property
    def remote(self) -> bool:
        """Supervised from another machine: its pids are not this machine's to signal."""
        return self.host not in (None, HOST)

    @property
    def supervisor(self) -> str | None:
        """``alive``, ``gone`` (see ``supervisor_gone``), or None once the run has ended."""
        return "gone" if self.supervisor_gone else "alive" if is_live(self.state) else None


def heartbeat_record(*, pid: int, started: float, now: float, trainer_pid: int | None,
                     trainer_started: float | None, attempt: int | None) -> dict[str, Any]:
    """What a supervisor writes to ``supervisor.json`` every few seconds (``liveness`` reads it)."""
    return {"pid": pid, "pgid": os.getpgid(pid), "started": started, "heartbeat": now, "trainer_pid": trainer_pid,
            "trainer_started": trainer_started, "attempt": attempt, "host": HOST}


def on_this_host(hb: dict[str, Any]) -> bool:
    """Whether a heartbeat's pids are this machine's (a heartbeat without a host is)."""
    return hb.get("host") in (None, HOST)


def liveness(run_dir: RunDir, events: list[dict[str, Any]] | None = None,
             now: float | None = None) -> Liveness:
    """The run's state from its events, its heartbeat and the pids in it."""
    events = run_dir.read_events() if events is None else events
    now = time.time() if now is None else now
    hb = read_json(run_dir.supervisor, {}) or {}

    def out(state: str) -> Liveness:
        return Liveness(state, hb.get("pid"), hb.get("trainer_pid"), hb.get("heartbeat"), host=hb.get("host"))

    if RunInfo.read(run_dir).imported:
        return out("finished")
    start, since = since_start(events, launched=True)
    terminal = [e["event"] for e in since if is_kind(e, *RUN_ENDED)]
    if terminal:
        return out(terminal[-1])
    if start is None and any(is_kind(e, Kind.QUEUED) for e in events):
        return out("queued")
    # a pid of another machine's says nothing here: its fresh heartbeat is all there is
    here = on_this_host(hb)
    fresh = isinstance(hb.get("heartbeat"), (int, float)) and now - hb["heartbeat"] <= HEARTBEAT_TIMEOUT_S
    started_ts = start.get("ts", 0) if start is not None else 0
    if start is not None and is_kind(start, Kind.LAUNCHED):
        # Created, supervisor not up yet: give it the heartbeat timeout to appear.
        alive = now - started_ts <= HEARTBEAT_TIMEOUT_S or (fresh and (not here or pid_alive(hb.get("pid"))))
    else:
        alive = fresh and (not here or pid_alive(hb.get("pid"))) and hb.get("heartbeat", 0) >= started_ts - 1
    stopping = any(is_kind(e, Kind.STOP_REQUESTED) for e in since)
    if alive:
        return out("stopping" if stopping else "running")
    trainer = hb.get("trainer_pid")
    open_ = open_attempts(since)
    if open_ and here and pid_alive(trainer, started=hb.get("trainer_started")):
        return replace(out("stopping" if stopping else "running"), supervisor_gone=True, orphan_trainer_pid=trainer)
    if open_ and trained_to_the_end(run_dir, open_):
        return out("finished")  # its orphan trained on to stop_at_step and saved it, unwatched
    return replace(out("crashed"), supervisor_gone=True)


def trained_to_the_end(run_dir: RunDir, attempts: list[int]) -> bool:
    """Whether one of ``attempts`` (open: its supervisor died) logged ``stop_at_step`` and its
    checkpoint there is complete: a trainer that went on alone and finished as it would have."""
    stop_at = RunInfo.read(run_dir).planned_steps
    if not isinstance(stop_at, int) or run_dir.checkpoint_kind(stop_at) != "complete":
        return False
    return any(r.get("step") == stop_at and r.get("attempt", 1) in attempts for r in tail_records(run_dir.metrics))


def trainer_last_alive(hb: dict[str, Any], last_logged_ts: float | None) -> float | None:
    """When the trainer of a gone supervisor was last known alive: its last heartbeat, or later
    the last metrics line the trainer logged (an orphan trains on unseen, and its time counts)."""
    seen = [t for t in (hb.get("heartbeat"), last_logged_ts) if isinstance(t, (int, float))]
    return max(seen) if seen else None


def open_until(state: str, heartbeat: float | None, events: list[dict[str, Any]],
               times: dict[int, tuple[float, int]], now: float) -> float:
    """Where a run's open trainer attempt ends for the cost meter: now while the run is live (an
    orphaned trainer's too: its time counts), else when its trainer was last known alive (its last
    heartbeat, or a later metrics line of that attempt), never whenever someone asks. ``times``:
    ``{step: (ts, attempt)}`` (``cost.step_times``)."""
    if is_live(state):
        return now
    open_ = set(open_attempts(events))
    logged = max((ts for ts, a in times.values() if a in open_), default=None)
    last_ts = max((e.get("ts", 0) for e in events), default=0) or None
    return trainer_last_alive({"heartbeat": heartbeat}, logged) or last_ts or now


def training_holds_gpus(rd: RunDir) -> bool:
    """Whether the run's own training is running on GPUs right now (heartbeat fresh, an attempt
    started and not exited)."""
    if (RunInfo.read(rd).gpu_count or 0) <= 0:
        return False
    events = rd.read_events()
    return is_live(liveness(rd, events).state) and bool(open_attempts(events))


# --- its evaluations ----------------------------------------------------------------------------
def evaluations(rd: RunDir, events: Iterable[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every evaluation of a run by id: ``{eval_id, run_id, checkpoint, task, state, gpus, ...}``
    with ``state`` queued, running, finished, failed or cancelled (the first terminal event wins)."""
    out: dict[str, dict[str, Any]] = {}
    for ev in rd.read_events() if events is None else events:
        kind, eid = kind_of(ev), ev.get("eval_id")
        if kind not in EVAL_KINDS or not eid:
            continue
        if kind is Kind.EVAL_QUEUED:
            out[eid] = {"eval_id": eid, "run_id": rd.run_id, "checkpoint": ev.get("checkpoint"),
                        "task": ev.get("task"), "state": "queued", "gpus": ev.get("gpus") or [],
                        "gpus_explicit": bool(ev.get("gpus_explicit")), "queued_ts": ev.get("ts"),
                        "why": ev.get("why"),
                        "started_ts": None, "ended_ts": None, "pid": None, "score": None,
                        "metric": None, "reason": None, "scores": {}}
            continue
        rec = out.get(eid)
        if rec is None or rec["state"] not in EVAL_ACTIVE_STATES:
            continue
        if kind is Kind.EVAL_STARTED:
            rec.update(state="running", started_ts=ev.get("ts"), pid=ev.get("pid"))
        elif kind in EVAL_ENDED:
            rec.update(state=kind.removeprefix("eval_"), ended_ts=ev.get("ts"),
                       score=ev.get("score"), metric=ev.get("metric"), reason=ev.get("reason"),
                       results_path=ev.get("results_path"), details_path=ev.get("details_path"),
                       scores=ev.get("scores") if isinstance(ev.get("scores"), dict) else {})
    return out


def eval_queue(home: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Queued and running evaluations across the workspace, oldest first."""
    h = tina_home(home)
    items = [e for rd in list_run_dirs(h) for e in evaluations(rd).values() if e["state"] in EVAL_ACTIVE_STATES]
    return sorted(items, key=lambda e: (e.get("queued_ts") or 0, e["eval_id"]))


def eval_process_alive(pid: Any) -> bool:
    return pid_alive(pid, cmdline_has=EVAL_PROCESS_MARK)


def lock_holder(path: Path, cmdline_has: str) -> int | None:
    """The daemon holding a ``PidLock``, if it is alive: read from the file, never by taking the
    lock (a reader holding it for a moment would turn a starting daemon away)."""
    try:
        pid = int(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, cmdline_has=cmdline_has) else None


def eval_worker_pid(home: str | os.PathLike | None = None) -> int | None:
    """The workspace's evaluation worker, if one is alive."""
    return lock_holder(tina_home(home) / EVAL_WORKER_LOCK, f"{EVAL_PROCESS_MARK} worker")


def eval_last_alive(rd: RunDir, ev: dict[str, Any], now: float | None = None) -> float:
    """When a running evaluation's job was last alive: now while its process lives, else its log's
    last write (the job touches it every few seconds), never before it started. A dead worker's
    evaluation costs up to there, not up to whenever a later worker reaps it."""
    now = time.time() if now is None else now
    start = float(ev.get("started_ts") or now)
    if eval_process_alive(ev.get("pid")):
        return now
    try:
        seen = rd.eval_log(ev["eval_id"]).stat().st_mtime
    except OSError:
        return start
    return max(start, min(seen, now))


def open_eval_ends(rd: RunDir, events: list[dict[str, Any]] | None = None,
                   now: float | None = None) -> dict[Any, float]:
    """``{eval_id: ts}`` for the run's evaluations still open in its events: where the cost meter
    ends each (see eval_last_alive)."""
    return {eid: eval_last_alive(rd, e, now) for eid, e in evaluations(rd, events).items()
            if e["state"] == "running"}


def run_home(rd: RunDir) -> Path:
    return rd.path.parent.parent
