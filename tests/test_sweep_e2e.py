"""The local engine with the real tiny trainer, as test_slurm.py runs the Slurm one: a sweep of three
runs two at a time that the cockpit in tmux shows queued and running, each finishing with every step
once; and a sweep stopped run by run (a queued run cancelled, running ones stopped at a checkpoint)
whose stopped run then resumes to the end with every step once. CI's extended lane."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from tina_core import runstate
from tina_core.events import Kind, last_of
from tina_core.rundir import RunDir, runs_root
from tina_core.sweep import record

from sweep_support import ROOT, logged_steps, tina, wait_for

pytestmark = pytest.mark.extended
TINY = str(ROOT / "recipes" / "tiny.yaml")


def submit(home, name: str, *args: str) -> list[RunDir]:
    out = tina(home, "sweep", TINY, "--name", name, *args)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return [RunDir(runs_root(home) / rid) for rid in record.read_sweep(home, name).runs]


def state(rd: RunDir) -> str:
    return runstate.liveness(rd).state


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_three_runs_two_at_a_time_in_the_cockpit_each_step_once(home, tiny_model, tiny_cache):
    from test_tui_live import _cockpit, _wait_pane

    sock = f"tina-sweep-{uuid.uuid4().hex[:8]}"
    _cockpit(sock, home, tiny_cache)
    try:
        runs = submit(home, "sw", "--grid", "grpo.seed=1,2,3", "--max-parallel", "2",
                      "--set", "stop_at_step=20", "--set", "grpo.save_steps=10")
        _wait_pane(sock, lambda t: " queued " in t and " running " in t and "sweep" in t, 120,
                   "a queued run and a running one in the runs list, with its sweep")
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
    wait_for(lambda: all(state(rd) in runstate.ENDED_STATES for rd in runs), 300,
             lambda: str([state(rd) for rd in runs]), every=1.0)
    listed = json.loads(tina(home, "ls", "--json").stdout)
    assert [(r["sweep"], r["state"], r["step"]) for r in listed] == [("sw", "finished", 20)] * 3
    assert all(logged_steps(rd) == list(range(1, 21)) for rd in runs)
    launched = [last_of(rd.read_events(), Kind.LAUNCHED)["ts"] for rd in runs]
    ended = [last_of(rd.read_events(), Kind.FINISHED)["ts"] for rd in runs]
    assert launched[2] >= min(ended[:2])  # two at a time: the third waited for a slot
    report = json.loads(tina(home, "report", "--sweep", "sw", "--json").stdout)
    assert [r["name"] for r in report["runs"]] == ["sw-seed1", "sw-seed2", "sw-seed3"]


def test_a_sweep_stopped_run_by_run_then_resumed_each_step_once(home, tiny_model):
    first, second, third = submit(home, "st", "--grid", "grpo.seed=1,2,3", "--max-parallel", "1",
                                  "--set", "stop_at_step=100", "--set", "grpo.save_steps=50")
    wait_for(lambda: len(logged_steps(first)) >= 3, 120, lambda: state(first))
    out = tina(home, "stop", third.run_id)
    assert out.stdout.strip() == "cancelled", out.stderr
    assert tina(home, "stop", first.run_id).stdout.strip() == "stopped"
    wait_for(lambda: len(logged_steps(second)) >= 3, 120, lambda: state(second))  # its slot went to the next
    assert tina(home, "stop", second.run_id).stdout.strip() == "stopped"
    wait_for(lambda: record.queue_pid(home, "st") is None, 30, lambda: "the queue never exited")
    assert [state(rd) for rd in (first, second, third)] == ["stopped", "stopped", "cancelled"]
    assert last_of(third.read_events(), Kind.LAUNCHED) is None
    stopped_at = logged_steps(first)[-1]
    assert first.checkpoint_steps()[-1] == stopped_at  # a graceful stop: a checkpoint at its last step
    resumed = tina(home, "resume", first.run_id)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert state(first) == "finished" and logged_steps(first) == list(range(1, 101))
    assert last_of(first.read_events(), Kind.ATTEMPT_STARTED)["resume_from"] == stopped_at
