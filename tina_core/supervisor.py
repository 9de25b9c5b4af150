"""Run supervision: `tina run/stop/resume/logs` and the supervising daemon.

One supervisor per run (an exclusive ``flock`` on ``supervisor.lock``, held for its lifetime)
starts the trainer in its own session, so Ctrl-C, a closed terminal or a lost SSH connection never
reach it, and its whole process group (vLLM workers included) can be killed at once. The trainer's
contract (ARCHITECTURE.md): exit 0 finished, 75 stopped after saving on SIGTERM, anything else a
crash, which is restarted with back-off up to ``max_restarts`` times.

Everything the supervisor knows is written down as it happens (``events.jsonl``, a heartbeat in
``supervisor.json`` every 2 s), so any process can tell the state of a run, and a dead supervisor
shows as ``crashed`` rather than ``running``.

``python -m tina_core.supervisor RUN_DIR [--resume] [--daemon]`` is the daemon's entry point.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
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
from typing import Any, Sequence

from tina_core.rundir import (APPEND_FLAGS, RunDir, TinaError, append_bytes, append_jsonl, create_run_dir,
                              find_run, iter_jsonl, now_iso, read_json, redact, redact_text, remember_secrets,
                              runs_root, secret_values, write_error_text, write_json_atomic)

HEARTBEAT_S = 2.0
HEARTBEAT_TIMEOUT_S = 15.0
GPU_SAMPLE_S = 5.0
DEFAULT_STOP_TIMEOUT_S = 120.0
DEFAULT_MAX_RESTARTS = 3
DEFAULT_BACKOFF_S = 5.0
EXIT_STOPPED = 75
LOCK_NAME = "supervisor.lock"
LOG_NAME = "supervisor.log"
TERMINAL_EVENTS = ("finished", "stopped", "failed")
# Exit codes of `tina run` (foreground) and `tina resume`.
EXIT_CODES = {"finished": 0, "failed": 1, "stopped": EXIT_STOPPED}


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise TinaError(f"${name} must be a number of seconds, got {raw!r}") from None


def stop_timeout_s(info: dict[str, Any]) -> float:
    """How long a stop waits for the trainer's checkpoint before killing its group:
    $TINA_STOP_TIMEOUT_S, else the recipe's launch.stop_timeout_s, else 120 s."""
    return _env_float("TINA_STOP_TIMEOUT_S", float(info.get("stop_timeout_s") or DEFAULT_STOP_TIMEOUT_S))


def home_of(run_dir: RunDir) -> Path:
    return run_dir.path.parent.parent


# --- creating a run -------------------------------------------------------------------------------
def _recipe_value(recipe: Any, attr: str, default: Any = None) -> Any:
    value = getattr(recipe, attr, None)
    return default if value is None else value


def _load_validated(recipe_path: Path, overrides: Sequence[str], *, hardware: bool = True):
    """The resolved recipe, checked completely (heavy: imports TRL) before anything is created.
    Missing GPUs are reported first: that check is instant, validation is not."""
    from tina_core.launch import check_hardware
    from tina_core.recipe import load_recipe, validate_recipe

    path = Path(recipe_path)
    if not path.is_file():
        raise TinaError(f"recipe {path}: no such file (try recipes/tiny.yaml)")
    recipe = load_recipe(path, list(overrides))
    if hardware:
        check_hardware(recipe)
    validate_recipe(recipe)
    return recipe


def plan_run(home: Path, recipe_path: Path, *, overrides: Sequence[str] = ()):
    """``(recipe, command)`` for a dry run: the resolved recipe and the exact launch command with a
    placeholder run directory. Creates nothing."""
    from tina_core.launch import launch_command

    recipe = _load_validated(recipe_path, overrides, hardware=False)
    return recipe, launch_command(RunDir(runs_root(home) / "<run_id>"), recipe)


def create_run(home: Path, recipe_path: Path, *, name: str | None = None, overrides: Sequence[str] = (),
               gpu_hour_usd: float | None = None) -> tuple[RunDir, dict[str, str]]:
    """Validate the recipe and the hardware, then create the run directory with its recipe
    snapshot, ``run.json`` and the ``launched`` event. Nothing is created if any check fails.

    Returns the run directory and the recipe's credential-looking ``launch.env`` entries: the
    snapshot withholds their values, so the caller hands them to the supervisor (``secret_env``),
    whose environment is then the only place they are kept."""
    from tina_core import cost, gpu
    from tina_core.launch import launch_command
    from tina_core.recipe import masked_override

    recipe = _load_validated(recipe_path, overrides)
    gpus = int(_recipe_value(recipe, "gpus", 0))
    found = gpu.gpus() if gpus else []
    device = found[0]["name"] if found else "cpu"
    price = cost.resolve_price(home, device, cli_gpu_hour_usd=gpu_hour_usd,
                               recipe_gpu_hour_usd=recipe.get("price.gpu_hour_usd"),
                               recipe_cpu_hour_usd=recipe.get("price.cpu_hour_usd"))

    run_dir = create_run_dir(home, name or _recipe_value(recipe, "name", Path(recipe_path).stem))
    run_dir.recipe.write_text(recipe.to_yaml())
    command = launch_command(run_dir, recipe)
    recorded = [masked_override(o) for o in overrides]
    info = {
        "run_id": run_dir.run_id,
        "name": name or _recipe_value(recipe, "name", run_dir.run_id),
        "recipe": str(recipe_path),
        "overrides": recorded,
        # how to make this run again (credentials masked: give them again to run it again)
        "tina_command": shlex.join(["tina", "run", str(recipe_path), *(["--name", name] if name else []),
                                    *[a for o in recorded for a in ("--set", o)],
                                    *(["--gpu-hour-usd", str(gpu_hour_usd)] if gpu_hour_usd is not None else [])]),
        "created": now_iso(),
        "hardware": {"gpus": found, "cpu_count": os.cpu_count(), "host": os.uname().nodename},
        "device": device,
        "gpu_count": gpus,
        "gpu_hour_usd": price.gpu_hour_usd,
        "cpu_hour_usd": price.cpu_hour_usd,
        "price_source": price.source,
        "command": command,
        "cwd": os.getcwd(),
        "stop_at_step": getattr(recipe, "stop_at_step", None),
        "max_steps": getattr(recipe, "max_steps", None),
        "save_steps": getattr(recipe, "save_steps", None),
        "dataset_size": getattr(recipe, "dataset_size", None),
        "max_restarts": int(recipe.get("launch.max_restarts", DEFAULT_MAX_RESTARTS)),
        "stop_timeout_s": float(recipe.get("launch.stop_timeout_s", DEFAULT_STOP_TIMEOUT_S)),
        "imported": False,
    }
    write_json_atomic(run_dir.run_json, info)
    run_dir.event("launched", recipe=str(recipe_path), command=command, gpus=gpus,
                  gpu_hour_usd=price.gpu_hour_usd, device=device)
    return run_dir, recipe.secret_env


# --- liveness -------------------------------------------------------------------------------------
LOCK_RELEASE_GRACE_S = 5.0


def _pid_alive(pid: Any) -> bool:
    """True for a running (not zombie) process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # NoSuchProcess, AccessDenied on another user's pid...
        return False


def liveness(run_dir: RunDir, events: list[dict[str, Any]] | None = None,
             now: float | None = None) -> dict[str, Any]:
    """``{state, supervisor_pid, trainer_pid, heartbeat}`` of a run, from its events, its heartbeat
    and the pids in it. ``state``: running, stopping, finished, stopped, failed or crashed."""
    events = run_dir.read_events() if events is None else events
    now = time.time() if now is None else now
    hb = read_json(run_dir.supervisor, {}) or {}
    out = {"supervisor_pid": hb.get("pid"), "trainer_pid": hb.get("trainer_pid"),
           "heartbeat": hb.get("heartbeat")}
    if run_dir.info().get("imported"):
        return {**out, "state": "finished"}
    last_start = max((i for i, e in enumerate(events) if e.get("event") in ("supervisor_started", "launched")),
                     default=-1)
    since = events[last_start + 1:] if last_start >= 0 else events
    terminal = [e["event"] for e in since if e.get("event") in TERMINAL_EVENTS]
    if terminal:
        return {**out, "state": terminal[-1]}
    fresh = isinstance(hb.get("heartbeat"), (int, float)) and now - hb["heartbeat"] <= HEARTBEAT_TIMEOUT_S
    started_ts = events[last_start].get("ts", 0) if last_start >= 0 else 0
    if last_start >= 0 and events[last_start].get("event") == "launched":
        # Created, supervisor not up yet: give it the heartbeat timeout to appear.
        alive = now - started_ts <= HEARTBEAT_TIMEOUT_S or (fresh and _pid_alive(hb.get("pid")))
    else:
        alive = fresh and _pid_alive(hb.get("pid")) and hb.get("heartbeat", 0) >= started_ts - 1
    if not alive:
        return {**out, "state": "crashed"}
    stopping = any(e.get("event") == "stop_requested" for e in since)
    return {**out, "state": "stopping" if stopping else "running"}


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
        self.info = run_dir.info()
        if not self.info:
            raise TinaError(f"{run_dir.run_json}: missing or unreadable; not a run directory")
        self.display = display or Display(run_dir, live=False, quiet=True)
        self.stop_timeout = stop_timeout_s(self.info)
        self.backoff = _env_float("TINA_RESTART_BACKOFF_S", DEFAULT_BACKOFF_S)
        self.max_restarts = int(self.info.get("max_restarts", DEFAULT_MAX_RESTARTS))
        self.started = time.time()
        self.cpu0 = _cpu_s(resource.RUSAGE_SELF)
        self.stop_requested: str | None = None
        self.kill_now = False
        self.proc: subprocess.Popen | None = None
        self.proc_started: float | None = None
        self.attempt = 0
        self._lock_fd: int | None = None
        self._last_beat = 0.0
        self._sampler = None
        self._last_sample = 0.0
        self._env: dict[str, str] | None = None
        self._pump: threading.Thread | None = None
        self.output: LogPump | None = None  # the trainer's output, as _pump copies it
        # Events the disk refused, oldest first: written (in order) once it takes writes again.
        self._pending: list[dict[str, Any]] = []
        self.write_errors: dict[str, str] = {}  # file -> what went wrong writing it, this attempt

    # lock ---------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the run's exclusive lock, or say who holds it."""
        fd = os.open(self.run_dir.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_RELEASE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pid = (read_json(self.run_dir.supervisor, {}) or {}).get("pid")
                # A killed supervisor shows as a zombie while its other threads still exit and
                # hold the lock for a moment: wait for it, but never for a live one.
                if not _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            os.close(fd)
            raise TinaError(f"run {self.run_dir.run_id} is already supervised"
                            + (f" (supervisor pid {pid})" if pid else "")
                            + "; use `tina stop` first, or `tina logs -f` to watch it") from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # signals ------------------------------------------------------------------------------------
    def request_stop(self, why: str) -> None:
        if self.stop_requested:
            self.kill_now = True  # a second Ctrl-C: don't wait for the checkpoint
        else:
            self.stop_requested = why

    def install_signals(self, foreground: bool) -> dict:
        old = {}
        old[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        old[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.request_stop("Ctrl-C"))
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
        beat = {"pid": os.getpid(), "pgid": os.getpgid(0), "started": self.started, "heartbeat": now,
                "trainer_pid": self.proc.pid if self.proc else None, "trainer_started": self.proc_started,
                "attempt": self.attempt or None}
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
        if not self.info.get("gpu_count"):
            return
        now = time.time()
        if now - self._last_sample < GPU_SAMPLE_S:
            return
        self._last_sample = now
        if self._sampler is None:
            from tina_core.gpu import Sampler

            self._sampler = Sampler()
        if record := self._sampler.record():
            append_jsonl(self.run_dir.system, record)

    def tick(self) -> None:
        self.beat()
        self.sample_gpus()
        if self.output is not None and self.output.error:
            self._write_failed(self.run_dir.train_log, self.output.error)
        self._flush_events()
        self.display.update()

    # writing on a full disk ---------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
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
            self._pending.pop(0)
        return True

    def _write_failed(self, path: Path, text: str) -> None:
        """A write the disk refused: said on the display and as a ``write_failed`` event (queued,
        so it goes in when the disk lets it), once per file and attempt."""
        if path.name in self.write_errors:
            return
        self.write_errors[path.name] = text
        self.display.note(f"warning: {text}")
        self._pending.append(self.run_dir.event_record("write_failed", file=path.name, error=text,
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
        return 1 + max([self.attempt, *(e.get("attempt", 0) for e in self.run_dir.read_events()
                                        if e.get("event") == "attempt_started")])

    def _trainer_env(self, attempt: int) -> dict[str, str]:
        if self._env is None:
            from tina_core.launch import launch_env, withheld_env
            from tina_core.recipe import load_recipe

            recipe = load_recipe(self.run_dir.recipe, [])
            base = {**os.environ, **self.secret_env}
            missing = [k for k in withheld_env(recipe) if k not in base]
            if missing:
                self.log(f"launch.env {', '.join(missing)}: withheld from the snapshot and not in the "
                         "supervisor's environment; the trainer runs without")
            self._env = launch_env(recipe, base)
        return {**self._env, "TINA_ATTEMPT": str(attempt), "TINA_HOME": str(home_of(self.run_dir)),
                "PYTHONUNBUFFERED": "1"}

    def log(self, text: str) -> None:
        """A line of tina's own in train.log and on the display, credential values masked."""
        text = redact_text(text)
        try:
            fd = os.open(self.run_dir.train_log, APPEND_FLAGS, 0o644)
            try:
                append_bytes(fd, f"[tina {now_iso()}] {text}\n".encode())
            finally:
                os.close(fd)
        except OSError as e:
            self._write_failed(self.run_dir.train_log, write_error_text(e, self.run_dir.train_log))
        self.display.note(text)

    def start(self, attempt: int) -> subprocess.Popen:
        command = self.info["command"]
        resume_from = max(self.run_dir.checkpoint_steps(), default=None)
        self.attempt = attempt
        self.log(f"attempt {attempt}: {shlex.join(command)}"
                 + (f" (resuming from checkpoint-{resume_from})" if resume_from else ""))
        # Output goes through us so credential values are masked before they reach train.log.
        self.proc = subprocess.Popen(command, cwd=self.info.get("cwd") or None, env=self._trainer_env(attempt),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.output = LogPump(self.proc.stdout, self.run_dir.train_log)
        self._pump = threading.Thread(target=self.output.run, daemon=True)
        self._pump.start()
        self.proc_started = time.time()
        self.event("attempt_started", attempt=attempt, pid=self.proc.pid,
                   gpus=int(self.info.get("gpu_count") or 0), resume_from=resume_from)
        self.beat(force=True)
        return self.proc

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
                if self.stop_requested and term_deadline is None:
                    self.event("stop_requested", by=self.stop_requested, attempt=self.attempt)
                    self.log(f"stop requested ({self.stop_requested}): the trainer saves a checkpoint and exits")
                    _signal(proc.pid, signal.SIGTERM)
                    term_deadline = time.monotonic() + self.stop_timeout
                if self.kill_now or (term_deadline is not None and time.monotonic() > term_deadline):
                    self.log("killing the trainer's process group")
                    kill_group(proc.pid)
                self.tick()
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def last_step(self, attempt: int) -> int | None:
        steps = [r["step"] for r in iter_jsonl(self.run_dir.metrics)
                 if r.get("attempt", 1) == attempt and isinstance(r.get("step"), int)]
        return steps[-1] if steps else None

    def any_step(self) -> bool:
        return any(isinstance(r.get("step"), int) for r in iter_jsonl(self.run_dir.metrics))

    def finish(self, state: str, **fields: Any) -> str:
        # what supervising cost this process, for bench/supervision_overhead.py
        self.event(state, **fields, supervisor_cpu_s=round(_cpu_s(resource.RUSAGE_SELF) - self.cpu0, 2))
        self.log(state + (f": {fields['reason']}" if fields.get("reason") else ""))
        return state

    def run(self, *, resume: bool = False) -> str:
        """Supervise until the run is finished, stopped or failed; returns that state."""
        previous = read_json(self.run_dir.supervisor, {}) or {}  # read before our heartbeat replaces it
        self.beat(force=True)
        self.event("supervisor_started", pid=os.getpid(), resume=resume)
        recover_orphan(self.run_dir, self.stop_timeout, previous)
        restarts, delay = 0, self.backoff
        try:
            while True:
                if self.stop_requested:
                    return self.finish("stopped", step=None)
                attempt = self._next_attempt()
                self.write_errors.clear()
                children_cpu = _cpu_s(resource.RUSAGE_CHILDREN)
                proc = self.start(attempt)
                code = self.watch(proc)
                kill_group(proc.pid)  # leftovers (vLLM workers) of a trainer that is gone
                self._pump.join(timeout=5)
                sig = signal.Signals(-code).name if code < 0 else None
                step = self.last_step(attempt)
                lost = self.output.lost_bytes
                if self.output.error:
                    self._write_failed(self.run_dir.train_log, self.output.error)
                self.event("attempt_exited", attempt=attempt, code=code, signal=sig, step=step,
                           cpu_s=round(_cpu_s(resource.RUSAGE_CHILDREN) - children_cpu, 2),
                           **({"lost_log_bytes": lost} if lost else {}))
                self.proc = None
                self.beat(force=True)
                why = f"killed by {sig}" if sig else f"exit code {code}"
                if code > 0 and (said := trainer_error(self.output.tail)):
                    why += f": {said}"  # on a full disk train.log may not have it
                self.log(f"attempt {attempt} ended: {why}")
                if code == 0:
                    return self.finish("finished", step=step)
                if self.stop_requested or code == EXIT_STOPPED:
                    return self.finish("stopped", step=step)
                if not self.any_step():
                    return self.finish("failed", reason=f"the trainer {why} before its first step (see train.log)")
                if restarts >= self.max_restarts:
                    return self.finish("failed", reason=f"gave up after {restarts} restarts; last attempt {why}")
                restarts += 1
                self.event("restarted", attempt=attempt + 1, delay_s=delay, reason=why)
                self.log(f"restarting in {delay:g} s ({restarts}/{self.max_restarts})")
                self.sleep(delay)
                delay *= 2
        except BaseException as e:
            if self.proc is not None and self.proc.poll() is None:
                stop_process_group(self.proc.pid, self.stop_timeout)
                self.event("attempt_exited", attempt=self.attempt, code=self.proc.poll(), signal=None,
                           step=self.last_step(self.attempt))
            self.finish("failed", reason=f"supervisor error: {type(e).__name__}: {e}")
            raise
        finally:
            self.beat(force=True)
            if self._sampler is not None:
                self._sampler.close()
            if not self._flush_events():  # the disk is still full: say what could not be recorded
                print(redact_text(f"tina: could not record {', '.join(e['event'] for e in self._pending)} "
                                  f"in {self.run_dir.events}: {self.write_errors.get(self.run_dir.events.name)}"),
                      file=sys.stderr, flush=True)


class LogPump:
    """Copies a stream (the trainer's output) into a log file, credential values masked.

    A write the disk refuses never stops it: it keeps draining the stream (a pipe nobody reads
    fills up and blocks the trainer mid-step while our heartbeat looks fine), drops what it could
    not write and counts it (``lost_bytes``, ``error``), and notes the gap in the log once the
    disk takes writes again. The last lines read are kept (``tail``), written or not, so the
    reason of a failure is known even when the disk could not take it."""

    TAIL_LINES = 40

    def __init__(self, stream, log_path: Path) -> None:
        self.stream, self.log_path = stream, log_path
        self.lost_bytes = 0
        self.error: str | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=self.TAIL_LINES)
        self._unnoted = 0  # lost since the last note of it in the log
        self._fd: int | None = None

    def run(self) -> None:
        secrets = secret_values()
        try:
            rest = b""
            while True:
                chunk = self.stream.read1(65536)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if not cut and len(data) > 1 << 20:  # a very long line: flush it anyway
                    cut = len(data)
                out, rest = data[:cut], data[cut:]
                if out:
                    text = out.decode(errors="replace")
                    for value in secrets:
                        text = text.replace(value, "***")
                    self.tail.extend(text.splitlines()[-self.TAIL_LINES:])
                    self._write(text.encode())
                if not chunk:
                    return
        finally:
            if self._fd is not None:
                os.close(self._fd)
            self.stream.close()

    def _write(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.log_path, APPEND_FLAGS, 0o644)
            if self._unnoted:
                append_bytes(self._fd, f"[tina {now_iso()}] {self._unnoted} bytes of output lost here: "
                                       f"{self.error}\n".encode())
                self._unnoted = 0
            append_bytes(self._fd, data)
        except OSError as e:
            self.lost_bytes += len(data)
            self._unnoted += len(data)
            self.error = write_error_text(e, self.log_path)


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
def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process_group(pid: int, timeout: float) -> None:
    """SIGTERM to the trainer (it saves and exits), then SIGKILL to its whole group after ``timeout``."""
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_group(pid)


def recover_orphan(run_dir: RunDir, stop_timeout: float, hb: dict[str, Any]) -> None:
    """After a supervisor died: stop a trainer it left running, and close the attempt it left open
    (ended at the dead supervisor's last heartbeat ``hb`` if the trainer was already gone, so the
    cost meter stays honest)."""
    events = run_dir.read_events()
    started = {e.get("attempt"): e for e in events if e.get("event") == "attempt_started"}
    exited = {e.get("attempt") for e in events if e.get("event") == "attempt_exited"}
    open_attempts = [a for a in started if a not in exited]
    if not open_attempts:
        return
    pid = hb.get("trainer_pid")
    end_ts = hb.get("heartbeat")
    if isinstance(pid, int) and _is_trainer(pid, hb.get("trainer_started")):
        stop_process_group(pid, stop_timeout)
        end_ts = None  # it really ran until now
    elif isinstance(pid, int):
        kill_group(pid)  # leftovers of a group whose leader is gone
    for a in open_attempts:
        run_dir.event("attempt_exited", attempt=a, code=None, signal=None, orphan=True,
                      step=None, **({"end_ts": end_ts} if end_ts else {}))


def _is_trainer(pid: int, started: Any) -> bool:
    """The pid is still the trainer we started (not a recycled pid)."""
    if not _pid_alive(pid):
        return False
    try:
        import psutil

        return not isinstance(started, (int, float)) or abs(psutil.Process(pid).create_time() - started) < 5
    except Exception:
        return False


# --- display --------------------------------------------------------------------------------------
class Display:
    """Foreground progress: a live panel on a terminal, plain lines otherwise. Reads progress
    from metrics.jsonl (tailed), never from the trainer's output."""

    KEYS = {"format": ("rewards/format_reward/mean", "rewards/format_reward"),
            "accuracy": ("rewards/accuracy_reward/mean", "rewards/accuracy_reward"),
            "length": ("completions/mean_length", "completion_length")}

    def __init__(self, run_dir: RunDir, *, live: bool, quiet: bool = False, stream=None) -> None:
        self.run_dir = run_dir
        self.live_mode = live
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._offset = 0
        self._buf = b""
        self._last: dict[str, Any] | None = None
        self._shown_step = None
        self._last_draw = 0.0
        self._live = None

    def silence(self) -> None:
        self.quiet = True
        if self._live is not None:
            try:
                self._live.stop()
            except Exception:
                pass
            self._live = None

    def _read_new(self) -> None:
        try:
            with open(self.run_dir.metrics, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        import json

        for raw in lines:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            # the trainer's final summary log (train_runtime...) carries no step metrics
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and "train_runtime" not in rec:
                self._last = rec

    def _pick(self, name: str) -> float | None:
        for key in self.KEYS[name]:
            if self._last and isinstance(self._last.get(key), (int, float)):
                return self._last[key]
        return None

    def figures(self) -> dict[str, Any]:
        from tina_core.cost import Meter

        info = self.run_dir.info()
        meter = Meter.for_run(self.run_dir)
        step = self._last["step"] if self._last else None
        return {"step": step, "target": info.get("stop_at_step") or info.get("max_steps"),
                "format": self._pick("format"), "accuracy": self._pick("accuracy"), "length": self._pick("length"),
                "s_per_step": meter.seconds_per_step(), "eta": meter.eta_s(step),
                "usd": meter.cost_usd()["total"], "usd_per_hour": meter.usd_per_hour_now(),
                "projected": meter.projected_usd(step)}

    @staticmethod
    def _num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def line(self, f: dict[str, Any] | None = None) -> str:
        f = f or self.figures()
        n = self._num
        return (f"step {n(f['step'], 'd')}/{f['target'] or '?'}  format {n(f['format'], '.3f')}  "
                f"accuracy {n(f['accuracy'], '.3f')}  length {n(f['length'], '.1f')}  "
                f"{n(f['s_per_step'], '.2f')} s/step  ETA {_hms(f['eta'])}  ${f['usd']:.4f}"
                + (f" (projected ${f['projected']:.4f})" if f["projected"] is not None else ""))

    def panel(self, f: dict[str, Any]):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        n = self._num
        grid = Table.grid(padding=(0, 2))
        grid.add_row(f"[bold]{self.run_dir.run_id}[/bold]")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=float(f["target"] or 1), completed=float(f["step"] or 0), width=40),
                    f"step {n(f['step'], 'd')}/{f['target'] or '?'}",
                    f"{n(f['s_per_step'], '.2f')} s/step", f"ETA {_hms(f['eta'])}")
        grid.add_row(bar)
        grid.add_row(f"format [bold]{n(f['format'], '.3f')}[/bold]   accuracy [bold]{n(f['accuracy'], '.3f')}"
                     f"[/bold]   completion length [bold]{n(f['length'], '.1f')}[/bold]")
        grid.add_row(f"cost [bold]${f['usd']:.4f}[/bold] at ${f['usd_per_hour']:.2f}/h   projected "
                     + (f"[bold]${f['projected']:.4f}[/bold]" if f["projected"] is not None else "-")
                     + "   [dim]Ctrl-C: save and stop[/dim]")
        return grid

    def update(self, force: bool = False) -> None:
        if self.quiet:
            return
        self._read_new()
        now = time.monotonic()
        if self.live_mode:
            if force or now - self._last_draw >= 0.5:
                self._last_draw = now
                self._draw_live()
        elif self._last and self._last["step"] != self._shown_step:
            self._shown_step = self._last["step"]
            self._print(self.line())

    def _draw_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        view = self.panel(self.figures())
        if self._live is None:
            self._live = Live(view, console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.console.print(f"[dim]{_escape(text)}[/dim]")
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except OSError:  # the terminal went away
            self.quiet = True

    def close(self) -> None:
        if not self.quiet:
            self.update(force=True)
        if self._live is not None:
            self._live.stop()
            self._live = None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --- daemon ---------------------------------------------------------------------------------------
def spawn_daemon(run_dir: RunDir, *, resume: bool = False, secret_env: dict[str, str] | None = None,
                 wait_s: float = 30.0) -> int:
    """Start a detached supervisor for ``run_dir`` and return its pid once its heartbeat is up.
    It forks away from this process, so it survives the terminal, SSH and the TUI. ``secret_env``
    (withheld launch.env credentials) goes into its environment only."""
    cmd = [sys.executable, "-m", "tina_core.supervisor", str(run_dir.path), "--daemon"]
    if resume:
        cmd.append("--resume")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, **(secret_env or {})}, start_new_session=True, timeout=wait_s)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise TinaError(msg.removeprefix("tina: error: "))
    pid = int(proc.stdout.strip())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if (read_json(run_dir.supervisor, {}) or {}).get("pid") == pid:
            return pid
        if not _pid_alive(pid):
            tail = _tail(run_dir.path / LOG_NAME, 5)
            raise TinaError(f"the supervisor of {run_dir.run_id} exited at start:\n{tail}")
        time.sleep(0.05)
    raise TinaError(f"the supervisor of {run_dir.run_id} (pid {pid}) did not start within {wait_s:g} s")


def output_to_log(path: Path, close: Sequence[int | None] = ()) -> None:
    """Send this process's stdout and stderr (warnings, a traceback: they may quote a
    credential) to ``path`` through a LogPump in a forked writer process, which masks them and
    outlives us until the pipe's last writer is gone, so even a dying process's last words get
    there. The writer closes the descriptors in ``close`` (the run's lock must die with us)."""
    r, w = os.pipe()
    if os.fork() == 0:
        try:
            for fd in (w, *close):
                if fd is not None:
                    os.close(fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # drain until the end
                signal.signal(sig, signal.SIG_IGN)
            LogPump(os.fdopen(r, "rb"), path).run()
        finally:
            os._exit(0)
    os.close(r)
    os.dup2(w, 1)
    os.dup2(w, 2)
    os.close(w)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tina_core.supervisor")
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
def start_run(home: Path, recipe_path: Path, *, name: str | None = None, overrides: Sequence[str] = (),
              gpu_hour_usd: float | None = None) -> RunDir:
    """Validate, create and start a run under a detached supervisor (``tina run --detach``).
    Validation imports TRL into the calling process: a cockpit should run ``tina run --detach``
    as a child process instead."""
    run_dir, secret_env = create_run(home, recipe_path, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd)
    spawn_daemon(run_dir, secret_env=secret_env)
    return run_dir


def supervise_foreground(run_dir: RunDir, *, resume: bool = False, secret_env: dict[str, str] | None = None) -> str:
    """Supervise in this process with a progress display; Ctrl-C stops the run cleanly."""
    tty = sys.stderr.isatty()
    display = Display(run_dir, live=tty)
    sup = Supervisor(run_dir, display=display, secret_env=secret_env)
    sup.acquire()
    old = sup.install_signals(foreground=True)
    try:
        state = sup.run(resume=resume)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        sup.release()
        display.close()
    if state == "failed" and not display.quiet:
        print(_tail(run_dir.train_log, 15), file=sys.stderr)
    return state


def stop_run(home: Path, run_ref: str, wait: bool = False, timeout: float | None = None) -> str:
    """Ask a run to stop (save at the end of its step, then exit); returns its state afterwards."""
    run_dir = find_run(home, run_ref)
    live = liveness(run_dir)
    state = live["state"]
    if state in TERMINAL_EVENTS:
        raise TinaError(f"run {run_dir.run_id} is {state}: nothing to stop")
    stop_timeout = stop_timeout_s(run_dir.info())
    if state == "crashed":
        # No supervisor to ask: stop what it left behind ourselves, under its lock.
        sup = Supervisor(run_dir)
        sup.acquire()
        try:
            recover_orphan(run_dir, stop_timeout, read_json(run_dir.supervisor, {}) or {})
            run_dir.event("stop_requested", by="tina stop (no supervisor)")
            run_dir.event("stopped", step=None)
        finally:
            sup.release()
        return "stopped"
    pid = live["supervisor_pid"]
    if isinstance(pid, int) and state == "running":
        _signal(pid, signal.SIGTERM)
    if not wait:
        return "stopping"
    deadline = time.monotonic() + (timeout if timeout is not None else stop_timeout + 30)
    while time.monotonic() < deadline:
        state = liveness(run_dir)["state"]
        if state in TERMINAL_EVENTS or state == "crashed":
            return state
        time.sleep(0.2)
    raise TinaError(f"run {run_dir.run_id} did not stop within the wait; it is still {state}")


def resume_run(home: Path, run_ref: str, *, detach: bool = True) -> RunDir:
    """Continue a stopped, failed or crashed run from its latest complete checkpoint (detached)."""
    run_dir = _resumable(home, run_ref)
    if detach:
        spawn_daemon(run_dir, resume=True)
    return run_dir


def _resumable(home: Path, run_ref: str) -> RunDir:
    run_dir = find_run(home, run_ref)
    info = run_dir.info()
    if info.get("imported"):
        raise TinaError(f"run {run_dir.run_id} was imported; there is nothing to resume")
    state = liveness(run_dir)["state"]
    if state in ("running", "stopping"):
        pid = (read_json(run_dir.supervisor, {}) or {}).get("pid")
        raise TinaError(f"run {run_dir.run_id} is {state} (supervisor pid {pid}); nothing to resume")
    if state == "finished":
        raise TinaError(f"run {run_dir.run_id} is finished (reached step {info.get('stop_at_step')})")
    from tina_core.launch import withheld_env
    from tina_core.recipe import load_recipe

    # The supervisor that was given these is gone, and tina never wrote them down.
    missing = [k for k in withheld_env(load_recipe(run_dir.recipe)) if k not in os.environ]
    if missing:
        raise TinaError(f"run {run_dir.run_id} was given {', '.join(missing)} through launch.env, which tina keeps "
                        f"out of the run directory: set {'it' if len(missing) == 1 else 'them'} in this shell "
                        f"(export {missing[0]}=...) and resume again")
    return run_dir


def cli_run(home: Path, recipe: Path, *, name: str | None = None, detach: bool = False,
            overrides: Sequence[str] = (), dry_run: bool = False, gpu_hour_usd: float | None = None) -> int:
    if dry_run:
        resolved, command = plan_run(home, recipe, overrides=overrides)
        print(redact_text(f"{resolved.to_yaml().rstrip()}\n# launch command:\n{shlex.join(command)}"))
        return 0
    if detach:
        run_dir = start_run(home, recipe, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd)
        print(run_dir.run_id)
        print(f"supervising in the background: tina logs -f {run_dir.run_id} | tina status {run_dir.run_id} "
              f"| tina stop {run_dir.run_id}", file=sys.stderr)
        return 0
    run_dir, secret_env = create_run(home, recipe, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd)
    print(run_dir.run_id, flush=True)
    return EXIT_CODES.get(supervise_foreground(run_dir, secret_env=secret_env), 1)


def cli_stop(home: Path, run_ref: str, *, wait: bool = True) -> int:
    state = stop_run(home, run_ref, wait=wait)
    print(state)
    return 0 if state in ("stopped", "stopping", "finished") else 1


def cli_resume(home: Path, run_ref: str, *, detach: bool = False) -> int:
    run_dir = _resumable(home, run_ref)
    if detach:
        spawn_daemon(run_dir, resume=True)
        print(run_dir.run_id)
        return 0
    print(run_dir.run_id, flush=True)
    return EXIT_CODES.get(supervise_foreground(run_dir, resume=True), 1)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return redact_text("\n".join(data.decode(errors="replace").splitlines()[-lines:]))


def cli_logs(home: Path, run_ref: str, *, follow: bool = False, lines: int = 40) -> int:
    run_dir = find_run(home, run_ref)
    path = run_dir.train_log
    text = _tail(path, lines)
    if text:
        print(text, flush=True)
    if not follow:
        return 0
    try:
        offset = path.stat().st_size if path.exists() else 0
        buf = b""
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                print(redact_text(raw.decode(errors="replace")), flush=True)
            if not chunk:
                if liveness(run_dir)["state"] not in ("running", "stopping"):
                    if buf:
                        print(redact_text(buf.decode(errors="replace")), flush=True)
                    return 0
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
