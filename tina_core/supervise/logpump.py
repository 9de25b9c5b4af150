"""Copying a process's output into a log file with credentials masked, whatever the disk says.

``LogPump`` copies the trainer's output into ``train.log``; ``output_to_log`` sends a detached
supervisor's own stdout/stderr through one, in a forked writer that outlives it.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from tina_core.credentials import MASK, redact_text, secret_values
from tina_core.rundir import APPEND_FLAGS, append_bytes, now_iso, write_error_text


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
                        text = text.replace(value, MASK)
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


def tail_text(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log (none for 0), credential values masked."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return redact_text("\n".join(data.decode(errors="replace").splitlines()[-lines:]))


