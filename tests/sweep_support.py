"""What the sweep tests share: `tina` as a user types it, waiting on the run directories, and the
steps a run logged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tina_core.rundir import RunDir, iter_jsonl

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = ("train_runtime", "train_loss")  # the trainer's last log line, not a step


def tina(home: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                          env={**os.environ, "TINA_HOME": str(home), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(pred: Callable[[], Any], timeout: float, what: Callable[[], str], every: float = 0.2) -> Any:
    """Poll ``pred`` (every ``every`` seconds) until it is true; on timeout fail with ``what()``
    (the state it was in)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {what()}")
        time.sleep(every)


def logged_steps(rd: RunDir) -> list[int]:
    """Every step the run's trainers logged, over all attempts, in the order written: a run that
    trained each step exactly once, across stops and resumes, gives 1..N."""
    return [r["step"] for r in iter_jsonl(rd.metrics)
            if isinstance(r.get("step"), int) and not any(k in r for k in SUMMARY_KEYS)]
