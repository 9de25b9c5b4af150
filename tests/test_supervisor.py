"""Supervision under failure: restarts, give-up, SIGTERM-deaf trainers, dead supervisors, the lock,
secrets. Real processes and real signals; the trainer here is a small script that keeps the
trainer's contract (ARCHITECTURE.md) with sleeps instead of GRPO steps, so each case runs in
seconds and can misbehave on purpose. The real tiny trainer is exercised in test_cli.py (stop, resume,
a killed trainer, a killed supervisor, secrets, the progress display)."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from tina_core.supervise import lifecycle
from tina_core import runstate
from tina_core.analysis import cost
from tina_core.report import runs
from tina_core.supervise import supervisor
from tina_core.rundir import RunDir, TinaError, create_run_dir, iter_jsonl, write_json_atomic

CONTRACT_TRAINER = r'''
import os, signal, subprocess, sys, time
from pathlib import Path
run = Path(sys.argv[1]); stop_at = int(os.environ.get("FT_STOP", "10")); save = int(os.environ.get("FT_SAVE", "3"))
attempt = int(os.environ["TINA_ATTEMPT"]); term = []
def say(text):  # as the trainer does: a dead supervisor's pipe drops the output, training goes on
    global say
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w"); say = lambda text: None
if os.environ.get("FT_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
if os.environ.get("FT_CHILD"):  # a worker in the trainer's group, like a vLLM engine
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    (run / "child.pid").write_text(str(child.pid))
ck = run / "checkpoints"
done = sorted(int(p.name.split("-")[1]) for p in ck.glob("checkpoint-*") if (p / "tina-complete.json").exists())
step = done[-1] if done else 0
say(f"attempt {attempt} from step {step}; token {os.environ.get('HF_TOKEN')}")
if os.environ.get("FT_SPAM"):  # far more output than a pipe holds
    for _ in range(int(os.environ["FT_SPAM"]) // 100):
        sys.stdout.write("x" * 99 + "\n")
    sys.stdout.flush()
from tina_core.rundir import RunDir  # the trainer's own writers
rd = RunDir(run)
def save_ck(s):
    rd.checkpoint_path(s).mkdir(parents=True, exist_ok=True); rd.mark_complete(s, attempt)
while step < stop_at:
    time.sleep(float(os.environ.get("FT_SLEEP", "0.05")))
    step += 1
    jump = int(os.environ.get("FT_JUMP_AT", "0"))  # a format reward that turns there (a phase transition)
    fmt = (0.9 + 0.01 * (step % 3) if step >= jump else 0.02 * (step % 3)) if jump else step / stop_at
    rd.log_metrics(step, attempt, {"rewards/format_reward/mean": fmt})
    if step % save == 0 or step == stop_at:
        save_ck(step)
    if step == int(os.environ.get("FT_HANG_AT", "0")):  # alive, logging nothing (a hung collective)
        time.sleep(float(os.environ["FT_HANG_S"]))
    crash_at = int(os.environ.get("FT_CRASH_AT", "0"))
    if step == crash_at and (attempt == 1 or os.environ.get("FT_CRASH_ALWAYS")):
        os.kill(os.getpid(), signal.SIGKILL)
    if term:
        time.sleep(float(os.environ.get("FT_SAVE_S", "0")))  # a slow save
        save_ck(step); sys.exit(75)
sys.exit(0)
'''


@pytest.fixture
def make_run(tmp_path, monkeypatch):
    """A run directory whose command is the contract trainer (or ``command``)."""
    script = tmp_path / "contract_trainer.py"
    script.write_text(CONTRACT_TRAINER)
    home = tmp_path / "home"
    monkeypatch.setenv("TINA_HOME", str(home))
    monkeypatch.setenv("TINA_RESTART_BACKOFF_S", "0.2")
    monkeypatch.setenv("TINA_STOP_TIMEOUT_S", "5")

    def make(command=None, stop_at=10, **info) -> RunDir:
        rd = create_run_dir(home, "contract")
        rd.recipe.write_text("name: contract\n")
        write_json_atomic(rd.run_json, {
            "run_id": rd.run_id, "name": "contract", "created": "now", "device": "cpu", "gpu_count": 0,
            "gpu_hour_usd": 0.0, "cpu_hour_usd": 3.6, "stop_at_step": stop_at, "max_restarts": 3,
            "command": command or [sys.executable, str(script), str(rd.path)], **info})
        rd.event("launched", recipe="contract", command=command, gpus=0, gpu_hour_usd=0.0, device="cpu")
        return rd
    make.home = home
    return make


def _events(rd: RunDir) -> list[str]:
    return [e["event"] for e in rd.read_events()]


def _wait_state(rd: RunDir, states, timeout=30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = runstate.liveness(rd).state
        if state in states:
            return state
        time.sleep(0.1)
    raise AssertionError(f"run stayed {state}, wanted {states}")


def test_crash_is_restarted_and_each_step_counted_once(make_run, monkeypatch):
    monkeypatch.setenv("FT_CRASH_AT", "5")  # SIGKILL after checkpoint-3: steps 4-5 are redone
    rd = make_run()
    assert supervisor.Supervisor(rd).run() == "finished"
    ev = rd.read_events()
    exited = [e for e in ev if e["event"] == "attempt_exited"]
    assert [(e["attempt"], e["code"], e["signal"]) for e in exited] == [(1, -9, "SIGKILL"), (2, 0, None)]
    started = [e for e in ev if e["event"] == "attempt_started"]
    assert started[1]["resume_from"] == 3
    assert [e for e in ev if e["event"] == "restarted"][0]["attempt"] == 2
    times = cost.step_times(iter_jsonl(rd.metrics))
    assert list(times) == list(range(1, 11))
    assert all(a == 2 for s, (_, a) in times.items() if s > 3)
    run = runs.describe(runstate.run_home(rd), rd)
    assert (run["state"], run["restarts"], run["attempts"], run["step"]) == ("finished", 1, 2, 10)
    # $3.60/h on CPU is $0.001/s: the cost covers both attempts' lifetimes
    lifetimes = sum(x["ts"] - s["ts"] for s, x in zip(started, exited))
    assert run["cost_usd"]["train"] == pytest.approx(lifetimes * 0.001, abs=2e-4)
    assert run["cost_usd"]["train"] > (exited[0]["ts"] - started[0]["ts"]) * 0.001


def test_gives_up_after_max_restarts(make_run, monkeypatch):
    monkeypatch.setenv("FT_CRASH_AT", "2")
    monkeypatch.setenv("FT_CRASH_ALWAYS", "1")
    rd = make_run(max_restarts=2)
    assert supervisor.Supervisor(rd).run() == "failed"
    ev = rd.read_events()
    assert sum(e["event"] == "attempt_started" for e in ev) == 3
    assert [e["delay_s"] for e in ev if e["event"] == "restarted"] == [0.2, 0.4]  # back-off doubles
    assert "gave up after 2 restarts" in ev[-1]["reason"]
    assert runstate.liveness(rd).state == "failed"


def test_trainer_failing_before_any_step_is_not_restarted(make_run):
    rd = make_run([sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"])
    assert supervisor.Supervisor(rd).run() == "failed"
    assert _events(rd).count("attempt_started") == 1
    assert "exit code 3 before its first step" in rd.read_events()[-1]["reason"]
    assert "bad config" in rd.train_log.read_text()


def test_stop_kills_the_whole_group_of_a_trainer_deaf_to_sigterm(make_run, monkeypatch):
    monkeypatch.setenv("FT_IGNORE_TERM", "1")
    monkeypatch.setenv("FT_CHILD", "1")
    monkeypatch.setenv("FT_STOP", "100000")
    monkeypatch.setenv("TINA_STOP_TIMEOUT_S", "1")
    rd = make_run()
    pid = lifecycle.spawn_daemon(rd)
    _wait_for(lambda: (rd.path / "child.pid").exists())
    child = int((rd.path / "child.pid").read_text())
    assert lifecycle.stop_run(runstate.run_home(rd), rd.run_id, wait=True, timeout=20).state == "stopped"
    assert not runstate.pid_alive(child)
    _wait_for(lambda: not runstate.pid_alive(pid), timeout=10)  # the daemon exits after "stopped"
    kinds = _events(rd)
    assert kinds[-3:] == ["stop_requested", "attempt_exited", "stopped"]
    assert rd.read_events()[-2]["signal"] == "SIGKILL"


def test_stale_heartbeat_is_crashed_never_running(make_run):
    rd = make_run()
    rd.event("supervisor_started", pid=os.getpid())
    write_json_atomic(rd.supervisor, {"pid": os.getpid(), "heartbeat": time.time()})
    assert runstate.liveness(rd).state == "running"
    write_json_atomic(rd.supervisor, {"pid": os.getpid(), "heartbeat": time.time() - 20})
    assert runstate.liveness(rd).state == "crashed"


def test_one_supervisor_per_run(make_run, monkeypatch):
    monkeypatch.setenv("FT_STOP", "100000")
    rd = make_run()
    lifecycle.spawn_daemon(rd)
    before = rd.events.read_bytes()
    second = subprocess.run([sys.executable, "-m", "tina_core.supervise", str(rd.path)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 2 and "already supervised" in second.stderr
    with pytest.raises(TinaError, match="is running"):
        lifecycle.resume_run(runstate.run_home(rd), rd.run_id)
    assert rd.events.read_bytes().startswith(before)
    assert _events(rd).count("supervisor_started") == 1
    lifecycle.stop_run(runstate.run_home(rd), rd.run_id, wait=True, timeout=20)


def test_secrets_never_reach_the_run_directory(make_run, monkeypatch):
    token = "hf_TESTSECRETvalue0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("FT_STOP", "3")
    rd = make_run()
    assert supervisor.Supervisor(rd).run() == "finished"
    assert "token ***" in rd.train_log.read_text()
    for path in rd.path.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


def _wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_logs_follow_ends_with_the_run(make_run, monkeypatch):
    monkeypatch.setenv("FT_SLEEP", "0.1")
    rd = make_run()
    lifecycle.spawn_daemon(rd)
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(make_run.home), "logs", "-f",
                          rd.run_id], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "attempt 1 from step 0" in out.stdout and out.stdout.rstrip().endswith("finished")


def test_a_second_stop_is_one_graceful_stop(make_run, monkeypatch):
    """Attack 3: `tina stop RUN & tina stop RUN & wait` used to be taken as a second Ctrl-C, the
    trainer killed without saving. Now one graceful stop (a checkpoint at the step it was on, exit
    75); the second caller is told a stop is under way; a repeated SIGTERM changes nothing."""
    monkeypatch.setenv("FT_STOP", "100000")
    monkeypatch.setenv("FT_SLEEP", "0.2")
    monkeypatch.setenv("FT_SAVE_S", "5")  # a slow save: the second `tina stop` comes while it saves
    monkeypatch.setenv("TINA_STOP_TIMEOUT_S", "120")
    rd = make_run()
    pid = lifecycle.spawn_daemon(rd)
    _wait_for(lambda: rd.metrics.exists())
    cmd = [sys.executable, "-m", "tina_core.cli", "--home", str(make_run.home), "stop", rd.run_id]
    both = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    _wait_for(lambda: "stop_requested" in _events(rd))
    os.kill(pid, signal.SIGTERM)  # and one more, as `kill` or a process manager sends it
    outs = [p.communicate(timeout=60) for p in both]
    assert [p.returncode for p in both] == [0, 0] and [o.strip() for o, _ in outs] == ["stopped", "stopped"], outs
    said = sorted(err for _, err in outs)
    assert "already under way" in said[0] and "asked" in said[1], said
    events = rd.read_events()
    assert [e["event"] for e in events].count("stop_requested") == 1
    exited = next(e for e in events if e["event"] == "attempt_exited")
    assert (exited["code"], exited["signal"]) == (75, None)  # saved and exited, never killed
    assert exited["step"] == max(rd.checkpoint_steps()) == events[-1]["step"]  # no step lost
    assert runstate.liveness(rd).state == "stopped"


def test_a_second_ctrl_c_at_the_terminal_does_not_wait(make_run, monkeypatch):
    """The one stop that is not idempotent on purpose: a second Ctrl-C at the foreground terminal
    means "don't wait for the checkpoint" (a trainer deaf to SIGTERM here: it would never save)."""
    monkeypatch.setenv("FT_STOP", "100000")
    monkeypatch.setenv("FT_IGNORE_TERM", "1")
    monkeypatch.setenv("TINA_STOP_TIMEOUT_S", "600")
    rd = make_run()
    foreground = ("import sys; from pathlib import Path; from tina_core.rundir import RunDir; "
                  "from tina_core.supervise import lifecycle, supervisor; "
                  "sys.exit(supervisor.EXIT_CODES[lifecycle.supervise_foreground(RunDir(Path(sys.argv[1])))])")
    proc = subprocess.Popen([sys.executable, "-c", foreground, str(rd.path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # as `tina run` in the foreground
    _wait_for(lambda: len(list(iter_jsonl(rd.metrics))) >= 2)
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: "stop_requested" in _events(rd))
    proc.send_signal(signal.SIGTERM)  # not from the terminal: changes nothing
    time.sleep(1)
    assert proc.poll() is None and runstate.liveness(rd).state == "stopping"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == supervisor.EXIT_STOPPED
    assert next(e for e in rd.read_events() if e["event"] == "attempt_exited")["signal"] == "SIGKILL"


def test_stop_without_a_supervisor_stops_the_orphan(make_run, monkeypatch):
    """Attack 4: after kill -9 of the supervisor its trainer trains on. The run is not "crashed"
    while it does: it is running with no supervisor, its clock and cost go on, and `tina stop`
    stops the orphan at a checkpoint of its current step and closes its attempt then."""
    monkeypatch.setenv("FT_STOP", "100000")
    rd = make_run()
    home = runstate.run_home(rd)
    pid = lifecycle.spawn_daemon(rd)
    _wait_for(lambda: runstate.liveness(rd).trainer_pid)
    trainer = runstate.liveness(rd).trainer_pid
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: runstate.liveness(rd).supervisor_gone)
    live = runstate.liveness(rd)
    assert (live.state, live.supervisor, live.orphan_trainer_pid) == ("running", "gone", trainer)
    first = runs.describe(home, rd)
    assert (first["state"], first["supervisor"], first["orphan_trainer_pid"]) == ("running", "gone", trainer)
    assert first["supervisor_pid"] is None
    _wait_for(lambda: runs.describe(home, rd)["elapsed_s"] >= first["elapsed_s"] + 1)  # billed as it trains on
    assert runstate.can_resume(live.state, live.supervisor_gone)

    outcome = lifecycle.stop_run(home, rd.run_id)
    assert outcome.state == "stopped" and "orphaned trainer" in outcome.said
    assert not runstate.pid_alive(trainer)
    assert runstate.liveness(rd).state == "stopped"
    assert _events(rd)[-3:] == ["stop_requested", "attempt_exited", "stopped"]
    closed = rd.read_events()[-2]
    saved = max(rd.checkpoint_steps())
    assert closed["orphan"] and "end_ts" not in closed and closed["step"] == saved  # stopped at a checkpoint
    again = lifecycle.stop_run(home, rd.run_id)  # say so, change nothing
    assert again.state == "stopped" and "already stopped" in again.said and _events(rd)[-1] == "stopped"


def test_a_policy_for_an_orphan_says_who_enforces_it_and_resume_quotes_all_it_spent(make_run, monkeypatch, capsys):
    """Attack 5: `tina policy` on an orphaned run (supervisor killed) said "changed" and nothing ever
    enforced it; `tina resume` then quoted a spend without the orphan's time. The change is
    recorded and said to wait for `tina resume`; the spend counts the orphan's time to now; on a
    stopped run the policy acts from its next resume."""
    from tina_core.cli import runs as cli_runs

    monkeypatch.setenv("FT_STOP", "100000")
    rd = make_run()  # $3.60 a CPU-hour: $0.001 a second
    home = runstate.run_home(rd)
    pid = lifecycle.spawn_daemon(rd)
    _wait_for(lambda: runstate.liveness(rd).trainer_pid)
    trainer = runstate.liveness(rd).trainer_pid
    try:
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: runstate.liveness(rd).supervisor_gone)
        assert cli_runs.cli_policy(home, rd.run_id, budget_usd="0.00001") == 0
        said = capsys.readouterr().out
        assert "stop policy recorded" in said and "budget $1e-05" in said
        assert f"nothing enforces it until `tina resume {rd.run_id}`" in said and f"pid {trainer}" in said
        recorded = rd.read_events()[-1]["ts"]
        _wait_for(lambda: [r for r in iter_jsonl(rd.metrics) if r["ts"] > recorded + 1])  # the orphan trains on
        logged = list(iter_jsonl(rd.metrics))[-1]["ts"]
        with pytest.raises(TinaError, match="too little is left for a step") as refused:
            lifecycle.check_resumable(home, rd.run_id)
        spent = float(re.search(r"has spent \$([0-9.e-]+) of", str(refused.value)).group(1))
        started = next(e["ts"] for e in rd.read_events() if e["event"] == "attempt_started")
        assert spent >= (logged - started) * 0.001 * 0.999  # up to now, not to the last event (4 digits said)
        assert lifecycle.stop_run(home, rd.run_id).state == "stopped"
    finally:
        runstate.kill_group(trainer)
    assert cli_runs.cli_policy(home, rd.run_id, after_transition="3") == 0
    assert "the run is stopped: it acts from its next `tina resume`" in capsys.readouterr().out


def test_an_orphan_that_trained_to_the_end_is_billed_to_its_last_step(make_run, monkeypatch):
    """Attack 4, the rest: the orphan finishes on its own while nobody watches. Its attempt counts
    up to its last metrics line, not the dead supervisor's last heartbeat, in `tina status` and
    once `tina resume` closes it. It is shown finished (issue 19's attack 8: it was `crashed`):
    its metrics reached stop_at_step and its checkpoint there is complete."""
    monkeypatch.setenv("FT_STOP", "40")
    monkeypatch.setenv("FT_SLEEP", "0.1")
    rd = make_run(stop_at=40)
    home = runstate.run_home(rd)
    pid = lifecycle.spawn_daemon(rd)
    _wait_for(lambda: len(list(iter_jsonl(rd.metrics))) >= 3)
    trainer = runstate.liveness(rd).trainer_pid
    os.kill(pid, signal.SIGKILL)
    beat = json.loads(rd.supervisor.read_text())["heartbeat"]
    _wait_for(lambda: not runstate.pid_alive(trainer), timeout=60)  # trained to step 40 and exited
    last = list(iter_jsonl(rd.metrics))[-1]
    assert last["step"] == 40 and last["ts"] > beat + 2
    started = next(e["ts"] for e in rd.read_events() if e["event"] == "attempt_started")
    run = runs.describe(home, rd)
    assert (run["state"], run["supervisor"], run["step"]) == ("finished", None, 40)
    assert run["elapsed_s"] == pytest.approx(last["ts"] - started, abs=0.2)
    with pytest.raises(TinaError, match="is finished"):
        lifecycle.check_resumable(home, rd.run_id)
    # without its checkpoint at step 40 it did not finish: crashed, and `tina resume` closes it
    (rd.checkpoint_path(40) / "tina-complete.json").unlink()
    assert runstate.liveness(rd).state == "crashed"
    assert lifecycle.spawn_daemon(rd, resume=True)  # `tina resume --detach`
    _wait_state(rd, ["finished"])
    closed = next(e for e in rd.read_events() if e["event"] == "attempt_exited")
    assert closed["orphan"] and closed["end_ts"] == last["ts"] and closed["step"] == 40
    run = runs.describe(home, rd)
    assert run["elapsed_s"] >= round(last["ts"] - started, 1)


def test_a_full_disk_under_train_log_neither_stalls_nor_hides(make_run, monkeypatch):
    """The supervisor (and so its trainer) under a 64 KiB file-size limit, which fails writes past
    it as a full disk does (EFBIG; Python ignores SIGXFSZ). The trainer prints 2 MB, far more than
    its pipe holds: a log pump that stopped reading at the first refused write would block it
    there for good while the heartbeat went on. events.jsonl and metrics.jsonl stay small."""
    limit = 64 * 1024
    monkeypatch.setenv("FT_SPAM", str(2_000_000))
    monkeypatch.setenv("FT_STOP", "4")
    rd = make_run()
    proc = subprocess.run([sys.executable, "-m", "tina_core.supervise", str(rd.path)], capture_output=True,
                          text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert runstate.liveness(rd).state == "finished"
    assert [r["step"] for r in iter_jsonl(rd.metrics)] == [1, 2, 3, 4]
    assert rd.train_log.stat().st_size <= limit
    ev = rd.read_events()
    failed = [e for e in ev if e["event"] == "write_failed"]
    assert [(e["file"], e["error"], e["attempt"]) for e in failed] == [("train.log", "File too large while writing train.log", 1)]
    lost = [e for e in ev if e["event"] == "attempt_exited"][0]["lost_log_bytes"]
    assert 2_000_000 - limit <= lost <= 2_000_000
    run = runs.describe(runstate.run_home(rd), rd)
    assert run["write_errors"] == [{"file": "train.log", "error": "File too large while writing train.log",
                                    "attempt": 1, "lost_bytes": lost}]
    shown = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(make_run.home), "status", rd.run_id],
                           capture_output=True, text=True, timeout=60).stdout
    assert f"warning: attempt 1: File too large while writing train.log ({lost} bytes of trainer output lost)" in shown


def test_the_daemon_log_masks_credentials(make_run, monkeypatch, tmp_path):
    """supervisor.log takes the detached supervisor's own stdout and stderr. A warning or a
    traceback there may quote a credential: here the daemon's last words at exit (a
    sitecustomize on its PYTHONPATH), through sys.stderr and straight to file descriptor 2."""
    token = "hf_DAEMONlogSECRET0123456789"
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "def last_words():\n"
        "    print('leaving with', os.environ.get('HF_TOKEN'), file=sys.stderr, flush=True)\n"
        "    os.write(2, f\"and at fd 2: {os.environ.get('HF_TOKEN')}\\n\".encode())\n"
        "atexit.register(last_words)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("FT_STOP", "2")
    rd = make_run()
    pid = lifecycle.spawn_daemon(rd)
    _wait_state(rd, ["finished"])
    _wait_for(lambda: not runstate.pid_alive(pid))
    log = rd.path / supervisor.LOG_NAME
    _wait_for(lambda: "and at fd 2" in log.read_text())  # its writer outlives the daemon
    assert "leaving with ***\nand at fd 2: ***\n" in log.read_text()
    for path in rd.path.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


def test_an_event_the_disk_cut_short_goes_in_whole_once_there_is_room(make_run):
    """A file-size limit just past events.jsonl's end cuts the next event off after 30 bytes, as a
    disk filling mid-write does: the supervisor keeps the event and writes it at a later tick,
    finishing the torn line rather than leaving half a record for the index to set aside."""
    rd = make_run()
    script = f"""
import resource
from pathlib import Path
from tina_core.rundir import RunDir
from tina_core.supervise.supervisor import Supervisor
sup = Supervisor(RunDir(Path({str(rd.path)!r})))
resource.setrlimit(resource.RLIMIT_FSIZE, ({rd.events.stat().st_size} + 30, resource.RLIM_INFINITY))
sup.event("stop_requested", by="test")
assert [e["event"] for e in sup._pending] == ["stop_requested", "write_failed"], sup._pending
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
sup.tick()
assert not sup._pending
"""
    before = rd.events.read_bytes()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    after = rd.events.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 2
    ev = rd.read_events()
    assert [e["event"] for e in ev[-2:]] == ["stop_requested", "write_failed"]
    assert ev[-1]["error"] == "File too large while writing events.jsonl"


def test_alerts_of_a_supervised_run_go_out_as_they_are_recorded(make_run, monkeypatch):
    from test_alerts import Hook

    # a crash and its restart, a hang of the second attempt, a budget passed, and the end
    monkeypatch.setenv("FT_CRASH_AT", "5")
    monkeypatch.setenv("FT_HANG_AT", "7")
    monkeypatch.setenv("FT_HANG_S", "3")
    monkeypatch.setattr(supervisor, "BUDGET_CHECK_S", 0.1)
    hook = Hook()
    try:
        rd = make_run()  # $3.60 per CPU-hour: $0.001 a second
        (make_run.home / "config.yaml").write_text(
            f"alerts:\n  webhook: {hook.url}\n  stall_after_s: 1\n  budget_usd: [0.002]\n")
        assert supervisor.Supervisor(rd).run() == "finished"
        # run() returned: what it recorded has gone out (the end too, before the process would exit)
        kinds = hook.events()
    finally:
        hook.close()
    assert kinds[0] == "restarted" and kinds[-1] == "finished" and {"stalled", "budget_reached"} <= set(kinds)
    assert kinds == [e for e in _events(rd) if e in set(kinds)]  # each as and when it was recorded
    stalled = next(b["record"] for b in hook.bodies if b["event"] == "stalled")
    assert (stalled["attempt"], stalled["step"]) == (2, 7) and stalled["after_s"] >= 1
    assert next(b["record"] for b in hook.bodies if b["event"] == "budget_reached")["threshold_usd"] == 0.002
    assert "no new metrics line" in rd.train_log.read_text()


def test_a_hanging_webhook_holds_up_no_end_stop_or_resume(make_run, monkeypatch):
    """Attack 4: a webhook that never answers kept an ended run's supervisor alive for 2 x
    `timeout_s` per target: `tina resume` was refused as "already supervised", a foreground run
    returned long after it said finished, and the alerts it dropped went unsaid. The supervisor
    lets the run go as soon as its end is recorded, and gives its alerts a bounded moment."""
    from test_alerts import Hook

    hook = Hook()
    hook.hold.clear()  # every request is taken and held unanswered until the test ends
    try:
        monkeypatch.setenv("FT_STOP", "4")
        ended = make_run(stop_at=4)
        (make_run.home / "config.yaml").write_text(f"alerts:\n  webhook: {hook.url}\n  timeout_s: 600\n")
        assert supervisor.Supervisor(ended).run() == "finished"  # a foreground run's supervisor
        assert hook.requests and not hook.hold.is_set()  # it came back while the webhook held its request
        assert "not delivered within 2 s of this process's end (127.0.0.1 did not answer" in ended.train_log.read_text()

        monkeypatch.setenv("FT_STOP", "400")
        rd = make_run(stop_at=400)
        lifecycle.spawn_daemon(rd)  # a detached supervisor
        _wait_for(lambda: len(list(iter_jsonl(rd.metrics))) >= 3)
        assert lifecycle.stop_run(make_run.home, rd.run_id, wait=True).state == "stopped"
        lifecycle.spawn_daemon(rd, resume=True)  # taken at once, not "already supervised"
        assert _wait_state(rd, ["running"]) == "running" and not hook.hold.is_set()
        assert lifecycle.stop_run(make_run.home, rd.run_id, wait=True).state == "stopped"
    finally:
        hook.close()


def test_a_transition_and_the_end_reach_the_webhook(make_run, monkeypatch):
    """The supervisor's live watch finds the format reward's turn as the metrics arrive; its
    ``transition`` events (tentative, then confirmed) and the run's end go to a real webhook, each
    as the JSON record the run keeps."""
    from test_alerts import Hook

    monkeypatch.setenv("FT_STOP", "60")
    monkeypatch.setenv("FT_SAVE", "20")
    monkeypatch.setenv("FT_JUMP_AT", "25")
    monkeypatch.setenv("FT_SLEEP", "0.02")
    hook = Hook()
    try:
        rd = make_run(stop_at=60)
        (make_run.home / "config.yaml").write_text(f"alerts:\n  webhook: {hook.url}\n")
        assert supervisor.Supervisor(rd).run() == "finished"
        bodies = list(hook.bodies)
    finally:
        hook.close()
    recorded = [e for e in rd.read_events() if e["event"] in ("transition", "finished")]
    assert [b["record"] for b in bodies] == recorded
    turns = [b for b in bodies if b["event"] == "transition"]
    assert [b["record"]["status"] for b in turns][-1] == "confirmed", [b["record"] for b in turns]
    confirmed = turns[-1]
    assert confirmed["record"]["signal"] == "rewards/format_reward/mean"
    assert abs(confirmed["record"]["step"] - 25) <= 2
    assert confirmed["text"] == f"contract: phase transition confirmed at step {confirmed['record']['step']} " \
                                f"(rewards/format_reward/mean)"
    assert bodies[-1]["event"] == "finished" and bodies[-1]["record"]["step"] == 60
