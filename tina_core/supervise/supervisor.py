"""The supervising daemon: one run's trainer, started, watched, restarted and stopped.

One supervisor per run (an exclusive ``flock`` on ``supervisor.lock``, held for its lifetime)
starts the trainer in its own session, so Ctrl-C, a closed terminal or a lost SSH connection never
reach it, and its whole process group (vLLM workers included) can be killed at once. The trainer's
contract (ARCHITECTURE.md): exit 0 finished, 75 stopped after saving on SIGTERM, anything else a
crash, which is restarted with back-off up to ``max_restarts`` times.

Everything the supervisor knows is written down as it happens (``events.jsonl``, a heartbeat in
``supervisor.json`` every 2 s), so any process can tell the state of a run, and a dead supervisor
shows as ``crashed`` rather than ``running``. Its live watch (``tina_core.supervise.watch``) follows
the phase transition and the stop policy as the metrics arrive: it asks the trainer for checkpoints,
pins the snapshots around the marker, schedules or makes the policy's stop, and after such a stop
queues the evaluations of the checkpoints around the marker and of the base model.

``python -m tina_core.supervise RUN_DIR [--resume] [--daemon]`` is the daemon's entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tina_core import locks, runstate
from tina_core.alerts import Alerts, StallWatch, budgets_passed
from tina_core.credentials import redact, redact_text, remember_secrets
from tina_core.events import (EXIT_FINISHED, EXIT_STOPPED, Kind, is_kind, of_kind, open_attempts,
                              since_start)
from tina_core.rundir import (APPEND_FLAGS, RunDir, RunInfo, TinaError, append_bytes, append_jsonl, iter_jsonl, now_iso,
                              read_json, write_error_text, write_json_atomic)
from tina_core.runstate import HEARTBEAT_S, end_group, kill_group, pid_alive, send_signal
from tina_core.supervise.logpump import LogPump, output_to_log
from tina_core.supervise.progress import Display
from tina_core.supervise.watch import LiveWatch

if TYPE_CHECKING:
    from tina_core.gpu import Sampler

GPU_SAMPLE_S = 5.0
BUDGET_CHECK_S = 5.0  # how often the run's dollars are added up against the alert thresholds
DEFAULT_STOP_TIMEOUT_S = 120.0
DEFAULT_MAX_RESTARTS = 3
DEFAULT_BACKOFF_S = 5.0
LOG_NAME = "supervisor.log"
# Exit codes of `tina run` (foreground) and `tina resume`.
EXIT_CODES: dict[str, int] = {Kind.FINISHED.value: EXIT_FINISHED, Kind.FAILED.value: 1,
                              Kind.STOPPED.value: EXIT_STOPPED}


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise TinaError(f"${name} must be a number of seconds, got {raw!r}") from None


def stop_timeout_s(info: RunInfo) -> float:
    """How long a stop waits for the trainer's checkpoint before killing its group:
    $TINA_STOP_TIMEOUT_S, else the recipe's launch.stop_timeout_s, else 120 s."""
    return _env_float("TINA_STOP_TIMEOUT_S", float(info.stop_timeout_s or DEFAULT_STOP_TIMEOUT_S))


# --- the supervisor -------------------------------------------------------------------------------
class Supervisor:
    """Supervises one run: starts, watches, restarts and stops its trainer."""

    def __init__(self, run_dir: RunDir, *, display: "Display | None" = None,
                 secret_env: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        # launch.env credentials withheld from the snapshot, for the trainer's environment; without
        # them (a daemon, a resume) they are already in ours.
        self.secret_env = dict(secret_env or {})
        remember_secrets(self.secret_env.values())
        if not run_dir.info():
            raise TinaError(f"{run_dir.run_json}: missing or unreadable; not a run directory")
        self.info = RunInfo.read(run_dir)
        self.display = display or Display(run_dir, live=False, quiet=True)
        self.stop_timeout = stop_timeout_s(self.info)
        self.backoff = _env_float("TINA_RESTART_BACKOFF_S", DEFAULT_BACKOFF_S)
        self.max_restarts = DEFAULT_MAX_RESTARTS if self.info.max_restarts is None else self.info.max_restarts
        self.started = time.time()
        self.cpu0 = _cpu_s(resource.RUSAGE_SELF)
        self.stop_requested: str | None = None
        self.stop_by: tuple[str, str] | None = None  # (policy key, reason) of a stop the policy made
        self.live: LiveWatch | None = None
        self.kill_now = False
        self.proc: subprocess.Popen | None = None
        self.proc_started: float | None = None
        self.attempt = 0
        self._lock_fd: int | None = None
        self._last_beat = 0.0
        self._sampler: Sampler | None = None
        self._last_sample = 0.0
        self._env: dict[str, str] | None = None
        self._pump: threading.Thread | None = None
        self.output: LogPump | None = None  # the trainer's output, as _pump copies it
        # Events the disk refused, oldest first: written (in order) once it takes writes again.
        self._pending: list[dict[str, Any]] = []
        self.write_errors: dict[str, str] = {}  # file -> what went wrong writing it, this attempt
        # Events go on to the user's alert targets as they are recorded (tina_core.alerts).
        self.alerts = Alerts(runstate.run_home(run_dir), warn=self._log_line)
        self.stall = StallWatch(run_dir.metrics, self.alerts.config.stall_after_s)
        self._budget_told: set[float] | None = None  # thresholds already announced (from the events)
        self._last_budget_check = 0.0

    # lock ---------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the run's exclusive lock, or say who holds it."""
        self._lock_fd = locks.take_run_lock(self.run_dir, holder_ending=lambda: runstate.supervisor_ending(self.run_dir))

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # signals ------------------------------------------------------------------------------------
    def request_stop(self, why: str, *, insist: bool = False) -> None:
        """Stop at the end of the trainer's step, after saving a checkpoint. Asking again changes
        nothing (a second `tina stop`, a repeated SIGTERM), unless ``insist``: a second Ctrl-C at
        the foreground terminal, which means "don't wait for the checkpoint"."""
        if not self.stop_requested:
            self.stop_requested = why
        elif insist:
            self.kill_now = True

    def install_signals(self, foreground: bool) -> dict:
        old = {}
        old[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        old[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.request_stop("Ctrl-C", insist=foreground))
        # A closed terminal must not end supervision: a foreground run goes on silently.
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, (lambda *_: self.display.silence()) if foreground
                                           else signal.SIG_IGN)
        return old

    # heartbeat and sampling ---------------------------------------------------------------------
    def beat(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_beat < HEARTBEAT_S:
            return
        self._last_beat = now
        beat = runstate.heartbeat_record(pid=os.getpid(), started=self.started, now=now,
                                         trainer_pid=self.proc.pid if self.proc else None,
                                         trainer_started=self.proc_started, attempt=self.attempt or None)
        try:
            write_json_atomic(self.run_dir.supervisor, beat)
        except OSError as e:
            # A full disk has no room for the new file; the old one's block takes the same few
            # bytes again, so the run does not look crashed while we supervise on.
            try:
                _rewrite_in_place(self.run_dir.supervisor, beat)
            except OSError:
                self._write_failed(self.run_dir.supervisor, write_error_text(e, self.run_dir.supervisor))

    def sample_gpus(self) -> None:
        if not self.info.gpu_count:
            return
        now = time.time()
        if now - self._last_sample < GPU_SAMPLE_S:
            return
        self._last_sample = now
        if self._sampler is None:
            from tina_core.gpu import Sampler

            self._sampler = Sampler()
        if gpus := self._sampler.read():
            self.run_dir.log_system(gpus)

    def check_budget(self) -> None:
        """``budget_reached`` once per threshold of ``alerts.budget_usd`` the run's total passes."""
        thresholds = self.alerts.config.budget_usd
        now = time.time()
        if not thresholds or now - self._last_budget_check < BUDGET_CHECK_S:
            return
        self._last_budget_check = now
        from tina_core.analysis.cost import Meter

        events = self.run_dir.read_events() + self._pending
        if self._budget_told is None:
            self._budget_told = {e.get("threshold_usd") for e in of_kind(events, Kind.BUDGET_REACHED)}
        spent = Meter(self.info, events, {}, open_until=now).cost_usd()["total"]
        for t in budgets_passed(thresholds, spent, self._budget_told):
            self._budget_told.add(t)
            self.event(Kind.BUDGET_REACHED, threshold_usd=t, cost_usd=round(spent, 4), attempt=self.attempt or None,
                       step=self.last_step(self.attempt) if self.attempt else None)

    def check_stall(self) -> None:
        """``stalled`` when the live trainer has logged no step for ``alerts.stall_after_s``."""
        waited = self.stall.check()
        if waited is not None:
            step = self.last_step(self.attempt)
            self.event(Kind.STALLED, attempt=self.attempt, step=step, after_s=round(waited, 1))
            self.log(f"no new metrics line for {waited:.0f} s (last step {step}); the trainer is alive")

    def tick(self) -> None:
        self.beat()
        self.sample_gpus()
        self.check_budget()
        if self.output is not None and self.output.error:
            self._write_failed(self.run_dir.train_log, self.output.error)
        self._flush_events()
        self.display.update()

    # writing on a full disk ---------------------------------------------------------------------
    def event(self, kind: Kind, **fields: Any) -> None:
        """Record an event; one the disk refuses waits, in order, and goes in at a later tick."""
        self._pending.append(self.run_dir.event_record(kind, **fields))
        self._flush_events()

    def _flush_events(self) -> bool:
        while self._pending:
            try:
                append_jsonl(self.run_dir.events, self._pending[0], fsync=True)
            except OSError as e:
                self._write_failed(self.run_dir.events, write_error_text(e))
                return False
            self.alerts.send(self.run_dir, self._pending.pop(0))
        return True

    def _write_failed(self, path: Path, text: str) -> None:
        """A write the disk refused: said on the display and as a ``write_failed`` event (queued,
        so it goes in when the disk lets it), once per file and attempt."""
        if path.name in self.write_errors:
            return
        self.write_errors[path.name] = text
        self.display.note(f"warning: {text}")
        self._pending.append(self.run_dir.event_record(Kind.WRITE_FAILED, file=path.name, error=text,
                                                       attempt=self.attempt or None))

    def sleep(self, seconds: float) -> None:
        """Sleep while keeping the heartbeat; returns early on a stop request."""
        end = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < end:
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))
            self.tick()

    # attempts -----------------------------------------------------------------------------------
    def _next_attempt(self) -> int:
        # ours too: an attempt_started the disk refused is not in the file yet
        return 1 + max([self.attempt, *(e.get("attempt", 0)
                                        for e in of_kind(self.run_dir.read_events(), Kind.ATTEMPT_STARTED))])

    def _trainer_env(self, attempt: int) -> dict[str, str]:
        if self._env is None:
            from tina_core.train.launcher import launch_env
            from tina_core.recipe.loader import load_recipe

            recipe = load_recipe(self.run_dir.recipe, [])
            base = {**os.environ, **self.secret_env}
            missing = [k for k in recipe.withheld_env if k not in base]
            if missing:
                self.log(f"launch.env {', '.join(missing)}: withheld from the snapshot and not in the "
                         "supervisor's environment; the trainer runs without")
            self._env = launch_env(recipe, base)
        return {**self._env, "TINA_ATTEMPT": str(attempt), "TINA_HOME": str(runstate.run_home(self.run_dir)),
                "PYTHONUNBUFFERED": "1"}

    def log(self, text: str) -> None:
        """A line of tina's own in train.log and on the display, credential values masked."""
        self.display.note(self._log_line(text))

    def _log_line(self, text: str) -> str:
        """A line of tina's own in train.log only (any thread: one append of a whole line)."""
        text = redact_text(text)
        try:
            fd = os.open(self.run_dir.train_log, APPEND_FLAGS, 0o644)
            try:
                append_bytes(fd, f"[tina {now_iso()}] {text}\n".encode())
            finally:
                os.close(fd)
        except OSError as e:
            self._write_failed(self.run_dir.train_log, write_error_text(e, self.run_dir.train_log))
        return text

    def start(self, attempt: int) -> subprocess.Popen:
        command = self.info.command
        resume_from = max(self.run_dir.checkpoint_steps(), default=None)
        self.attempt = attempt
        self.log(f"attempt {attempt}: {shlex.join(command)}"
                 + (f" (resuming from checkpoint-{resume_from})" if resume_from else ""))
        # Output goes through us so credential values are masked before they reach train.log.
        self.proc = subprocess.Popen(command, cwd=self.info.cwd or None, env=self._trainer_env(attempt),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.output = LogPump(self.proc.stdout, self.run_dir.train_log)
        self._pump = threading.Thread(target=self.output.run, daemon=True)
        self._pump.start()
        self.proc_started = time.time()
        self.stall.restart()
        self.event(Kind.ATTEMPT_STARTED, attempt=attempt, pid=self.proc.pid,
                   gpus=self.info.gpu_count or 0, resume_from=resume_from)
        if self.live is not None:
            self.live.attempt_started()
        self.beat(force=True)
        return self.proc

    # the live watch -----------------------------------------------------------------------------
    def poll_watch(self, *, last: bool = False) -> None:
        """Let the live watch read and act; it asks for a stop when the policy says so (not once
        the trainer is gone: ``last``). An error in it ends the watch, never the run."""
        if self.live is None:
            return
        try:
            order = self.live.poll()
        except Exception as e:
            self.log(f"live watch stopped: {type(e).__name__}: {e}")
            self.live = None
            return
        if order is not None and not self.stop_requested and not last:
            self.stop_by = order
            self.log(f"stopping: {order[1]}")
            self.request_stop(order[0])

    def _stopped_fields(self, code: int, step: int | None) -> dict[str, Any]:
        """Why the run stopped, for its ``stopped`` event."""
        if self.stop_by is not None:
            return {"by": self.stop_by[0], "reason": self.stop_by[1]}
        if self.stop_requested:
            return {"by": self.stop_requested, "reason": f"asked ({self.stop_requested}): a checkpoint at the step in flight"}
        if code == EXIT_STOPPED and self.live is not None and self.live.stopped_on_schedule(step):
            return self.live.stop_fields("after_transition")
        if code == EXIT_STOPPED:  # every stop says why, even one tina did not ask for
            return {"by": "trainer", "reason": "the trainer saved and stopped (exit 75) without a request from tina"}
        return {}

    def _evaluate_after_stop(self, fields: dict[str, Any]) -> None:
        from tina_core.analysis.policy import POLICY_STOPS

        if self.live is None or fields.get("by") not in POLICY_STOPS or not self.live.policy.evaluate:
            return
        try:
            self.live.transition_evaluations(runstate.run_home(self.run_dir))
        except Exception as e:  # the run stopped as it should; say what could not be queued
            self.log(f"could not queue the evaluations around the transition: {e}")

    def watch(self, proc: subprocess.Popen) -> int:
        """Wait for the trainer, keeping the heartbeat and handling stop requests."""
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        term_deadline = None
        try:
            while True:
                if pidfd is not None:
                    select.select([pidfd], [], [], 0.25)
                    code = proc.poll()
                else:
                    try:
                        code = proc.wait(timeout=0.25)
                    except subprocess.TimeoutExpired:
                        code = None
                if code is not None:
                    return code
                self.poll_watch()
                if self.stop_requested and term_deadline is None:
                    if not self._stop_on_record():  # `tina stop` records its request itself
                        self.event(Kind.STOP_REQUESTED, by=self.stop_requested, attempt=self.attempt)
                    self.log(f"stop requested ({self.stop_requested}): the trainer saves a checkpoint and exits")
                    send_signal(proc.pid, signal.SIGTERM)
                    term_deadline = time.monotonic() + self.stop_timeout
                if self.kill_now or (term_deadline is not None and time.monotonic() > term_deadline):
                    self.log("killing the trainer's process group")
                    kill_group(proc.pid)
                self.check_stall()
                self.tick()
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _stop_on_record(self) -> bool:
        """Whether a stop request is in the events since this supervisor started."""
        mine, since = since_start(self.run_dir.read_events(), pid=os.getpid())
        return mine is not None and any(is_kind(e, Kind.STOP_REQUESTED) for e in since)

    def last_step(self, attempt: int) -> int | None:
        steps = [r["step"] for r in iter_jsonl(self.run_dir.metrics)
                 if r.get("attempt", 1) == attempt and isinstance(r.get("step"), int)]
        return steps[-1] if steps else None

    def any_step(self) -> bool:
        return any(isinstance(r.get("step"), int) for r in iter_jsonl(self.run_dir.metrics))

    def finish(self, state: Kind, **fields: Any) -> str:
        # what supervising cost this process, for bench/supervision_overhead.py
        self.event(state, **fields, supervisor_cpu_s=round(_cpu_s(resource.RUSAGE_SELF) - self.cpu0, 2))
        self.log(state + (f": {fields['reason']}" if fields.get("reason") else ""))
        return state

    def run(self, *, resume: bool = False) -> str:
        """Supervise until the run is finished, stopped or failed; returns that state."""
        previous = read_json(self.run_dir.supervisor, {}) or {}  # read before our heartbeat replaces it
        self.beat(force=True)
        self.event(Kind.SUPERVISOR_STARTED, pid=os.getpid(), resume=resume)
        recover_orphan(self.run_dir, self.stop_timeout, previous)
        try:
            self.live = LiveWatch(self.run_dir, self.event, self.log)
        except Exception as e:  # a run without a readable recipe snapshot still trains
            self.log(f"no live watch: {type(e).__name__}: {e}")
        restarts, delay = 0, self.backoff
        try:
            while True:
                if self.stop_requested:
                    return self.finish(Kind.STOPPED, step=None)
                attempt = self._next_attempt()
                self.write_errors.clear()
                children_cpu = _cpu_s(resource.RUSAGE_CHILDREN)
                proc = self.start(attempt)
                code = self.watch(proc)
                kill_group(proc.pid)  # leftovers (vLLM workers) of a trainer that is gone
                pump, output = self._pump, self.output
                assert pump is not None and output is not None  # start() set up the copy of its output
                pump.join(timeout=5)
                sig = signal.Signals(-code).name if code < 0 else None
                step = self.last_step(attempt)
                lost = output.lost_bytes
                if output.error:
                    self._write_failed(self.run_dir.train_log, output.error)
                self.event(Kind.ATTEMPT_EXITED, attempt=attempt, code=code, signal=sig, step=step,
                           cpu_s=round(_cpu_s(resource.RUSAGE_CHILDREN) - children_cpu, 2),
                           **({"lost_log_bytes": lost} if lost else {}))
                self.proc = None
                self.beat(force=True)
                why = f"killed by {sig}" if sig else f"exit code {code}"
                if code > 0 and (said := trainer_error(output.tail)):
                    why += f": {said}"  # on a full disk train.log may not have it
                self.log(f"attempt {attempt} ended: {why}")
                if code == 0:
                    return self.finish(Kind.FINISHED, step=step)
                if self.stop_requested or code == EXIT_STOPPED:
                    self.poll_watch(last=True)  # the last steps' metrics: the marker as the run ends
                    fields = self._stopped_fields(code, step)
                    state = self.finish(Kind.STOPPED, step=step, **fields)
                    self._evaluate_after_stop(fields)
                    return state
                if not self.any_step():
                    return self.finish(Kind.FAILED, reason=f"the trainer {why} before its first step (see train.log)")
                if restarts >= self.max_restarts:
                    return self.finish(Kind.FAILED, reason=f"gave up after {restarts} restarts; last attempt {why}")
                restarts += 1
                self.event(Kind.RESTARTED, attempt=attempt + 1, delay_s=delay, reason=why)
                self.log(f"restarting in {delay:g} s ({restarts}/{self.max_restarts})")
                self.sleep(delay)
                delay *= 2
        except BaseException as e:
            if self.proc is not None and self.proc.poll() is None:
                end_group(self.proc.pid, self.stop_timeout, term_group=False, proc=self.proc)
                self.event(Kind.ATTEMPT_EXITED, attempt=self.attempt, code=self.proc.poll(), signal=None,
                           step=self.last_step(self.attempt))
            self.finish(Kind.FAILED, reason=f"supervisor error: {type(e).__name__}: {e}")
            raise
        finally:
            self.beat(force=True)
            if self._sampler is not None:
                self._sampler.close()
            if not self._flush_events():  # the disk is still full: say what could not be recorded
                print(redact_text(f"tina: could not record {', '.join(e['event'] for e in self._pending)} "
                                  f"in {self.run_dir.events}: {self.write_errors.get(self.run_dir.events.name)}"),
                      file=sys.stderr, flush=True)
            # The run's end is recorded: let the run go (a resume may take it at once), then give the
            # alerts a bounded moment to go out; a dead webhook holds up nothing (alerts.CLOSE_WAIT_S).
            self.release()
            self.alerts.close()


_EXCEPTION_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)(: .*)?$")


def trainer_error(lines: Sequence[str]) -> str | None:
    """What the trainer said as it failed: its ``tina train: error:`` line, else the exception
    line that ends a traceback."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("tina train: error: "):
            return line.removeprefix("tina train: error: ")
    return lines[-1] if lines and _EXCEPTION_LINE_RE.match(lines[-1]) else None


def _rewrite_in_place(path: Path, obj: Any) -> None:
    """Overwrite a small JSON file in place (padded with spaces to its old length, so a reader
    never sees a shorter file with old bytes after it): no new block needed on a full disk."""
    data = json.dumps(redact(obj), default=str).encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data.ljust(os.fstat(fd).st_size), 0)
    finally:
        os.close(fd)


def _cpu_s(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


# --- process helpers ------------------------------------------------------------------------------


def recover_orphan(run_dir: RunDir, stop_timeout: float, hb: dict[str, Any]) -> None:
    """After a supervisor died: stop a trainer it left running (SIGTERM: it saves a checkpoint at
    the end of its step), and close the attempt it left open when that trainer really ended: now
    if it trained on until we stopped it, else when it was last known alive (its last heartbeat or
    metrics line), so the cost meter counts all of its time."""
    events = run_dir.read_events()
    attempts = open_attempts(events)
    if not attempts:
        return
    # a trainer of another machine (a Slurm task's, requeued here) went with its node or its task
    here = runstate.on_this_host(hb)
    pid = hb.get("trainer_pid")
    orphan = here and pid_alive(pid, started=hb.get("trainer_started"))  # still the trainer it started
    if orphan and isinstance(pid, int):
        end_group(pid, stop_timeout, term_group=False)
    elif isinstance(pid, int) and here:
        kill_group(pid)  # leftovers of a group whose leader is gone
    logged = [r for r in iter_jsonl(run_dir.metrics) if r.get("attempt", 1) in attempts]
    steps = [r["step"] for r in logged if isinstance(r.get("step"), int)]
    # an orphan we stopped really ran until now
    end_ts = None if orphan else runstate.trainer_last_alive(
        hb, max((r["ts"] for r in logged if isinstance(r.get("ts"), (int, float))), default=None))
    for a in attempts:
        run_dir.event(Kind.ATTEMPT_EXITED, attempt=a, code=None, signal=None, orphan=True,
                      step=steps[-1] if steps else None, **({"end_ts": end_ts} if end_ts else {}))


# --- display --------------------------------------------------------------------------------------


# --- daemon ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tina_core.supervise")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--daemon", action="store_true", help="fork away and print the daemon's pid")
    args = parser.parse_args(argv)
    try:
        run_dir = RunDir(args.run_dir.resolve())
        sup = Supervisor(run_dir)
        sup.acquire()  # before forking, so a refusal reaches the caller
    except TinaError as e:
        print(f"tina: error: {e}", file=sys.stderr)
        return 2
    if args.daemon:
        r, w = os.pipe()
        child = os.fork()
        if child > 0:
            os.close(w)
            os.read(r, 1)  # the child has let go of our stdout
            print(child, flush=True)
            os._exit(0)
        os.close(r)
        output_to_log(run_dir.path / LOG_NAME, close=[sup._lock_fd, w])
        os.write(w, b"x")
        os.close(w)
    sup.install_signals(foreground=False)
    try:
        state = sup.run(resume=args.resume)
    finally:
        sup.release()
    return EXIT_CODES.get(state, 1)


# --- commands -------------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
