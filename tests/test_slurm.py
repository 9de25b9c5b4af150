"""Sweeps on a real Slurm cluster: `tina sweep --engine slurm` submits one job array of real tiny
runs and reads it back through squeue. CI's Slurm lane runs these after `make slurm-up` (a one-node
cluster on the CI machine: slurmctld, slurmd and munge from Debian); elsewhere they are skipped.
Not in `make test`: `make test-slurm` runs them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tina_core import runstate
from tina_core.events import Kind, last_of, of_kind
from tina_core.rundir import RunDir, runs_root
from tina_core.sweep import record, slurm

from sweep_support import ROOT, logged_steps, tina, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not slurm.available(),
                                                    reason="no Slurm cluster answers here (make slurm-up starts one)")]
TINY = str(ROOT / "recipes" / "tiny.yaml")


def submit(home: Path, name: str, *args: str) -> tuple[record.Sweep, list[RunDir]]:
    out = tina(home, "sweep", TINY, "--engine", "slurm", "--name", name, *args)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    sweep = record.read_sweep(home, name)
    assert sweep.job_id is not None
    return sweep, [RunDir(runs_root(home) / rid) for rid in sweep.runs]


def listed(home: Path) -> dict[str, dict]:
    out = tina(home, "ls", "--json")
    assert out.returncode == 0, out.stderr
    return {r["run_id"]: r for r in json.loads(out.stdout)}


def states(home: Path, runs: list[RunDir]) -> list[str]:
    now = listed(home)
    return [now[rd.run_id]["state"] for rd in runs]


def task_log(rd: RunDir) -> str:
    return "\n".join(p.read_text() for p in sorted(rd.path.glob("slurm-*.out")))


def settled(home: Path, runs: list[RunDir], timeout: float) -> list[str]:
    """Wait until no run is queued or live, as tina ls sees them with Slurm; their states."""
    def why() -> str:
        return f"states {states(home, runs)}\n" + "\n".join(map(task_log, runs))

    return wait_for(lambda: (s := states(home, runs)) and all(x in (*runstate.ENDED_STATES, "crashed") for x in s)
                    and s, timeout, why, every=1.0)


def steps_at_least(rd: RunDir, n: int) -> bool:
    return len(logged_steps(rd)) >= n


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_three_runs_two_at_a_time_each_step_once_and_the_cockpit_sees_the_queue(home, tiny_model, tiny_cache):
    from test_tui_live import _cockpit, _wait_pane

    sock = f"tina-slurm-{uuid.uuid4().hex[:8]}"
    _cockpit(sock, home, tiny_cache)  # open before the sweep: it sees the third task wait
    try:
        sweep, runs = submit(home, "sw", "--grid", "grpo.seed=1,2,3", "--max-parallel", "2",
                             "--set", "stop_at_step=20", "--set", "grpo.save_steps=10")
        screen = _wait_pane(sock, lambda t: "queued JobArrayTaskLimit" in t and re.search(r"running @\S", t), 120,
                            "a queued task (Slurm's reason) and a running one (its node) in the runs list")
        assert "sweep" in screen.splitlines()[0] or "sweep" in screen  # the sweep column
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
    assert settled(home, runs, 300) == ["finished"] * 3
    now = listed(home)
    for rd in runs:
        run = now[rd.run_id]
        assert run["sweep"] == "sw" and run["queue"]["engine"] == "slurm" and run["step"] == 20
        assert logged_steps(rd) == list(range(1, 21)), rd.run_id  # every step exactly once
        assert run["queue"]["job"] == f"{sweep.job_id}_{run['queue']['index']}"
    report = json.loads(tina(home, "report", "--sweep", "sw", "--json").stdout)
    assert sorted(r["run_id"] for r in report["runs"]) == sorted(sweep.runs)
    assert report["ablation"]["axis"] == ["grpo.seed"]


def test_a_requeued_task_stops_gracefully_and_its_run_resumes_each_step_once(home, tiny_model):
    sweep, [rd] = submit(home, "rq", "--set", "stop_at_step=24", "--set", "grpo.save_steps=50")
    wait_for(lambda: steps_at_least(rd, 3), 120, lambda: f"{states(home, [rd])}\n{task_log(rd)}")
    subprocess.run(["scontrol", "requeue", f"{sweep.job_id}_0"], check=True, capture_output=True)
    assert settled(home, [rd], 300) == ["finished"]
    events = rd.read_events()
    stopped = last_of(events, Kind.STOPPED)
    assert stopped["by"] == "slurm (requeue)"  # a graceful stop: a checkpoint at its last step
    tasks = of_kind(events, Kind.SLURM_TASK)
    assert [t["restart"] for t in tasks] == [0, 1] and {t["job"] for t in tasks} == {f"{sweep.job_id}_0"}
    attempts = of_kind(events, Kind.ATTEMPT_STARTED)
    assert attempts[-1]["resume_from"] == stopped["step"] and len(attempts) == 2
    assert logged_steps(rd) == list(range(1, 25))
    assert "resuming run" in task_log(rd)


def test_scancel_of_the_whole_sweep_leaves_every_run_stopped_or_cancelled(home, tiny_model):
    sweep, runs = submit(home, "sc", "--grid", "grpo.seed=1,2,3,4", "--max-parallel", "2",
                         "--set", "stop_at_step=100", "--set", "grpo.save_steps=50")
    wait_for(lambda: all(steps_at_least(rd, 3) for rd in runs[:2]), 120, lambda: str(states(home, runs)))
    out = tina(home, "stop", runs[3].run_id)  # a queued task: cancelled in Slurm and in its run
    assert out.stdout.strip() == "cancelled" and f"scancel {sweep.job_id}_3" in out.stderr
    subprocess.run(["scancel", sweep.job_id], check=True, capture_output=True)
    assert settled(home, runs, 120) == ["stopped", "stopped", "cancelled", "cancelled"]
    for rd in runs[:2]:  # stopped at a checkpoint of their last step, each step once
        steps = logged_steps(rd)
        assert steps == list(range(1, len(steps) + 1)) and rd.checkpoint_steps()[-1] == steps[-1]
        assert last_of(rd.read_events(), Kind.STOPPED)["by"] == "slurm (scancel)"
    for rd in runs[2:]:
        assert last_of(rd.read_events(), Kind.LAUNCHED) is None  # never started
    now = listed(home)
    assert now[runs[2].run_id]["queue"]["slurm_state"] == "CANCELLED"
    assert last_of(runs[3].read_events(), Kind.CANCELLED)["by"] == "tina stop"


def test_tina_stop_stops_a_running_task_gracefully_and_it_stays_stopped(home, tiny_model):
    sweep, [rd] = submit(home, "st", "--set", "stop_at_step=100", "--set", "grpo.save_steps=50")
    wait_for(lambda: steps_at_least(rd, 3), 120, lambda: f"{states(home, [rd])}\n{task_log(rd)}")
    out = tina(home, "stop", rd.run_id)
    assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr
    assert last_of(rd.read_events(), Kind.STOPPED)["by"] == "tina stop"
    wait_for(lambda: (t := (slurm.tasks([sweep.job_id]) or {}).get(f"{sweep.job_id}_0")) and not t.running, 60,
             lambda: str(slurm.tasks([sweep.job_id])))
    assert (slurm.tasks([sweep.job_id]) or {})[f"{sweep.job_id}_0"].state == "COMPLETED"
    assert states(home, [rd]) == ["stopped"] and rd.checkpoint_steps()[-1] == logged_steps(rd)[-1]
