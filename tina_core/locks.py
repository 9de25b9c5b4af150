"""The locks between tina's processes: one ``flock`` primitive, and what is built on it.

- the run lock (``supervisor.lock``): held by a run's supervisor for its lifetime, and by whoever
  stops what a dead supervisor left behind (``tina stop``), so one process at a time acts on a run;
- the stop claim (``stop.lock``): held by the one ``tina stop`` (or cockpit) asking a run to stop,
  so a second one meanwhile is told a stop is under way;
- ``PidLock``: a daemon's lock on a file holding its pid (the evaluation worker's, a sweep's queue).

The kernel lets every one of them go when its holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from tina_core.rundir import RunDir, TinaError, read_json

RUN_LOCK = "supervisor.lock"  # RUN_DIR/: the run's supervisor (or the process acting in its place)
STOP_LOCK = "stop.lock"       # RUN_DIR/: held by the `tina stop` that is asking, so a second one is told
# A killed supervisor shows as a zombie while its other threads still exit and hold the lock for a
# moment: how long a taker waits for such a holder (never for one still supervising).
RUN_LOCK_GRACE_S = 5.0


def try_flock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing) taken at once: its descriptor
    (closing it lets go), or None while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def claim(path: Path) -> Iterator[bool]:
    """True for the one caller holding ``path`` now; another one meanwhile gets False."""
    fd = try_flock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def stop_claim(run_path: Path) -> contextlib.AbstractContextManager[bool]:
    """The stop claim of the run at ``run_path``: True for the one caller that may ask it to stop now."""
    return claim(run_path / STOP_LOCK)


def take_run_lock(run_dir: RunDir, *, holder_ending: Callable[[], bool], grace_s: float = RUN_LOCK_GRACE_S) -> int:
    """The run lock's descriptor (closing it lets go), or a TinaError naming the supervisor that
    holds it. ``holder_ending``: whether the holder is going (its pid gone, its run ended): such a
    holder is waited for, up to ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while (fd := try_flock(run_dir.path / RUN_LOCK)) is None:
        if holder_ending() and time.monotonic() < deadline:
            time.sleep(0.05)
            continue
        pid = (read_json(run_dir.supervisor, {}) or {}).get("pid")
        raise TinaError(f"run {run_dir.run_id} is already supervised" + (f" (supervisor pid {pid})" if pid else "")
                        + "; use `tina stop` first, or `tina logs -f` to watch it")
    return fd


class PidLock:
    """A daemon's lock: an flock on a file that holds its pid, one daemon per file (the evaluation
    worker's, a sweep's queue). The kernel lets it go when the daemon dies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = try_flock(self.path)
        if fd is None:
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def held(self) -> bool:
        """Whether a daemon holds it now (taken and let go at once when free)."""
        if self.acquire():
            self.release()
            return False
        return True
