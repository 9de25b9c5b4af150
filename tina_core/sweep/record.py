"""A sweep on disk: ``$TINA_HOME/sweeps/<name>/``, which runs it made and how they are run.

    sweep.json   {name, created, engine, max_parallel, runs: [run_id, ...], gpu_ids, slurm, job_id, command}
    job.sh       the Slurm job script (engine slurm)
    tasks/<i>    a link to array task i's run directory (Slurm writes the task's output there)
    queue.lock   the local queue's lock (flock), holding its pid; queue.log, its output

`tina sweep` writes it on the machine it runs on (a cluster's login node); compute nodes only read
it and append to their own run directories. Each run also names its sweep in ``run.json`` (``sweep``,
``sweep_index``) and in its ``queued`` event. Light: `tina ls` and the cockpit read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tina_core.rundir import RunDir, TinaError, read_json, runs_root, write_json_atomic
from tina_core.runstate import lock_holder

SWEEP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,60}$")
ENGINES = ("local", "slurm")
SWEEP_JSON = "sweep.json"
QUEUE_LOCK = "queue.lock"
QUEUE_LOG = "queue.log"
QUEUE_MARK = "tina_core.sweep local"   # in the local queue daemon's command line
START_LOCK = "start.lock"              # RUN_DIR/: taken to start or to cancel a queued run


@dataclass(frozen=True)
class Sweep:
    name: str
    engine: str                     # local | slurm
    max_parallel: int
    runs: tuple[str, ...]           # run ids, in the order of the sweep (a Slurm array's task ids)
    created: str = ""
    command: str = ""               # the `tina sweep` command line that made it
    gpu_ids: tuple[int, ...] = ()   # local: the GPUs the queue hands out
    slurm: dict[str, Any] = field(default_factory=dict)  # the sbatch options it was submitted with
    job_id: str | None = None       # slurm: the array's job id, once submitted

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runs"], d["gpu_ids"] = list(self.runs), list(self.gpu_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sweep":
        return cls(name=str(d["name"]), engine=str(d["engine"]), max_parallel=int(d["max_parallel"]),
                   runs=tuple(d.get("runs") or ()), created=d.get("created") or "", command=d.get("command") or "",
                   gpu_ids=tuple(int(g) for g in d.get("gpu_ids") or ()), slurm=dict(d.get("slurm") or {}),
                   job_id=None if d.get("job_id") is None else str(d["job_id"]))


def sweeps_root(home: Path) -> Path:
    return Path(home) / "sweeps"


def sweep_dir(home: Path, name: str) -> Path:
    return sweeps_root(home) / name


def check_name(name: str) -> str:
    if not SWEEP_NAME_RE.match(name):
        raise TinaError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (at most 61, not starting "
                        "with a punctuation mark)")
    return name


def read_sweep(home: Path, name: str) -> Sweep:
    data = read_json(sweep_dir(home, name) / SWEEP_JSON)
    if not isinstance(data, dict):
        known = ", ".join(list_sweeps(home)) or "none yet"
        raise TinaError(f"no sweep {name!r} in {sweeps_root(home)} (sweeps: {known})")
    try:
        return Sweep.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise TinaError(f"{sweep_dir(home, name) / SWEEP_JSON}: not a sweep record ({e})") from None


def write_sweep(home: Path, sweep: Sweep) -> None:
    write_json_atomic(sweep_dir(home, sweep.name) / SWEEP_JSON, sweep.as_dict())


def list_sweeps(home: Path) -> list[str]:
    root = sweeps_root(home)
    return sorted(p.name for p in root.iterdir() if (p / SWEEP_JSON).exists()) if root.is_dir() else []


def sweep_runs(home: Path, sweep: Sweep) -> list[RunDir]:
    return [RunDir(runs_root(home) / rid) for rid in sweep.runs]


def runs_of(home: Path, name: str) -> list[str]:
    """The run ids of sweep ``name`` (``tina report --sweep``, the cockpit's ``T``)."""
    return list(read_sweep(home, name).runs)


@contextlib.contextmanager
def start_claim(run_dir: RunDir) -> Iterator[None]:
    """Held while a queued run is started or cancelled, so the two never both happen: whoever
    comes second finds the run no longer queued. Blocking; the kernel lets go if the holder dies."""
    fd = os.open(run_dir.path / START_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def queue_pid(home: Path, name: str) -> int | None:
    """The local queue daemon of sweep ``name``, if one is alive."""
    return lock_holder(sweep_dir(home, name) / QUEUE_LOCK, QUEUE_MARK)
