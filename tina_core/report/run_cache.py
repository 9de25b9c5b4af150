"""The run-object cache: ended runs' objects kept on disk between `tina` processes.

`tina ls` and `tina status` are fresh processes: without this each would open the index, ingest
and describe every run again (for 20 finished runs, seconds). A run that has ended (finished,
stopped or failed) with no evaluation queued or running changes only when its files do, so its
run object is kept in ``$TINA_HOME/run-objects.cache.json``, keyed by the stamps (size, mtime) of
the files it was described from and by tina's own code (an edited or upgraded tina describes again).
A live or crashed run is always described afresh (its clock moves, its processes may go).

Clear it by deleting the file; `tina ingest --rebuild` does. `bench/cli_speed.py --cold` measures
what it saves. Light: the standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from tina_core import runstate
from tina_core.rundir import FileStamp, RunDir, RunFiles, parse_json, write_json_atomic
from tina_core.sweep.state import engine_may_change

CACHE_NAME = "run-objects.cache.json"
_PACKAGE = Path(__file__).resolve().parents[1]  # tina_core
_code: str | None = None


def cache_path(home: Path) -> Path:
    return Path(home) / CACHE_NAME


def clear(home: Path) -> None:
    cache_path(home).unlink(missing_ok=True)


def _code_version() -> str:
    """tina's own code as it is installed: the stamps of every module of tina_core."""
    global _code
    if _code is None:
        stamps = []
        for folder, dirs, files in os.walk(_PACKAGE):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    st = os.stat(os.path.join(folder, f))
                    stamps.append(f"{os.path.relpath(os.path.join(folder, f), _PACKAGE)}:{st.st_size}:{st.st_mtime_ns}")
        _code = hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]
    return _code


def files_key(rd: RunDir) -> dict[str, Any]:
    """What a run's object is described from: its files' stamps (``RunFiles``, and the recipe
    snapshot, which names the format rewards the phase is read from) and where they are."""
    return {"path": str(rd.path), "files": dataclasses.asdict(RunFiles.of(rd)),
            "recipe": dataclasses.asdict(s) if (s := FileStamp.of(rd.recipe)) else None}


def cacheable(run: Mapping[str, Any]) -> bool:
    """An object that stays true while the run's files stay as they are. Slurm may still requeue a
    stopped or killed run of a sweep (it then shows queued): only its end is final."""
    return run.get("state") in runstate.ENDED_STATES and not run.get("evals_pending") and not engine_may_change(run)


class RunObjects:
    """The cache of one workspace, read once and written back (if anything changed) by ``save``."""

    def __init__(self, home: Path) -> None:
        self.path = cache_path(home)
        self._dirty = False
        try:
            data = parse_json(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        ok = isinstance(data, dict) and data.get("code") == _code_version() and isinstance(data.get("runs"), dict)
        self._runs: dict[str, dict[str, Any]] = data["runs"] if ok else {}

    def get(self, rd: RunDir, key: dict[str, Any]) -> dict[str, Any] | None:
        """The run's kept object while ``key`` (``files_key(rd)``) is what it was described from."""
        entry = self._runs.get(rd.run_id)
        if isinstance(entry, dict) and entry.get("files") == key:
            return entry.get("run")
        return None

    def put(self, rd: RunDir, key: dict[str, Any], run: Mapping[str, Any]) -> None:
        """Keep ``run`` if it is ``cacheable``; ``key``: ``files_key(rd)`` taken before it was described
        (a file that moved meanwhile then misses next time rather than hiding the change)."""
        if cacheable(run):
            self._runs[rd.run_id] = {"files": key, "run": run}
            self._dirty = True
        elif self._runs.pop(rd.run_id, None) is not None:
            self._dirty = True

    def save(self, present: set[str] | None = None) -> None:
        """Write the cache back; ``present``: the workspace's run ids (others are forgotten)."""
        if present is not None and set(self._runs) - present:
            self._runs = {k: v for k, v in self._runs.items() if k in present}
            self._dirty = True
        if not self._dirty:
            return
        try:
            write_json_atomic(self.path, {"code": _code_version(), "runs": self._runs})
        except OSError:
            pass  # a full or read-only disk only costs the next listing its time
        self._dirty = False
