"""What a sweep costs besides its training: submission and bookkeeping, per run.

    .venv/bin/python bench/sweep.py [--runs 60] [--keep DIR]

On a sweep of --runs runs of the tiny recipe (a grid over grpo.seed), through the product's own code:
  - planning: every run resolved, checked and priced (`tina sweep` before it creates anything);
  - creating them and starting the local queue (run directories, run.json, `queued` events, sweep.json);
  - one pass of the local queue's loop over the whole sweep (it reads every run's state once a second);
  - `tina ls` on the sweep's runs (a fresh process), and cancelling each queued run (`tina stop`'s path);
  - with a Slurm cluster up (`make slurm-up`): sbatch of the same sweep as one job array, one squeue of
    all its tasks, `tina ls` with Slurm's view, and on a real two-run sweep of two steps each, the
    time from sbatch to a task taking its run and from there to the trainer's start.
Prints the figures (and per run); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tina_core.events import Kind, last_of  # noqa: E402
from tina_core.rundir import RunDir, runs_root  # noqa: E402
from tina_core.sweep import control, local, record, slurm  # noqa: E402
from tina_core.sweep.plan import plan_sweep, start_sweep  # noqa: E402

TINY = ROOT / "recipes" / "tiny.yaml"


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def tina_ls(home: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "ls"], cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def line(what: str, seconds: float, n: int) -> None:
    print(f"  {what:<58} {seconds:7.3f} s   {1000 * seconds / n:7.2f} ms a run")


def local_engine(home: Path, n: int) -> None:
    grid = ["grpo.seed=" + ",".join(str(i) for i in range(1, n + 1))]
    plan, t_plan = timed(plan_sweep, home, [TINY], grids=grid, sets=["stop_at_step=100"], name="bench",
                         max_parallel=1)
    sweep, t_start = timed(start_sweep, home, plan)
    runs = [RunDir(runs_root(home) / rid) for rid in sweep.runs]
    while last_of(runs[0].read_events(), Kind.SUPERVISOR_STARTED) is None:  # the queue took its one slot
        time.sleep(0.1)
    passes = [timed(local.step, home, record.read_sweep(home, "bench"))[1] for _ in range(5)]
    t_ls = statistics.median(tina_ls(home) for _ in range(3))
    cancelled, t_cancel = timed(lambda: [control.stop(home, rd.run_id) for rd in runs[1:]])
    control.stop(home, runs[0].run_id, wait=True)
    print(f"local engine, {n} runs of the tiny recipe:")
    line("plan: resolve, check and price every run", t_plan, n)
    line("create every run queued and start the queue", t_start, n)
    line("one pass of the queue's loop (once a second)", statistics.median(passes), n)
    line(f"tina ls ({n} runs: one running, the rest queued)", t_ls, n)
    line("cancel each queued run (tina stop's path)", t_cancel, len(cancelled))


def slurm_engine(home: Path, n: int) -> None:
    grid = ["grpo.seed=" + ",".join(str(i) for i in range(1, n + 1))]
    plan, t_plan = timed(plan_sweep, home, [TINY], grids=grid, sets=["stop_at_step=100"], name="array",
                         engine="slurm", max_parallel=1)
    sweep, t_start = timed(start_sweep, home, plan)
    tasks, t_squeue = timed(slurm.tasks, [sweep.job_id])
    t_ls = statistics.median(tina_ls(home) for _ in range(3))
    slurm.cancel(sweep.job_id)
    print(f"slurm engine, {n} runs as one job array (sbatch of {len(tasks or {})} tasks seen by squeue):")
    line("plan: resolve, check and price every run (no hardware check)", t_plan, n)
    line("create every run queued, the job script, sbatch", t_start, n)
    line("one squeue of every task of the array", t_squeue, n)
    line(f"tina ls ({n} runs queued or cancelled, Slurm's view)", t_ls, n)

    plan = plan_sweep(home, [TINY], grids=["grpo.seed=1,2"], sets=["stop_at_step=2", "grpo.save_steps=2"],
                      name="real", engine="slurm", max_parallel=2)
    t0 = time.time()
    sweep = start_sweep(home, plan)
    runs = [RunDir(runs_root(home) / rid) for rid in sweep.runs]
    while not all(last_of(rd.read_events(), Kind.FINISHED, Kind.STOPPED, Kind.FAILED) for rd in runs):
        time.sleep(0.5)
    took, started = [], []
    for rd in runs:
        ev = rd.read_events()
        took.append(last_of(ev, Kind.SLURM_TASK)["ts"] - t0)
        started.append(last_of(ev, Kind.ATTEMPT_STARTED)["ts"] - last_of(ev, Kind.SLURM_TASK)["ts"])
    print(f"  a real sweep of 2 tiny runs: sbatch to a task taking its run {statistics.median(took):.2f} s; the task "
          f"taking it to its trainer's start {statistics.median(started):.2f} s (tina run: the same supervisor)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--keep", type=Path, help="build the workspaces here and keep them")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="tina-bench-sweep-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        os.environ["TINA_HOME"] = str(base / "local")
        local_engine(base / "local", args.runs)
        if slurm.available():
            os.environ["TINA_HOME"] = str(base / "slurm")
            slurm_engine(base / "slurm", args.runs)
        else:
            print("slurm engine: no cluster answers here (make slurm-up starts one)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
