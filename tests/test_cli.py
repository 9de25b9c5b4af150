"""The headless CLI as a user runs it: real `tina` processes, the real tiny trainer, real signals."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tina_core.cli import runs as cli_runs
from tina_core.supervise import lifecycle
from tina_core import runstate
from tina_core import gpu
from tina_core.analysis import cost
from tina_core.supervise import supervisor
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
    # said before the (slow) full validation: TRL is never imported
    out = tina(tmp_path, "run", "recipes/tina/open_rs2.yaml", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.returncode == 2 and "asks for 2 GPUs" in out.stderr
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "tina_core.recipe.loader" in imported and "trl" not in imported
    assert _runs(tmp_path) == []


def test_broken_recipe_names_the_key(home):
    # In-process: the full validation imports TRL once for the whole test session.
    with pytest.raises(TinaError, match="grpo.learning_rat"):
        cli_runs.cli_run(home, ROOT / "recipes/tina/open_rs2.yaml",
                           overrides=["launch.gpus=0", "grpo.learning_rat=1e-6"])
    assert _runs(home) == []


@pytest.mark.parametrize("content", ["", '{"problem": "What is 1 + 1?", "answer": "2"}\n', "{oops\n"],
                         ids=["empty", "one row", "malformed"])
def test_bad_data_is_refused_before_a_run_directory_exists(home, tmp_path, content):
    """Attack 7: an empty, one-row or malformed dataset is refused by `tina run` itself."""
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    out = tina(home, "run", str(TINY), "--set", f"dataset.name={data}")
    assert out.returncode == 2 and f"{data}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert _runs(home) == []


@pytest.mark.parametrize("command", [["status"], ["stop"], ["resume"], ["logs"]])
def test_unknown_run(tmp_path, command):
    out = tina(tmp_path, *command, "no-such-run")
    assert out.returncode == 2 and "no run 'no-such-run'" in out.stderr


def test_ls_on_an_empty_workspace(tmp_path):
    out = tina(tmp_path, "ls", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
    assert "no runs" in tina(tmp_path, "ls").stdout


@pytest.fixture
def imported(tmp_path) -> tuple[Path, RunDir]:
    """A workspace holding one imported run whose loss went NaN at its last step."""
    from tina_core.importer.readers import import_run

    src = tmp_path / "metrics.jsonl"
    src.write_text("".join(json.dumps({"step": s, "loss": float("nan") if s == 5 else 0.5,
                                       "rewards/format_reward/mean": s / 10}) + "\n" for s in range(1, 6)))
    home = tmp_path / "home"
    rd = import_run(home, src, name="nan-loss")
    rd.train_log.write_text("".join(f"line {i}\n" for i in range(1, 11)))
    return home, rd


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_json_output_is_always_json(imported):
    """Attack 7: NaN or Infinity in `--json` output is not JSON; such numbers are null."""
    home, rd = imported
    from tina_core.rundir import write_json_atomic

    # a price from before prices were checked
    write_json_atomic(rd.run_json, {**rd.info(), "gpu_hour_usd": float("inf"), "cpu_hour_usd": float("inf")})
    [run] = _strict_json(tina(home, "ls", "--json").stdout)
    assert run["step"] == 5 and run["gpu_hour_usd"] is None
    assert _strict_json(tina(home, "status", rd.run_id, "--json").stdout)["run_id"] == rd.run_id
    _strict_json(tina(home, "report", "--json").stdout)


def test_ended_runs_are_listed_from_the_run_object_cache_until_their_files_change(imported):
    """`tina ls` and `tina status` of an ended run whose files are unchanged answer from the
    run-object cache, without the index (a deleted tina.duckdb stays deleted); the same objects
    as described afresh; a new event describes that run again; `tina ingest --rebuild` clears it."""
    from tina_core.report import run_cache

    home, rd = imported
    fresh = _strict_json(tina(home, "ls", "--json").stdout)
    assert run_cache.cache_path(home).is_file()
    (home / "tina.duckdb").unlink()
    assert _strict_json(tina(home, "ls", "--json").stdout) == fresh
    assert _strict_json(tina(home, "status", rd.run_id, "--json").stdout) == fresh[0]
    assert not (home / "tina.duckdb").exists()  # nothing needed the index

    rd.event("eval_queued", eval_id="ckpt5-arith-x", checkpoint=5, task="arith", tasks=["arith"], gpus=[])
    rd.event("eval_started", eval_id="ckpt5-arith-x", checkpoint=5, task="arith", gpus=[], pid=1)
    rd.event("eval_finished", eval_id="ckpt5-arith-x", checkpoint=5, task="arith", score=0.75, metric="acc",
             scores={"arith": 0.75})
    [run] = _strict_json(tina(home, "ls", "--json").stdout)
    assert run["evaluations"][0]["score"] == 0.75 and (home / "tina.duckdb").exists()
    run_cache.clear(home)
    assert _strict_json(tina(home, "ls", "--json").stdout) == [run]  # cached == described afresh
    assert "rebuilt" in tina(home, "ingest", "--rebuild").stdout and not run_cache.cache_path(home).exists()


def test_small_attacks_get_clear_errors_and_change_nothing(imported, tmp_path):
    """Attack 7: `tina logs -n -5` and `-n 0`, `--tasks ,,`, `tina report --plots` on a bad folder."""
    home, rd = imported
    out = tina(home, "logs", rd.run_id, "-n", "-5")
    assert out.returncode == 2 and "Invalid value for '--lines'" in out.stderr and out.stdout == ""
    out = tina(home, "logs", rd.run_id, "-n", "0")
    assert (out.returncode, out.stdout) == (0, "")
    assert tina(home, "logs", rd.run_id, "-n", "2").stdout.splitlines() == ["line 9", "line 10"]
    before = rd.events.read_bytes()
    out = tina(home, "eval", rd.run_id, "--checkpoint", "base", "--tasks", ",,")
    assert out.returncode == 2 and "--tasks ',,': names no task" in out.stderr
    assert rd.events.read_bytes() == before  # nothing queued
    afile = tmp_path / "afile"
    afile.write_text("")
    for bad in (afile, afile / "plots"):
        out = tina(home, "report", "--plots", str(bad))
        assert out.returncode == 2 and f"--plots {bad}: cannot use it as a folder" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""


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
    assert cli_runs.cli_run(tiny_home, TINY, overrides=["stop_at_step=4"], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "stop_at_step: 4" in out
    assert out.splitlines()[-1].endswith("-m tina_core.train " + shlex.quote(str(tiny_home / "runs" / "<run_id>")))
    assert _runs(tiny_home) == []


@pytest.mark.extended
def test_data_that_gives_no_batch_after_the_prompt_filter_fails_the_run(tiny_home, tmp_path):
    """The trainer's side of attack 7's one-row dataset: rows the check before launch counts but
    the prompt-length filter drops leave too few for a step; the run fails saying so, never a
    "finished" at step 0 without a checkpoint."""
    rows = [{"problem": "What is 1 + 1?", "answer": "2"}] + [{"problem": "What is 1 + 1? " * 40, "answer": "2"}] * 4
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tina(tiny_home, "run", *_tiny_args(4, 2), "--set", f"dataset.name={data}", timeout=300)
    assert out.returncode == 1, out.stderr
    [rd] = [RunDir(p) for p in _runs(tiny_home)]
    run = _status(tiny_home, rd.run_id)
    assert run["state"] == "failed" and "1 usable prompt(s) after dataset.max_prompt_tokens" in run["failure"]
    assert rd.checkpoint_steps() == []


@pytest.mark.extended
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

    lifecycle.resume_run(tiny_home, run_id)
    _wait(lambda: rd.checkpoint_steps()[-1] > stopped_at, 240, "a checkpoint of the resumed attempt")
    resumed = [e for e in rd.read_events() if e["event"] == "attempt_started"][-1]
    assert (resumed["attempt"], resumed["resume_from"]) == (2, stopped_at)
    os.kill(runstate.liveness(rd).trainer_pid, signal.SIGKILL)
    _wait(lambda: runstate.liveness(rd).state not in ("running", "stopping"), 240, "the run to end")

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


# --- a detached run through stop, resume and a dead supervisor -------------------------------------
def _environ(pid: int) -> dict[str, str]:
    """What a live process was started with (its /proc environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def _steps(rd: RunDir, attempt: int | None = None) -> list[int]:
    return [r["step"] for r in iter_jsonl(rd.metrics) if isinstance(r.get("step"), int) and "train_runtime" not in r
            and (attempt is None or r.get("attempt") == attempt)]


def _attempts(rd: RunDir) -> list[dict]:
    return [e for e in rd.read_events() if e["event"] == "attempt_started"]


def _refused(out: subprocess.CompletedProcess, rd: RunDir, events_before: bytes, *needles: str) -> None:
    """A refusal: non-zero, says why on stderr, and the run's record is untouched."""
    assert out.returncode == 2 and all(n in out.stderr for n in needles), (out.returncode, out.stderr)
    assert rd.events.read_bytes() == events_before


@pytest.mark.extended
@pytest.mark.slow
def test_detached_run_stop_resume_and_a_killed_supervisor(tiny_home, monkeypatch):
    """Done-when 2 and 3 on one detached tiny run, all through the CLI: two `tina stop` at once are
    one stop (the second told so) that saves a complete checkpoint at the step the trainer was on
    and leaves it `stopped`; `tina resume` continues from it; after kill -9 of the supervisor its
    orphaned trainer shows running with no supervisor, its time counted, and `tina resume` takes it
    over and finishes the run, each step once, cost over every attempt. Refusals leave the run as
    it was."""
    steps, save = 150, 25
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tina(tiny_home, "run", *_tiny_args(steps, save), "--set", "price.cpu_hour_usd=3.6",
               "--set", f"launch.env.HF_TOKEN={SECRET}", "--detach")
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    rd = RunDir(tiny_home / "runs" / run_id)
    _wait(lambda: len(_steps(rd)) >= 5, 120, "step 5")

    before = rd.events.read_bytes()
    _refused(tina(tiny_home, "resume", run_id), rd, before, "is running", "nothing to resume")

    cmd = [sys.executable, "-m", "tina_core.cli", "--home", str(tiny_home), "stop", run_id]
    both = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in both]
    assert [(p.returncode, o.strip()) for p, (o, _) in zip(both, outs)] == [(0, "stopped")] * 2, outs
    assert sum("already under way" in err for _, err in outs) <= 1  # the second may come once it stopped
    assert [e["event"] for e in rd.read_events()].count("stop_requested") == 1
    assert next(e for e in rd.read_events() if e["event"] == "attempt_exited")["code"] == 75  # saved, not killed
    asked = next(e["ts"] for e in rd.read_events() if e["event"] == "stop_requested")
    logged_before = max(r["step"] for r in iter_jsonl(rd.metrics) if r.get("ts", 0) < asked)
    stopped_at = _steps(rd)[-1]
    # Saved at the step in flight when the trainer heard the signal: after the last one logged before
    # the request was recorded (how many steps later depends on the machine's load, ~50 ms a step idle),
    # and well within one save interval of it: the stop does not wait for the save_steps grid.
    assert logged_before < stopped_at < logged_before + save
    assert rd.checkpoint_steps() == [s for s in range(save, stopped_at, save)] + [stopped_at]
    ckpt = rd.checkpoint_path(stopped_at)
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == stopped_at
    assert _status(tiny_home, run_id)["state"] == "stopped"
    before = rd.events.read_bytes()
    again = tina(tiny_home, "stop", run_id)
    assert (again.returncode, again.stdout.strip()) == (0, "stopped") and "already stopped" in again.stderr
    assert rd.events.read_bytes() == before
    # The token given with --set is nowhere on disk: resuming needs it from the shell again.
    _refused(tina(tiny_home, "resume", run_id, "--detach"), rd, before, "HF_TOKEN", "export HF_TOKEN=")

    out = tina(tiny_home, "resume", run_id, "--detach", env={"HF_TOKEN": SECRET})
    assert (out.returncode, out.stdout.strip()) == (0, run_id), out.stderr
    resumed = _wait(lambda: _attempts(rd)[1:], 30, "the resumed attempt")[0]
    assert (resumed["attempt"], resumed["resume_from"]) == (2, stopped_at)
    trainer = resumed["pid"]
    assert _environ(trainer)["HF_TOKEN"] == SECRET
    _wait(lambda: len(_steps(rd, attempt=2)) >= 5, 120, "5 steps of the resumed attempt")
    assert min(_steps(rd, attempt=2)) == stopped_at + 1

    os.kill(runstate.liveness(rd).supervisor_pid, signal.SIGKILL)
    _wait(lambda: runstate.liveness(rd).supervisor_gone, 60, "the supervisor gone")
    # an orphan now, still training with nobody reading its output: running, and billed
    orphaned = _status(tiny_home, run_id)
    assert (orphaned["state"], orphaned["supervisor"], orphaned["orphan_trainer_pid"]) == ("running", "gone", trainer)
    _wait(lambda: _status(tiny_home, run_id)["elapsed_s"] > orphaned["elapsed_s"] + 1, 60, "its clock")
    assert "no supervisor" in tina(tiny_home, "ls").stdout

    out = tina(tiny_home, "resume", run_id, env={"HF_TOKEN": SECRET}, timeout=240)  # foreground, to the end
    assert out.returncode == 0, out.stderr
    assert not runstate.pid_alive(trainer)  # stopped, not left beside the new attempt
    run = _status(tiny_home, run_id)
    assert (run["state"], run["step"], run["attempts"]) == ("finished", steps, 3)
    orphan = next(e for e in rd.read_events() if e["event"] == "attempt_exited" and e["attempt"] == 2)
    assert orphan["orphan"] and "end_ts" not in orphan  # alive until the resume stopped it: all paid for
    # the resume stopped the orphan with SIGTERM, it saved at its step, and attempt 3 went on from there
    third = _attempts(rd)[-1]
    assert third["resume_from"] == max(_steps(rd, attempt=2)) > stopped_at + 5
    # every step once in the index: the latest attempt's, the dead supervisor's leftovers superseded
    from tina_core.store.index import Store

    store = Store(tiny_home)
    store.ingest([run_id])
    series = store.metric_series(run_id, "rewards/format_reward/mean", max_points=None)
    assert [s for s, _ in series] == list(range(1, steps + 1))
    clock, _ = store.step_clock(run_id)
    by = {s: a for s, (_, a) in clock.items()}
    assert {by[s] for s in range(1, stopped_at + 1)} == {1}
    assert {by[s] for s in range(stopped_at + 1, third["resume_from"] + 1)} == {2}
    assert {by[s] for s in range(third["resume_from"] + 1, steps + 1)} == {3}
    # $3.60 per CPU-hour is $0.001 per second of trainer life, summed over the three attempts
    ev = rd.read_events()
    ends = {e["attempt"]: e.get("end_ts", e["ts"]) for e in ev if e["event"] == "attempt_exited"}
    lives = [ends[e["attempt"]] - e["ts"] for e in _attempts(rd)]
    assert run["cost_usd"]["train"] == pytest.approx(sum(lives) * 0.001, abs=1e-3)
    assert run["cost_usd"]["train"] > max(lives) * 0.001 + 1e-3

    before = rd.events.read_bytes()
    _refused(tina(tiny_home, "resume", run_id), rd, before, "is finished")
    for path in rd.path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_bytes().decode(errors="replace"), path


# --- a foreground run: the progress display, and credentials kept off disk and screen -------------
ENV_SECRET = "wandb_cliENVkey0123456789"  # in the environment of `tina run`, as a user exports it
HUB_SECRET = "hf_hubtokCLI0123456789"  # in a recipe field other than launch.env
_PLAIN_LINE = re.compile(r"^step (\d+)/(\d+)  format (\d\.\d{3})  accuracy (\d\.\d{3})  length (\d+\.\d)  "
                         r"(\d+\.\d\d) s/step  ETA (\d+:\d\d:\d\d)  \$(\d+\.\d{4}) \(projected \$(\d+\.\d{4})\)$")
_SECRET_ARGS = ("--set", f"launch.env.HF_TOKEN={SECRET}", "--set", "price.cpu_hour_usd=3.6")


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and ENV_SECRET not in text and HUB_SECRET not in text


def _no_secret_in_the_index(db: Path) -> None:
    """No text column of any table of the index holds a credential (DuckDB may compress strings,
    so the file's bytes alone do not tell)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        columns = con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal "
                              "AND data_type IN ('VARCHAR', 'JSON')").fetchall()
        assert ("runs", "info") in columns and ("events", "data") in columns
        for table, column in columns:
            for value in (SECRET, ENV_SECRET, HUB_SECRET):
                n = con.execute(f'SELECT count(*) FROM "{table}" WHERE CAST("{column}" AS VARCHAR) LIKE ?',
                                [f"%{value}%"]).fetchone()[0]
                assert n == 0, (table, column)
    finally:
        con.close()


@pytest.mark.extended
@pytest.mark.slow
def test_foreground_run_prints_plain_progress_and_no_credential(tiny_home):
    """`tina run` with its output piped: plain progress lines with every figure. A token given with
    --set launch.env and a key in tina's environment reach the trainer's environment; they and a
    token in another recipe field (grpo.hub_token) reach no file of the workspace (nor the index, nor
    the checkpoint's training_args.bin), no output of run / --dry-run / status --json / logs. No GPU
    here: no system.jsonl."""
    env = {"WANDB_API_KEY": ENV_SECRET}
    hub = ("--set", f"grpo.hub_token={HUB_SECRET}")
    dry = tina(tiny_home, "run", *_tiny_args(6, 3), *_SECRET_ARGS, *hub, "--dry-run", env=env)
    assert dry.returncode == 0 and "HF_TOKEN: '***'" in dry.stdout and "hub_token: '***'" in dry.stdout
    proc = subprocess.Popen([sys.executable, "-m", "tina_core.cli", "--home", str(tiny_home), "run",
                             *_tiny_args(6, 3), *_SECRET_ARGS, *hub], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    run_id = proc.stdout.readline().strip()
    rd = RunDir(tiny_home / "runs" / run_id)
    seen = _environ(_wait(lambda: _attempts(rd), 120, "the trainer")[0]["pid"])  # read while it runs
    assert (seen["HF_TOKEN"], seen["WANDB_API_KEY"]) == (SECRET, ENV_SECRET)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err

    progress = [m for m in map(_PLAIN_LINE.match, err.splitlines()) if m]
    assert progress, err
    last = progress[-1]
    assert (int(last[1]), int(last[2])) == (6, 6)  # step of stop_at_step
    assert float(last[6]) > 0 and last[7] == "0:00:00"  # s/step, and nothing left at the end
    assert 0 < float(last[8]) <= float(last[9])  # $ so far (CPU at $3.60/h), projected to step 6
    run = _status(tiny_home, run_id)
    assert float(last[8]) <= run["cost_usd"]["total"] + 1e-4  # shown when step 6 came, before the save and exit
    assert not rd.system.exists()  # the tiny recipe asks for no GPU, and this machine has none

    status, logs = tina(tiny_home, "status", run_id, "--json"), tina(tiny_home, "logs", run_id, "-n", "500")
    assert "saved checkpoint-6" in logs.stdout
    _no_secret(dry.stdout, dry.stderr, out, err, status.stdout, status.stderr, logs.stdout, logs.stderr)
    for path in tiny_home.rglob("*"):  # the run directory and the index
        if path.is_file():
            _no_secret(path.read_bytes().decode(errors="replace"))
    _no_secret_in_the_index(tiny_home / "tina.duckdb")
    assert rd.info()["overrides"][-1] == "grpo.hub_token=***" and "grpo.hub_token=***" in rd.info()["tina_command"]
    import torch

    args = torch.load(rd.checkpoint_path(6) / "training_args.bin", weights_only=False)
    assert args.hub_token is None and HUB_SECRET not in repr(vars(args))


def _run_on_a_terminal(home: Path, args: list[str], columns: int = 120) -> str:
    """Run `tina` on a pseudo-terminal of ``columns`` and return what it drew, escapes removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    proc = subprocess.Popen([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm-256color"})
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    assert proc.wait(timeout=30) == 0, screen.decode(errors="replace")[-3000:]
    return re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\r", "", screen.decode(errors="replace"))


@pytest.mark.slow
def test_foreground_run_on_a_terminal_draws_the_live_panel(tiny_home):
    """On a terminal `tina run` draws a live panel with the same figures as the plain lines."""
    screen = _run_on_a_terminal(tiny_home, ["run", *_tiny_args(6, 3), *_SECRET_ARGS])
    assert not any(_PLAIN_LINE.match(line) for line in screen.splitlines())  # not the piped form
    final = screen[screen.rindex("step 6/6"):]  # the last frame
    assert re.search(r"━+ +step 6/6 +\d+\.\d\d s/step +ETA 0:00:00", screen)
    assert re.search(r"format \d\.\d{3} +accuracy \d\.\d{3} +completion length \d+\.\d", final)
    assert re.search(r"cost \$0\.0\d{3} at \$\d\.\d\d/h +projected \$0\.0\d{3}", final)
    assert "at $3.60/h" in screen  # while the trainer was alive
    assert "Ctrl-C: save and stop" in final
    _no_secret(screen)


def test_ls_and_status_answer_as_typer_would_without_it(tmp_path):
    """`tina ls` and `tina status RUN` skip Typer (its pydantic import is half a listing's time): in
    every spelling the short path takes, a fresh process prints exactly what the Typer command prints,
    and never imports Typer; any other spelling is Typer's."""
    from typer.testing import CliRunner

    from tina_core.cli.commands import app
    from tina_tui.demo import SyntheticRun

    home = tmp_path / "h"
    SyntheticRun("one-20260101-000000-0001", name="one", steps=30, stop_at_step=30, save_steps=10,
                 transition=12).write(home)
    SyntheticRun("two-20260101-000000-0002", name="two", steps=20, stop_at_step=40, save_steps=10,
                 state="stopped").write(home)
    probe = "import sys, runpy; sys.argv[0] = 'tina'; " \
            "import atexit; atexit.register(lambda: print('typer' in sys.modules, file=sys.stderr)); " \
            "runpy.run_module('tina_core.cli', run_name='__main__')"
    for args in (["ls"], ["ls", "--json"], ["status", "one"], ["status", "two", "--json"], ["status", "--json", "one"]):
        for spelt in (["--home", str(home), *args], [f"--home={home}", *args]):
            fast = subprocess.run([sys.executable, "-c", probe, *spelt], cwd=ROOT, capture_output=True, text=True)
            typed = CliRunner().invoke(app, ["--home", str(home), *args])
            assert (fast.returncode, fast.stdout) == (typed.exit_code, typed.output), (spelt, fast.stderr)
            assert fast.stderr.strip().endswith("False"), (spelt, fast.stderr)  # Typer never imported
    # --help, a wrong run, an unknown option: Typer's, or the same refusal
    helped = subprocess.run([sys.executable, "-c", probe, "--home", str(home), "ls", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "All runs in the workspace" in helped.stdout and helped.stderr.strip().endswith("True")
    missing = tina(home, "status", "nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
    unknown = tina(home, "ls", "--jsn")
    assert unknown.returncode == 2 and "--jsn" in unknown.stderr
