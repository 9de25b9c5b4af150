"""The worker: ``python -m tina_core.evaluate worker HOME``, detached, one per workspace (an fcntl
lock), started by ``queue_eval`` when none runs; it exits when the queue is empty.

It runs evaluations one after the other, each as a job in its own process group (so cancelling
kills the whole tree), enforces the timeout, and records the failures a job cannot record itself
(a crash, an OOM kill, a timeout). It holds back a GPU evaluation while the run's own training holds
the GPUs, unless the user assigned GPUs explicitly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tina_core import locks, runstate
from tina_core.alerts import Alerts
from tina_core.evaluate.commands import child_env, gpu_env, python_executable
from tina_core.evaluate.tasks import log_tail
from tina_core.events import EVAL_RESULTS, Kind, is_kind
from tina_core.rundir import RunDir, tina_home

WORKER_LOCK = runstate.EVAL_WORKER_LOCK
WORKER_LOG = "eval-worker.log"
BLOCKED_POLL_S = 3.0


def _timeout_s(ev: dict[str, Any]) -> float:
    default = 6 * 3600 if ev["gpus"] else 1800
    try:
        return float(os.environ.get("TINA_EVAL_TIMEOUT_S") or default)
    except ValueError:
        return default


def worker_running(home: str | os.PathLike | None = None) -> bool:
    return locks.PidLock(tina_home(home) / WORKER_LOCK).held()


NO_WORKER_ENV = "TINA_NO_EVAL_WORKER"  # set in a Slurm task: its evaluations wait for a worker elsewhere


def ensure_worker(home: str | os.PathLike | None = None) -> bool:
    """Start the detached worker unless one runs (or ``$TINA_NO_EVAL_WORKER`` says not here: a
    Slurm task, whose node is only its run's while the task lasts); True when one was started."""
    h = tina_home(home)
    if os.environ.get(NO_WORKER_ENV) or worker_running(h):
        return False
    with open(h / WORKER_LOG, "ab") as log:
        subprocess.Popen([python_executable(), "-m", "tina_core.evaluate", "worker", str(h)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                         cwd=str(h), env=child_env())
    return True


def revive_worker(home: str | os.PathLike | None = None) -> str | None:
    """When evaluations are queued or running but no worker is alive (it was killed, or the box
    rebooted), start one and say so; it closes, as failed with the reason, those whose job died
    with it, and runs the rest. None when nothing needed it."""
    h = tina_home(home)
    if runstate.eval_worker_pid(h) is not None:
        return None
    active = runstate.eval_queue(h)
    if not active or not ensure_worker(h):
        return None
    return (f"no evaluation worker was alive for {len(active)} unfinished evaluation(s): started one "
            "(evaluations whose job died with the old one are closed as failed)")


def _wlog(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


def _run_one(home: Path, rd: RunDir, ev: dict[str, Any]) -> None:
    eid = ev["eval_id"]
    log = rd.eval_log(eid)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(**gpu_env(ev["gpus"]), PYTHONUNBUFFERED="1")
    with open(log, "ab") as f:
        proc = subprocess.Popen([python_executable(), "-m", "tina_core.evaluate", "job", str(home), rd.run_id, eid],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(rd.path))
    common = dict(eval_id=eid, checkpoint=ev["checkpoint"], task=ev["task"], gpus=ev["gpus"], pid=proc.pid)
    rd.event(Kind.EVAL_STARTED, **common, device="gpu" if ev["gpus"] else "cpu", log=str(log))
    _wlog(f"started {rd.run_id}/{eid} pid {proc.pid}")
    timeout = _timeout_s(ev)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        runstate.end_group(proc.pid, 5.0, proc=proc)
        proc.wait()
        if runstate.evaluations(rd)[eid]["state"] == "running":
            rd.event(Kind.EVAL_FAILED, **common, reason=f"timed out after {timeout:g}s\n--- last lines of {log.name} ---\n"
                     + log_tail(log))
        _wlog(f"timed out {rd.run_id}/{eid}")
        return
    runstate.end_group(proc.pid, 0.5)  # anything the job left behind in its group
    if runstate.evaluations(rd)[eid]["state"] == "running":  # the job died before recording its end
        why = f"exited with code {rc}" if rc >= 0 else f"killed by signal {signal.Signals(-rc).name}"
        hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
        rd.event(Kind.EVAL_FAILED, **common, reason=f"evaluation process {why}{hint}\n--- last lines of {log.name} ---\n"
                 + log_tail(log))
    _wlog(f"ended {rd.run_id}/{eid} rc {rc} -> {runstate.evaluations(rd)[eid]['state']}")


def _announce(alerts: Alerts, rd: RunDir, eval_id: str) -> None:
    """An evaluation's result (or failure), as recorded by its job or by us, to the alert targets."""
    ends = [e for e in rd.read_events()
            if e.get("eval_id") == eval_id and is_kind(e, *EVAL_RESULTS)]
    if ends:
        alerts.send(rd, ends[-1])


def _reap_orphans(home: Path, items: list[dict[str, Any]], alerts: Alerts) -> bool:
    """Running evaluations left by a previous worker: wait for a live job, fail a vanished one.
    Returns True if one is still alive (the GPUs are not free)."""
    alive = False
    for ev in items:
        if ev["state"] != "running":
            continue
        rd = RunDir(tina_home(home) / "runs" / ev["run_id"])
        if runstate.eval_process_alive(ev.get("pid")):
            alive = True
            continue
        if runstate.evaluations(rd).get(ev["eval_id"], {}).get("state") == "running":
            rd.event(Kind.EVAL_FAILED, eval_id=ev["eval_id"], checkpoint=ev["checkpoint"], task=ev["task"],
                     gpus=ev["gpus"], pid=ev.get("pid"), end_ts=runstate.eval_last_alive(rd, ev),
                     reason="evaluation process ended without recording a result (its worker stopped or was "
                            "killed)\n"
                            + log_tail(rd.eval_log(ev["eval_id"])))
            _announce(alerts, rd, ev["eval_id"])
    return alive


def worker_main(home: str | os.PathLike) -> int:
    h = tina_home(home)
    lock = locks.PidLock(h / WORKER_LOCK)
    if not lock.acquire():
        return 0
    _wlog("worker up")
    alerts = Alerts(h, warn=_wlog)
    try:
        while True:
            items = runstate.eval_queue(h)
            if _reap_orphans(h, items, alerts):
                time.sleep(BLOCKED_POLL_S)
                continue
            pending = [e for e in items if e["state"] == "queued"]
            if not pending:
                # Release, then look once more: an evaluation queued while we were deciding to
                # exit saw the lock held and started no worker.
                lock.release()
                if not any(e["state"] == "queued" for e in runstate.eval_queue(h)) or not lock.acquire():
                    break
                continue
            for ev in pending:
                rd = RunDir(h / "runs" / ev["run_id"])
                if ev["gpus"] and not ev["gpus_explicit"] and runstate.training_holds_gpus(rd):
                    continue
                _run_one(h, rd, ev)
                _announce(alerts, rd, ev["eval_id"])
                break
            else:
                time.sleep(BLOCKED_POLL_S)  # every queued GPU evaluation waits for its training
    finally:
        lock.release()  # first: a new worker may start while the results go out
        alerts.close()  # bounded (alerts.CLOSE_WAIT_S), whatever the targets
        _wlog("worker exits: queue empty")
    return 0


