"""The headless CLI as a user runs it: real `tina` processes, the real tiny trainer, real signals."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tina_core import cost, gpu, supervisor
from tina_core.rundir import RunDir, TinaError, iter_jsonl

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny.yaml"
SECRET = "hf_cliSECRETtoken0123456789"
RUN_FIELDS = {"run_id", "name", "recipe", "state", "step", "stop_at_step", "max_steps", "restarts",
              "started_at", "elapsed_s", "device", "gpu_count", "gpu_hour_usd", "cost_usd",
              "projected_cost_usd", "phase_transition", "recommended_checkpoint", "checkpoints",
              "last_metrics"}


def tina(home: Path, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _runs(home: Path) -> list[Path]:
    root = home / "runs"
    return sorted(root.iterdir()) if root.exists() else []


# --- errors: clear, non-zero, nothing created -----------------------------------------------------
def test_missing_recipe_file(tmp_path):
    out = tina(tmp_path, "run", "recipes/nope.yaml")
    assert out.returncode == 2 and "recipes/nope.yaml" in out.stderr and "no such" in out.stderr
    assert _runs(tmp_path) == []


def test_recipe_asking_for_absent_gpus_is_refused_before_anything(tmp_path):
    if gpu.gpus():
        pytest.skip("this machine has GPUs")
    t0 = time.monotonic()
    out = tina(tmp_path, "run", "recipes/tina/open_rs2.yaml")
    assert out.returncode == 2 and "asks for 2 GPUs" in out.stderr
    assert time.monotonic() - t0 < 15  # said before the (slow) full validation
    assert _runs(tmp_path) == []


def test_broken_recipe_names_the_key(home):
    # In-process: the full validation imports TRL once for the whole test session.
    with pytest.raises(TinaError, match="grpo.learning_rat"):
        supervisor.cli_run(home, ROOT / "recipes/tina/open_rs2.yaml",
                           overrides=["launch.gpus=0", "grpo.learning_rat=1e-6"])
    assert _runs(home) == []


@pytest.mark.parametrize("command", [["status"], ["stop"], ["resume"], ["logs"]])
def test_unknown_run(tmp_path, command):
    out = tina(tmp_path, *command, "no-such-run")
    assert out.returncode == 2 and "no run 'no-such-run'" in out.stderr


def test_ls_on_an_empty_workspace(tmp_path):
    out = tina(tmp_path, "ls", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
    assert "no runs" in tina(tmp_path, "ls").stdout


# --- the real tiny trainer ------------------------------------------------------------------------
def _tiny_args(steps: int, save: int) -> list[str]:
    return [str(TINY), "--set", f"stop_at_step={steps}", "--set", f"grpo.max_steps={steps}",
            "--set", f"grpo.save_steps={save}"]


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _status(home: Path, run_id: str) -> dict:
    out = tina(home, "status", run_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def tiny_home(home, tiny_model, monkeypatch):
    """A fresh workspace whose tiny model is already built (conftest)."""
    monkeypatch.setenv("TINA_RESTART_BACKOFF_S", "0.5")
    return home


def test_dry_run_prints_recipe_and_command_and_creates_nothing(tiny_home, capsys):
    assert supervisor.cli_run(tiny_home, TINY, overrides=["stop_at_step=4"], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "stop_at_step: 4" in out
    assert out.splitlines()[-1].endswith("-m tina_core.train " + shlex.quote(str(tiny_home / "runs" / "<run_id>")))
    assert _runs(tiny_home) == []


@pytest.mark.slow
def test_ctrl_c_resume_and_a_killed_trainer(tiny_home):
    """One tiny run through everything that interrupts training: Ctrl-C on a foreground `tina run`
    (stops at a checkpoint), `resume` (detached, continues from it), a SIGKILLed trainer (restarted
    from its last checkpoint), then the finish: each step once, cost over all three attempts."""
    steps, save = 12, 2
    args = [str(TINY), "--set", f"stop_at_step={steps}", "--set", f"grpo.max_steps={steps}",
            "--set", f"grpo.save_steps={save}", "--set", "price.cpu_hour_usd=3.6"]
    proc = subprocess.Popen([sys.executable, "-m", "tina_core.cli", "--home", str(tiny_home), "run", *args,
                             "--name", "interrupted"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_TOKEN": SECRET, "WANDB_API_KEY": SECRET + "w"})
    run_id = proc.stdout.readline().strip()
    rd = RunDir(tiny_home / "runs" / run_id)
    _wait(lambda: any(r.get("step", 0) >= 3 for r in iter_jsonl(rd.metrics)), 240, "step 3")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=150)
    assert proc.returncode == supervisor.EXIT_STOPPED, err
    assert "stop requested (Ctrl-C)" in err
    run = _status(tiny_home, run_id)
    assert run["state"] == "stopped"
    stopped_at = run["step"]
    assert rd.checkpoint_steps()[-1] == stopped_at  # saved at the step it stopped on
    assert [e["event"] for e in rd.read_events()][-3:] == ["stop_requested", "attempt_exited", "stopped"]

    supervisor.resume_run(tiny_home, run_id)
    _wait(lambda: rd.checkpoint_steps()[-1] > stopped_at, 240, "a checkpoint of the resumed attempt")
    resumed = [e for e in rd.read_events() if e["event"] == "attempt_started"][-1]
    assert (resumed["attempt"], resumed["resume_from"]) == (2, stopped_at)
    os.kill(supervisor.liveness(rd)["trainer_pid"], signal.SIGKILL)
    _wait(lambda: supervisor.liveness(rd)["state"] not in ("running", "stopping"), 240, "the run to end")

    run = _status(tiny_home, run_id)
    assert RUN_FIELDS <= set(run)
    assert (run["state"], run["step"], run["stop_at_step"]) == ("finished", steps, steps)
    assert (run["restarts"], run["attempts"]) == (1, 3)
    ev = rd.read_events()
    assert [e["signal"] for e in ev if e["event"] == "attempt_exited"] == [None, "SIGKILL", None]
    assert min(r["step"] for r in iter_jsonl(rd.metrics) if r.get("attempt") == 2) == stopped_at + 1
    times = cost.step_times(iter_jsonl(rd.metrics))
    assert list(times) == list(range(1, steps + 1))  # each step once, the latest attempt's
    assert times[steps][1] == 3
    # $3.60 per CPU-hour is $0.001 per second of trainer life, over all three attempts
    lives = [e["ts"] for e in ev if e["event"] in ("attempt_started", "attempt_exited")]
    alive = sum(end - start for start, end in zip(lives[::2], lives[1::2]))
    assert run["cost_usd"]["train"] == pytest.approx(alive * 0.001, abs=1e-3)
    assert run["elapsed_s"] == pytest.approx(alive, abs=0.5)
    assert run["checkpoints"][-1]["step"] == steps
    assert all(c["cost_usd_at"] is not None for c in run["checkpoints"])
    assert [c["cost_usd_at"] for c in run["checkpoints"]] == sorted(c["cost_usd_at"] for c in run["checkpoints"])
    ls = json.loads(tina(tiny_home, "ls", "--json").stdout)
    assert [r["run_id"] for r in ls] == [run_id] and RUN_FIELDS <= set(ls[0])
    assert "attempt 3" in tina(tiny_home, "logs", run_id, "-n", "400").stdout
    assert json.loads(rd.run_json.read_text())["tina_command"].startswith(f"tina run {TINY} --name interrupted")
    for path in rd.path.rglob("*"):  # no credential value anywhere tina writes
        if path.is_file():
            assert SECRET not in path.read_bytes().decode(errors="replace"), path
