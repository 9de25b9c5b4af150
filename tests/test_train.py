"""The trainer process for real: TRL's GRPOTrainer + PEFT on the tiny model, launched exactly as the
supervisor launches it (launch_command + launch_env), with real checkpoints, resume and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tina_core.train.launcher import launch_command, launch_env
from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.rundir import CHECKPOINT_COMPLETE, RunDir, create_run_dir, iter_jsonl
from tina_core.train.trainer import EXIT_FINISHED, EXIT_STOPPED

pytestmark = pytest.mark.slow
ROOT = RECIPES_DIR.parent
TRL_KEYS = {"loss", "grad_norm", "learning_rate", "reward", "reward_std", "kl", "entropy", "num_tokens",
            "rewards/format_reward/mean", "rewards/accuracy_reward/mean", "completions/mean_length",
            "completions/clipped_ratio", "frac_reward_zero_std", "step_time", "epoch"}


def make_run(home: Path, *overrides: str) -> RunDir:
    rd = create_run_dir(home, "tiny")
    rd.recipe.write_text(load_recipe(RECIPES_DIR / "tiny.yaml", overrides).to_yaml())
    return rd


def _cmd_env(rd: RunDir, attempt: int, cache: Path):
    recipe = load_recipe(rd.recipe)
    env = {**launch_env(recipe), "TINA_ATTEMPT": str(attempt), "TINA_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return launch_command(rd, recipe), env


def run_trainer(rd: RunDir, cache: Path, attempt: int = 1) -> subprocess.CompletedProcess:
    cmd, env = _cmd_env(rd, attempt, cache)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    with open(rd.train_log, "a") as f:
        f.write(proc.stdout + proc.stderr)
    return proc


def metrics(rd: RunDir) -> list[dict]:
    return list(iter_jsonl(rd.metrics))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_model, tiny_cache):
    """A run whose schedule is 8 steps but which stops at step 3 (save_steps 2)."""
    home = tmp_path_factory.mktemp("home")
    rd = make_run(home, "grpo.max_steps=8", "grpo.save_steps=2", "stop_at_step=3")
    proc = run_trainer(rd, tiny_cache)
    return rd, proc


def test_real_grpo_run_logs_trl_keys_and_saves_complete_adapter_checkpoints(stopped_run):
    rd, proc = stopped_run
    assert proc.returncode == EXIT_FINISHED, proc.stderr[-3000:]
    rows = metrics(rd)
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert TRL_KEYS <= r.keys(), TRL_KEYS - r.keys()
        assert r["attempt"] == 1 and isinstance(r["ts"], float) and r["time"].endswith("+00:00")
        assert 0.0 <= r["rewards/format_reward/mean"] <= 1.0
    assert "train_runtime" in rows[-1] and rows[-1]["step"] == 3  # the summary log call
    assert "step 3/3" in proc.stdout and "saved checkpoint-3" in proc.stdout

    # stop_at_step honoured: saved at 3 though save_steps is 2, and the schedule still spans 8 steps
    assert rd.checkpoint_steps() == [2, 3]
    assert steps[-1]["learning_rate"] > 0.5e-3 * 0.1
    for step in (2, 3):
        ckpt = rd.checkpoint_path(step)
        marker = json.loads((ckpt / CHECKPOINT_COMPLETE).read_text())
        assert marker["step"] == step and "adapter_model.safetensors" in marker["files"]
        assert (ckpt / "adapter_config.json").exists() and (ckpt / "optimizer.pt").exists()
        assert not list(ckpt.glob("model*.safetensors"))  # adapter-only
        assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == step
    assert not (rd.checkpoints / "runs").exists()  # report_to none


def test_sigterm_saves_the_current_step_then_resume_skips_a_half_written_checkpoint(home, tiny_cache):
    rd = make_run(home, "grpo.max_steps=8", "grpo.save_steps=100", "stop_at_step=8")
    cmd, env = _cmd_env(rd, 1, tiny_cache)
    with open(rd.train_log, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not any(r.get("step", 0) >= 2 for r in metrics(rd)):
                assert proc.poll() is None and time.time() < deadline, rd.train_log.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = rd.train_log.read_text()
    assert code == EXIT_STOPPED, out[-3000:]
    last = max(r["step"] for r in metrics(rd))
    assert 2 <= last < 8 and rd.checkpoint_steps() == [last]  # saved where it stopped, off the save grid
    assert (rd.checkpoint_path(last) / "adapter_model.safetensors").exists()
    assert f"stopped on request at step {last}" in out

    # A later save cut off midway: files there, no completion marker, a truncated adapter.
    half = rd.checkpoint_path(last + 1)
    shutil.copytree(rd.checkpoint_path(last), half)
    (half / CHECKPOINT_COMPLETE).unlink()
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 10)

    again = run_trainer(rd, tiny_cache, attempt=2)
    assert again.returncode == EXIT_FINISHED, again.stderr[-3000:]
    assert f"resuming from checkpoint-{last}" in again.stdout
    assert f"set aside half-written checkpoint-{last + 1}" in again.stdout
    assert (rd.checkpoints / ".partial" / f"checkpoint-{last + 1}").is_dir()
    assert rd.checkpoint_steps() == [last, 8]
    second = [r["step"] for r in metrics(rd) if r["attempt"] == 2 and "reward" in r]
    assert second == list(range(last + 1, 9))
    assert json.loads((rd.checkpoint_path(8) / "trainer_state.json").read_text())["global_step"] == 8

    # Nothing left to do at the stop step: exits at once, finished.
    done = run_trainer(rd, tiny_cache, attempt=3)
    assert done.returncode == EXIT_FINISHED and "nothing to do" in done.stdout


CPU_ACCELERATE = """compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
mixed_precision: 'no'
num_machines: 1
num_processes: 1
use_cpu: true
"""


@pytest.mark.extended
def test_sigterm_through_the_accelerate_launcher(home, tiny_cache, tmp_path):
    """The GPU launch path (accelerate launch under tina's wrapper), here with a one-process CPU
    accelerate config: SIGTERM to the whole process group still ends in a saved step and exit 75."""
    cfg = tmp_path / "cpu.yaml"
    cfg.write_text(CPU_ACCELERATE)
    rd = make_run(home, "grpo.max_steps=500", "grpo.save_steps=100", "stop_at_step=500", "launch.gpus=1",
                  f"launch.accelerate_config={cfg}", "launch.main_process_port=29533")
    cmd, env = _cmd_env(rd, 1, tiny_cache)
    assert cmd[1:5] == ["-m", "tina_core.train.launcher", "accelerate", "launch"]
    with open(rd.train_log, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 240
            while not any(r.get("step", 0) >= 2 for r in metrics(rd)):
                assert proc.poll() is None and time.time() < deadline, rd.train_log.read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGTERM)  # as the supervisor stops a run: the whole group
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = rd.train_log.read_text()
    assert code == EXIT_STOPPED, out[-3000:]
    last = max(r["step"] for r in metrics(rd))
    assert rd.checkpoint_steps() == [last] and f"stopped on request at step {last}" in out


def test_missing_recipe_is_a_clear_error(tmp_path):
    rd = RunDir(tmp_path / "empty")
    rd.path.mkdir()
    cmd, env = launch_command(rd, load_recipe(RECIPES_DIR / "tiny.yaml")), launch_env(load_recipe(RECIPES_DIR / "tiny.yaml"))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "recipe.yaml: no recipe snapshot in the run directory" in proc.stderr


def test_shared_tiny_run_fixture(tiny_run):
    """The session's shared run, made by `tina run`: what other tests build on."""
    info = tiny_run.info()
    assert info["stop_at_step"] == 6 and info["dataset_size"] == 100
    rows = [r for r in metrics(tiny_run) if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"launched", "finished"} <= {e["event"] for e in tiny_run.read_events()}
