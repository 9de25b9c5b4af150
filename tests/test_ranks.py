"""Two training ranks for real on CPU: the tiny recipe with ``launch.processes: 2`` runs under the same
``accelerate launch`` wrapper and torch elastic agent as the GPU recipes (gloo instead of NCCL), through
``tina run --detach`` and its supervisor. A kill -9 of one rank is a crash that is restarted from the
last complete checkpoint, ``tina stop`` mid-run ends in a step both ranks saved and exit 75 through the
launcher, and ``tina resume`` finishes the run with every step counted once.

The trainings are extended tests (CI's second lane): each launch of two ranks costs about half a
minute here."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tina_core.analysis.cost import step_times
from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.rundir import RunDir, iter_jsonl, list_run_dirs, read_json
from tina_core.train.launcher import launch_command, launch_env

ROOT = RECIPES_DIR.parent
TINY = RECIPES_DIR / "tiny.yaml"
TWO_RANKS = ("launch.processes=2", "grpo.max_steps=40", "stop_at_step=40", "grpo.save_steps=4",
             "rewards.length=0.0")  # len_reward sees whole prompt groups under two real ranks


def tina(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINA_HOME": str(home), "TINA_CACHE": os.environ["TINA_CACHE"], "HF_HUB_OFFLINE": "1",
           "TINA_RESTART_BACKOFF_S": "0.5"}
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(cond, what: str, rd: RunDir, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    log = rd.train_log.read_text()[-4000:] if rd.train_log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def steps(rd: RunDir, attempt: int) -> list[int]:
    return [r["step"] for r in iter_jsonl(rd.metrics) if r.get("attempt") == attempt and "reward" in r]


def ranks(rd: RunDir) -> dict[int, psutil.Process]:
    """The trainer ranks under the launcher, by RANK."""
    launcher = (read_json(rd.supervisor, {}) or {}).get("trainer_pid")
    out = {}
    try:
        for child in psutil.Process(launcher).children():
            cmd = child.cmdline()
            if "tina_core.train" in cmd and "tina_core.train.launcher" not in cmd:
                out[int(child.environ().get("RANK", -1))] = child
    except (psutil.Error, TypeError):
        return {}
    return out


def steps_said_stopped(rd: RunDir) -> list[int]:
    """The steps of the trainer's "stopped on request at step N" lines. Both ranks write to one
    log, so another rank's progress bar can land in the middle of a line: find them by pattern."""
    return [int(m) for m in re.findall(r"stopped on request at step (\d+)", rd.train_log.read_text())]


@pytest.fixture(autouse=True)
def _cache(tiny_cache, monkeypatch):
    monkeypatch.setenv("TINA_CACHE", str(tiny_cache))


def events(rd: RunDir, kind: str) -> list[dict]:
    return [e for e in rd.read_events() if e["event"] == kind]


def test_the_recipe_setting_launches_accelerate_with_two_cpu_ranks(tmp_path):
    recipe = load_recipe(TINY, ["launch.processes=2"])
    cmd = launch_command(RunDir(tmp_path / "run"), recipe)
    assert cmd[1:5] == ["-m", "tina_core.train.launcher", "accelerate", "launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(RECIPES_DIR / "accelerate" / "cpu_ranks.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "0"
    env = launch_env(recipe, base={})
    assert env["PET_SIGNALS_TO_HANDLE"] == "SIGINT,SIGHUP,SIGQUIT" and env["ACCELERATE_USE_CPU"] == "true"
    assert recipe.prompts_per_step == 8  # 16 completions x 2 ranks / 4 generations


def test_torch_s_launcher_reads_the_signal_override_from_pet_signals_to_handle(monkeypatch):
    """Why the override is PET_SIGNALS_TO_HANDLE: torch's launcher writes TORCHELASTIC_SIGNALS_TO_HANDLE
    from its --signals_to_handle option, whose environment form is PET_SIGNALS_TO_HANDLE."""
    import torch.distributed.run as run

    monkeypatch.setenv("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGINT")
    assert run.get_args_parser().parse_args(["x.py"]).signals_to_handle == "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
    monkeypatch.setenv("PET_SIGNALS_TO_HANDLE", "SIGINT,SIGHUP,SIGQUIT")
    assert run.get_args_parser().parse_args(["x.py"]).signals_to_handle == "SIGINT,SIGHUP,SIGQUIT"


def test_a_rank_dies_with_its_launcher(tmp_path):
    """The supervisor's last resort kills the launcher's group; the ranks, in sessions of their own,
    must not outlive it (PR_SET_PDEATHSIG)."""
    rank = ("import os, sys, time; os.environ['TORCHELASTIC_RUN_ID'] = 'x'; "
            "from tina_core.train.launcher import die_with_parent; die_with_parent(); "
            "print(os.getpid(), flush=True); time.sleep(60)")
    launcher = ("import subprocess, sys, time; "
                f"p = subprocess.Popen([sys.executable, '-c', {rank!r}], start_new_session=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.ppid() == parent.pid and child.is_running()
        parent.kill()
        parent.wait()
        child.wait(timeout=30)  # gone, by SIGKILL
    finally:
        parent.kill()


@pytest.mark.extended
def test_two_ranks_crash_stop_and_resume(tmp_path, tiny_model, tiny_cache):
    home = tmp_path / "home"
    started = tina(home, "run", str(TINY), "--detach", "--name", "ranks", *[a for o in TWO_RANKS for a in ("--set", o)])
    assert started.returncode == 0, started.stderr
    (rd,) = list_run_dirs(home)
    assert json.loads(rd.run_json.read_text())["command"][2] == "tina_core.train.launcher"

    # 1. kill -9 of one rank mid-run: a crash, restarted from the last complete checkpoint
    wait_for(lambda: len(steps(rd, 1)) >= 6 and len(ranks(rd)) == 2, "attempt 1 at step 6 with two ranks", rd)
    first = ranks(rd)
    first[1].send_signal(signal.SIGKILL)
    restarted = wait_for(lambda: events(rd, "restarted"), "the restart", rd)
    assert restarted[0]["attempt"] == 2
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in first.values())  # no rank left
    exited = events(rd, "attempt_exited")[0]
    assert exited["attempt"] == 1 and exited["code"] not in (0, 75)
    attempt2 = wait_for(lambda: events(rd, "attempt_started")[1:], "attempt 2", rd)[0]
    complete_then = attempt2["resume_from"]
    assert complete_then is not None and complete_then % 4 == 0 and complete_then <= max(steps(rd, 1))

    # 2. tina stop mid-run: both ranks stop at the same step, save it, exit 75 through the launcher
    wait_for(lambda: len(steps(rd, 2)) >= 3 and len(ranks(rd)) == 2, "attempt 2 at 3 steps with two ranks", rd)
    stopped = tina(home, "stop", rd.run_id)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped", stopped.stdout + stopped.stderr
    exited = events(rd, "attempt_exited")[1]
    assert exited["attempt"] == 2 and exited["code"] == 75, exited
    last = max(steps(rd, 2))
    assert last < 40 and max(rd.checkpoint_steps()) == last
    assert steps_said_stopped(rd) == [last, last], rd.train_log.read_text()[-3000:]  # one per rank
    ckpt = rd.checkpoint_path(last)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}  # both ranks saved it
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == last

    # 3. tina resume: continues from that checkpoint to stop_at_step
    resumed = tina(home, "resume", rd.run_id)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert events(rd, "attempt_started")[-1]["resume_from"] == last
    assert steps(rd, 3)[0] == last + 1 and max(steps(rd, 3)) == 40
    assert events(rd, "finished")

    # metrics: rank 0 only, one line per step within an attempt, and every step exactly once overall
    for attempt in (1, 2, 3):
        got = steps(rd, attempt)
        assert got == sorted(set(got)) and got == list(range(got[0], got[-1] + 1)), (attempt, got)
    assert list(step_times(iter_jsonl(rd.metrics))) == list(range(1, 41))
    assert steps(rd, 2)[0] == complete_then + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.extended
def test_two_machines_on_one_box(tmp_path, tiny_model, tiny_cache):
    """The multi-node rendering (num_machines 2, one rank per "machine", static rendezvous on
    127.0.0.1): two `tina run`s, one per machine, train together; machine 0's run has the metrics and
    the checkpoints, and a `tina stop` of it stops both at one step."""
    port = _free_port()
    common = ["launch.processes=1", "launch.num_machines=2", "launch.main_process_ip=127.0.0.1",
              f"launch.main_process_port={port}", "grpo.max_steps=40", "stop_at_step=40", "grpo.save_steps=4"]
    homes = [tmp_path / f"machine{i}" for i in (0, 1)]
    for i, home in enumerate(homes):
        started = tina(home, "run", str(TINY), "--detach", "--name", f"m{i}",
                       *[a for o in [*common, f"launch.machine_rank={i}"] for a in ("--set", o)])
        assert started.returncode == 0, started.stderr
    main, other = (list_run_dirs(h)[0] for h in homes)
    wait_for(lambda: len(steps(main, 1)) >= 3, "machine 0 at step 3", main)
    assert not list(iter_jsonl(other.metrics))  # metrics come from global rank 0 only
    stopped = tina(homes[0], "stop", main.run_id)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped", stopped.stdout + stopped.stderr
    last = max(steps(main, 1))
    assert max(main.checkpoint_steps()) == last
    # the other machine's rank agreed on the step (all-reduce) and stopped too
    wait_for(lambda: events(other, "stopped") or events(other, "failed"), "machine 1's run to end", other)
    assert events(other, "attempt_exited")[0]["code"] == 75
    assert steps_said_stopped(other) == [last], other.train_log.read_text()[-3000:]


def test_a_cpu_rank_s_indexed_device_loads_a_checkpoint():
    """What a resume with CPU ranks does (transformers loads the optimizer with
    ``map_location=args.device``, ``cpu:0`` under accelerate): torch's own loader, with the
    trainer's registration, puts the tensors on the CPU."""
    import io

    import torch

    from tina_core.train.trainer import _load_indexed_cpu_storages

    buf = io.BytesIO()
    torch.save({"exp_avg": torch.arange(4.0)}, buf)
    _load_indexed_cpu_storages()
    buf.seek(0)
    state = torch.load(buf, map_location=torch.device("cpu", 0), weights_only=True)
    assert state["exp_avg"].device.type == "cpu" and state["exp_avg"].tolist() == [0.0, 1.0, 2.0, 3.0]
