"""One Slurm array task: ``python -m tina_core.sweep task HOME NAME INDEX``, the batch step of the
sweep's job (``exec``, so Slurm's signals reach it).

It supervises run INDEX of the sweep in the foreground (the same ``Supervisor`` as `tina run`), on
this node: the first task ``launched`` it, a requeued one (``SLURM_RESTART_COUNT`` > 0) resumes it
from its latest complete checkpoint. A run already finished or cancelled is left alone. Every task
records a ``slurm_task`` event (its job, node and restart count) before it starts anything.

Signals. TERM (Slurm's: ``--signal=B:TERM@S`` before the time limit, ``scontrol requeue``,
``scancel``, a preemption) is a graceful stop: the trainer saves at the end of its step and exits 75;
the stop's ``by`` says what Slurm was doing (``scontrol show job``). If the job is still running
(the time limit is near, nothing else ended it), the task records ``requeued`` and asks Slurm to
requeue it, and the next task resumes the run. USR1 is `tina stop`'s request (``scancel --batch
--signal=USR1``): a stop that stays a stop.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tina_core import runstate
from tina_core.evaluate.worker import NO_WORKER_ENV
from tina_core.events import Kind, last_of
from tina_core.rundir import RunDir, TinaError, runs_root, tina_home
from tina_core.supervise.supervisor import Supervisor
from tina_core.sweep import record, slurm
from tina_core.sweep.state import REQUEUE_STOP

TIME_LIMIT = "slurm (time limit)"


def _say(msg: str) -> None:
    print(f"tina task: {msg}", flush=True)


def why_term(job_id: str, restart: int) -> str:
    """What Slurm is doing to this task as it sends TERM, from ``scontrol show job``: still
    running (the ``--signal`` before the time limit), requeueing it (its restart count went up), or
    ending it (scancel, the time limit itself, a preemption)."""
    fields = slurm.job_fields(job_id)
    state = fields.get("JobState", "")
    if state == "RUNNING":
        return TIME_LIMIT
    if int(fields.get("Restarts", restart) or restart) > restart:
        return REQUEUE_STOP
    reason = fields.get("Reason")
    if reason == "TimeLimit":
        return "slurm (time limit reached)"
    if state in ("PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"):
        return f"slurm ({state.lower()})"
    return "slurm (scancel)" if reason in (None, "None") else f"slurm ({reason})"


def task_main(home: str | os.PathLike, name: str, index: int) -> int:
    h = tina_home(home)
    # evaluations its stop policy queues wait for a worker off this node (it is the task's only while it runs)
    os.environ[NO_WORKER_ENV] = "1"
    sweep = record.read_sweep(h, name)
    if not 0 <= index < len(sweep.runs):
        raise TinaError(f"sweep {name} has {len(sweep.runs)} runs; there is no task {index}")
    rd = RunDir(runs_root(h) / sweep.runs[index])
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', sweep.job_id)}_{os.environ.get('SLURM_ARRAY_TASK_ID', index)}"
    job_id = os.environ.get("SLURM_JOB_ID", "")
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    asked: list[str] = []  # a signal before the supervisor is up is a stop all the same
    signal.signal(signal.SIGTERM, lambda *_: asked.append(why_term(job_id, restart)))
    signal.signal(signal.SIGUSR1, lambda *_: asked.append("tina stop"))
    with record.start_claim(rd):
        events = rd.read_events()
        state = runstate.liveness(rd, events).state
        if state in ("finished", "cancelled", "failed"):
            _say(f"run {rd.run_id} is {state}: nothing to do")
            return 0
        rd.event(Kind.SLURM_TASK, job=job, job_id=job_id, restart=restart, node=runstate.HOST)
        resume = last_of(events, Kind.SUPERVISOR_STARTED) is not None
        if state == "queued":
            q = last_of(events, Kind.QUEUED) or {}
            from tina_core import gpu

            rd.event(Kind.LAUNCHED, recipe=q.get("recipe"), command=q.get("command"), gpus=q.get("gpus", 0),
                     gpu_hour_usd=q.get("gpu_hour_usd"), device=(gpu.gpu_model() if q.get("gpus") else None) or
                     q.get("device"), host=runstate.HOST)
    _say(f"{'resuming' if resume else 'starting'} run {rd.run_id} as task {job} on {runstate.HOST} "
         f"(restart {restart})")
    sup = Supervisor(rd)
    sup.acquire()
    sup.install_signals(foreground=False)
    said: list[str] = []

    def on_term(*_: object) -> None:
        said.append(why_term(job_id, restart))
        sup.request_stop(said[0])

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, lambda *_: sup.request_stop("tina stop"))
    for why in asked:
        said.append(why)
        sup.request_stop(why)
    try:
        state = sup.run(resume=resume)
    finally:
        sup.release()
    if state == "stopped" and sup.stop_requested == TIME_LIMIT:
        rd.event(Kind.REQUEUED, job=job, reason="stopped before the time limit; Slurm runs the task again")
        try:
            slurm.requeue(job_id)
            _say("stopped before the time limit: requeued")
        except TinaError as e:
            _say(f"could not requeue: {e} (`tina resume {rd.run_id}` goes on from its checkpoint)")
    _say(f"run {rd.run_id} {state}")
    return 0 if state in ("finished", "stopped") else 1


def main(home: str, name: str, index: str) -> int:
    try:
        return task_main(Path(home), name, int(index))
    except TinaError as e:
        print(f"tina: error: {e}", file=sys.stderr, flush=True)
        return 2
