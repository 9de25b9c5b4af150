"""The Slurm engine's thin layer over Slurm's own commands: the job script, ``sbatch``, ``squeue``,
``scontrol`` and ``scancel``.

A sweep is one job array (``--array=0-(n-1)%K``): task i runs the sweep's run i
(``python -m tina_core.sweep task``), ``--requeue`` lets Slurm run a preempted or requeued task
again, and ``--signal=B:TERM@S`` sends the task TERM S seconds before its time limit, so the run
stops gracefully (a checkpoint at the end of its step) and the task asks to be requeued; the
requeued task resumes the same run. What a task is doing is read with ``squeue`` (and ``scontrol
show job``), which work without an accounting database; ``sacct`` does not.

Light (subprocess only): `tina ls` and the cockpit ask ``tasks`` for the state of queued runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tina_core.rundir import TinaError, workspace_config

# the `slurm:` keys of $TINA_HOME/config.yaml, and the `tina sweep` options of the same names
OPTION_KEYS = ("partition", "account", "gpus_per_task", "cpus_per_task", "time", "signal_s", "sbatch", "python")
DEFAULT_SIGNAL_S = 300          # TERM this long before the time limit: a step and a checkpoint's save
CALL_TIMEOUT_S = 20.0
TIME_RE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?(?::(\d+))?|(?::(\d+))?(?::(\d+))?)$")
# Slurm's end states that mean the task was ended from outside, as a person reads them
KILLED = {"TIMEOUT": "its time limit", "NODE_FAIL": "a node failure", "PREEMPTED": "preemption",
          "OUT_OF_MEMORY": "out of memory", "BOOT_FAIL": "a node that failed to boot", "DEADLINE": "its deadline",
          "CANCELLED": "scancel", "FAILED": "a failed batch step"}
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED")
RUNNING = ("RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT")


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    gpus_per_task: int | None = None    # None: the largest launch.gpus of the sweep's runs
    cpus_per_task: int | None = None
    time: str | None = None             # Slurm's forms: MM, HH:MM:SS, D-HH:MM...
    signal_s: int = DEFAULT_SIGNAL_S
    sbatch: tuple[str, ...] = ()        # more `#SBATCH` lines, e.g. --qos=normal
    python: str | None = None           # the Python that runs tina on the nodes (default: this one)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _seconds(limit: str) -> int:
    m = TIME_RE.match(limit)
    if not m:
        raise TinaError(f"slurm time {limit!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    a, dh, dm, ds, b, c = m.groups()
    if dh is not None:                       # D-HH[:MM[:SS]]
        return int(a) * 86400 + int(dh) * 3600 + int(dm or 0) * 60 + int(ds or 0)
    if c is not None:                        # HH:MM:SS
        return int(a) * 3600 + int(b) * 60 + int(c)
    return int(a) * 60 + int(b) if b is not None else int(a) * 60   # MM:SS, or minutes


def options(home: Path, given: dict[str, Any]) -> SlurmOptions:
    """The sbatch options: ``given`` (the command line; None: not given) over
    ``$TINA_HOME/config.yaml``'s ``slurm:`` section. Checked here, before anything is created."""
    conf = workspace_config(home).get("slurm") or {}
    where = home / "config.yaml"
    if not isinstance(conf, dict):
        raise TinaError(f"{where}: slurm: expected a mapping of {', '.join(OPTION_KEYS)}")
    unknown = sorted(set(conf) - set(OPTION_KEYS))
    if unknown:
        raise TinaError(f"{where}: slurm: unknown key(s) {', '.join(unknown)} (known: {', '.join(OPTION_KEYS)})")
    merged = {**conf, **{k: v for k, v in given.items() if v not in (None, (), [])}}
    out: dict[str, Any] = {}
    for key in ("partition", "account", "time", "python"):
        if merged.get(key) is not None:
            out[key] = str(merged[key])
    for key in ("gpus_per_task", "cpus_per_task", "signal_s"):
        if merged.get(key) is not None:
            try:
                out[key] = int(merged[key])
            except (TypeError, ValueError):
                raise TinaError(f"slurm {key}: expected a whole number, got {merged[key]!r}") from None
            if out[key] < (0 if key == "gpus_per_task" else 1):
                raise TinaError(f"slurm {key}: {out[key]} is too small")
    lines = merged.get("sbatch") or ()
    if isinstance(lines, str):
        lines = [lines]
    if not all(isinstance(x, str) and x.startswith("-") for x in lines):
        raise TinaError(f"slurm sbatch: expected sbatch options such as --qos=normal, got {lines!r}")
    out["sbatch"] = tuple(lines)
    opts = SlurmOptions(**out)
    if opts.time is not None and opts.signal_s >= _seconds(opts.time):
        raise TinaError(f"slurm signal_s {opts.signal_s} is not shorter than the time limit {opts.time}: the task "
                        "would be told to stop before it starts")
    return opts


def job_script(*, home: Path, name: str, n: int, max_parallel: int, opts: SlurmOptions, gpus: int,
               cwd: Path) -> str:
    """The array job for sweep ``name``: task i runs run i of the sweep."""
    from tina_core.sweep.record import sweep_dir

    folder = sweep_dir(home, name)
    if any(c.isspace() for c in str(folder) + str(cwd)):
        raise TinaError(f"the Slurm engine needs a workspace path without spaces ({folder})")
    python = opts.python or sys.executable
    gpus = opts.gpus_per_task if opts.gpus_per_task is not None else gpus
    lines = [f"--job-name=tina-{name}", f"--array=0-{n - 1}%{max_parallel}", "--requeue",
             f"--signal=B:TERM@{opts.signal_s}", "--open-mode=append",
             f"--output={folder}/tasks/%a/slurm-%A_%a.out", f"--chdir={cwd}"]
    lines += [f"--partition={opts.partition}"] if opts.partition else []
    lines += [f"--account={opts.account}"] if opts.account else []
    lines += [f"--gres=gpu:{gpus}"] if gpus else []
    lines += [f"--cpus-per-task={opts.cpus_per_task}"] if opts.cpus_per_task else []
    lines += [f"--time={opts.time}"] if opts.time else []
    lines += list(opts.sbatch)
    return "\n".join([
        "#!/bin/bash",
        f"# tina sweep {name}: {n} run(s), {max_parallel} at a time; task i runs the sweep's run i",
        *(f"#SBATCH {line}" for line in lines),
        "# The task is tina's runner: it supervises the run in the foreground, stops it gracefully on",
        "# TERM and, before the time limit, asks Slurm to requeue it; a requeued task resumes the run.",
        f"export TINA_HOME={shlex.quote(str(home))}",
        f'exec {shlex.quote(python)} -m tina_core.sweep task {shlex.quote(str(home))} {shlex.quote(name)} '
        '"$SLURM_ARRAY_TASK_ID"',
        ""])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise TinaError(f"{name} not found: the Slurm engine runs where Slurm's commands do (a login node); "
                        "`make slurm-up` starts a one-node cluster here")
    return path


def _call(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([_tool(args[0]), *args[1:]], capture_output=True, text=True, env=env,
                              timeout=CALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TinaError(f"{args[0]} did not answer within {CALL_TIMEOUT_S:g} s (is slurmctld up?)") from None


def _said(proc: subprocess.CompletedProcess) -> str:
    return (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]


def submit(script: Path, *, env: dict[str, str] | None = None) -> str:
    """``sbatch`` the job script; its job id."""
    proc = _call(["sbatch", "--parsable", str(script)], env=env)
    if proc.returncode != 0:
        raise TinaError(f"sbatch refused {script}: {_said(proc)}")
    return proc.stdout.strip().split(";")[0]


def cancel(job: str) -> None:
    """``scancel`` a job or one array task (``JOB_TASK``)."""
    proc = _call(["scancel", job])
    if proc.returncode != 0:
        raise TinaError(f"scancel {job}: {_said(proc)}")


def signal_batch(job: str, sig: str) -> None:
    """Send ``sig`` to a task's batch step only: tina's runner, not the trainer."""
    proc = _call(["scancel", "--batch", f"--signal={sig}", job])
    if proc.returncode != 0:
        raise TinaError(f"scancel --signal={sig} {job}: {_said(proc)}")


def requeue(job_id: str) -> None:
    proc = _call(["scontrol", "requeue", job_id])
    if proc.returncode != 0:
        raise TinaError(f"scontrol requeue {job_id}: {_said(proc)}")


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s ``Key=Value`` fields of one job ({} when Slurm does not know it)."""
    try:
        proc = _call(["scontrol", "show", "job", "-o", job_id])
    except TinaError:
        return {}
    if proc.returncode != 0:
        return {}
    return dict(w.split("=", 1) for w in proc.stdout.split() if "=" in w)


@dataclass(frozen=True)
class SlurmTask:
    """One array task as ``squeue`` sees it."""

    job: str            # ARRAYJOB_TASK
    job_id: str         # the task's own job id (the array's while it has not started)
    state: str          # PENDING, RUNNING, COMPLETED, TIMEOUT...
    reason: str | None  # why it waits (Priority, Resources, JobArrayTaskLimit, BeginTime...) or ended
    node: str | None

    @property
    def waiting(self) -> bool:
        return self.state in WAITING

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def killed(self) -> str | None:
        """What ended the task from outside, in words (time limit, node failure...), else None."""
        return KILLED.get(self.state)


def tasks(job_ids: list[str]) -> dict[str, SlurmTask] | None:
    """Every task Slurm still knows of these array jobs, by ``JOB_TASK`` (one ``squeue`` call); None
    when Slurm could not be asked. A job Slurm has forgotten (``MinJobAge`` after it ended) is
    simply absent."""
    if not job_ids:
        return {}
    try:
        proc = _call(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%A|%T|%r|%N"])
    except TinaError:
        return None
    if proc.returncode != 0:
        return {} if "invalid job id" in proc.stderr.lower() else None
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        job, job_id, state, reason, node = parts
        if "_" not in job:  # a one-task array is listed by its array id alone once it ends
            job = f"{job}_0"
        state = state.split()[0].rstrip("+")
        out[job] = SlurmTask(job, job_id, state, None if reason in ("None", "") else reason, node or None)
    return out


def available() -> bool:
    """Whether Slurm's commands are here and the controller answers."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False
