"""The local engine: a sweep's queue on this machine, ``max_parallel`` runs at a time, each on GPUs of
its own.

``python -m tina_core.sweep local HOME NAME`` is a detached daemon (its own session, like a run's
supervisor and the evaluation worker), one per sweep (a flock on ``sweeps/NAME/queue.lock``, holding
its pid), so the queue survives the terminal, SSH and the cockpit. Once a second it reads its runs'
states (``runstate.liveness``): while fewer than ``max_parallel`` are live, it starts the next queued
one in the sweep's order (a ``launched`` event with the GPU ids it gives it, then a detached
supervisor with ``CUDA_VISIBLE_DEVICES`` set to them), and it exits once no run is queued. A run
cancelled meanwhile (``tina stop``) is skipped: starting and cancelling both take the run's
``start.lock``. If the daemon dies (a reboot), `tina ls` and the cockpit start it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tina_core import runstate
from tina_core.events import Kind, last_of
from tina_core.rundir import RunDir, TinaError, tina_home
from tina_core.sweep import record

POLL_S = 1.0


def ensure_queue(home: Path, name: str, *, env: dict[str, str] | None = None) -> bool:
    """Start the sweep's queue daemon unless one runs; True when one was started. ``env``: the
    withheld credentials its runs' trainers need (kept in process environments only)."""
    folder = record.sweep_dir(home, name)
    if runstate.PidLock(folder / record.QUEUE_LOCK).held():
        return False
    with open(folder / record.QUEUE_LOG, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "tina_core.sweep", "local", str(home), name],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True, cwd=os.getcwd(), env={**os.environ, **(env or {})})
    return True


def revive_queues(home: Path, runs: Sequence[Mapping[str, Any]]) -> str | None:
    """Local sweeps with queued runs and no queue alive (it was killed, or the machine rebooted):
    start their queues, and say so. None when nothing needed it."""
    names = sorted({r["sweep"] for r in runs if r.get("state") == "queued" and (r.get("queue") or {}).get("engine")
                    == "local" and r.get("sweep")})
    started = [n for n in names if record.queue_pid(home, n) is None and ensure_queue(home, n)]
    return f"no queue was running for sweep(s) {', '.join(started)}: started again" if started else None


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


def start_queued(rd: RunDir, gpu_ids: list[int]) -> bool:
    """Start a queued run under a detached supervisor on ``gpu_ids``; False if it is no longer
    queued (cancelled meanwhile). A supervisor that cannot start fails the run, with the reason."""
    from tina_core.supervise.lifecycle import spawn_daemon

    with record.start_claim(rd):
        events = rd.read_events()
        if runstate.liveness(rd, events).state != "queued":
            return False
        q = last_of(events, Kind.QUEUED) or {}
        rd.event(Kind.LAUNCHED, recipe=q.get("recipe"), command=q.get("command"), gpus=q.get("gpus", 0),
                 gpu_hour_usd=q.get("gpu_hour_usd"), device=q.get("device"), gpu_ids=gpu_ids, host=runstate.HOST)
    try:
        spawn_daemon(rd, env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpu_ids))} if gpu_ids else None)
    except TinaError as e:
        rd.event(Kind.FAILED, reason=f"the sweep's queue could not start its supervisor: {e}")
    return True


def step(home: Path, sweep: record.Sweep) -> bool:
    """Start what fits now; whether runs still wait."""
    active, queued, used = 0, [], set[int]()
    for rd in record.sweep_runs(home, sweep):
        events = rd.read_events()
        state = runstate.liveness(rd, events).state
        if runstate.is_live(state):
            active += 1
            used.update((last_of(events, Kind.LAUNCHED) or {}).get("gpu_ids") or ())
        elif state == "queued":
            queued.append(rd)
    free = [g for g in sweep.gpu_ids if g not in used]
    for rd in queued:
        if active >= sweep.max_parallel:
            break
        need = int(rd.info().get("gpu_count") or 0)
        if need > len(free):
            break  # in the sweep's order: the next run waits for its GPUs
        ids, free = free[:need], free[need:]
        if start_queued(rd, ids):
            active += 1
            _log(f"started {rd.run_id}" + (f" on GPUs {ids}" if ids else ""))
    return bool(queued)


def queue_main(home: str | os.PathLike, name: str) -> int:
    h = tina_home(home)
    lock = runstate.PidLock(record.sweep_dir(h, name) / record.QUEUE_LOCK)
    if not lock.acquire():
        return 0  # another queue runs this sweep
    _log(f"queue of sweep {name} up")
    try:
        while step(h, record.read_sweep(h, name)):
            time.sleep(POLL_S)
    finally:
        lock.release()
        _log("queue exits: no run of the sweep is queued")
    return 0
