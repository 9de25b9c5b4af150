"""`tina stop` and the cockpit's ``s`` for any run: a queued sweep run is cancelled, a running one
stopped gracefully, wherever its engine runs it.

A run outside a sweep is ``lifecycle.stop_run``'s. A sweep's run that has not started is cancelled
(a ``cancelled`` event; on Slurm, ``scancel`` of its array task first), under the run's
``start.lock``, so its engine either started it before or never will. A stopped or killed Slurm run
whose task Slurm has requeued loses that task (it stays stopped). A running Slurm run is asked
through Slurm (``scancel --batch --signal=USR1`` to its task's runner, which stops it like `tina
stop` does): its supervisor may be on another machine.
"""

from __future__ import annotations

from pathlib import Path

from tina_core import runstate
from tina_core.events import Kind
from tina_core.rundir import TinaError, find_run
from tina_core.supervise.lifecycle import StopOutcome, stop_run
from tina_core.sweep import record, slurm, state


def _scancel(job: str | None) -> str:
    if job is None:
        return ""
    try:
        slurm.cancel(job)
        return f" (scancel {job})"
    except TinaError as e:  # already ended: nothing of it is left to start
        return f" ({e})"


def stop(home: Path, run_ref: str, *, wait: bool = False, timeout: float | None = None) -> StopOutcome:
    run_dir = find_run(home, run_ref, acting=True)
    info = run_dir.info()
    if not info.get("sweep"):
        return stop_run(home, run_dir.run_id, wait=wait, timeout=timeout)
    rid = run_dir.run_id
    sweeps = state.Sweeps(home)
    sweep = sweeps.get(info["sweep"])
    slurm_job = (f"{sweep.job_id}_{info.get('sweep_index')}"
                 if sweep is not None and sweep.engine == "slurm" and sweep.job_id is not None else None)
    with record.start_claim(run_dir):
        events = run_dir.read_events()
        own = runstate.liveness(run_dir, events).state
        seen, _ = state.overlay(sweeps, run_dir, info, own, events)
        if own == "queued":
            note = _scancel(slurm_job)
            run_dir.event(Kind.CANCELLED, by="tina stop", reason="cancelled before it started" + note)
            return StopOutcome("cancelled", f"cancelled {rid}: it had not started{note}")
        if seen == "queued" and slurm_job:
            note = _scancel(slurm_job)
            return StopOutcome(own, f"cancelled the requeued Slurm task of {rid}{note}; the run stays {own}")
    ask = (lambda live: slurm.signal_batch(slurm_job, "USR1")) if slurm_job else None
    return stop_run(home, rid, wait=wait, timeout=timeout, ask=ask)
