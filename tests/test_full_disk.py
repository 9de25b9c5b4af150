"""A disk that fills up under a real tiny run (`tina run recipes/tiny.yaml`, 6 steps, checkpoints at
3 and 6): the run fails with the disk's reason after its restarts, nothing written before is lost or
glued to what comes after, a half-written checkpoint is never resumed from, and `tina resume` goes on
from the latest complete one once there is room.

Two ways to fill a disk. A file-size limit (RLIMIT_FSIZE, as `ulimit -f`: a write past it fails
with EFBIG just as one on a full disk fails with ENOSPC; Python ignores SIGXFSZ) works anywhere,
CI included. A small tmpfs is a real full disk, where mounting one is allowed (root); elsewhere
that test skips."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import TINY_RUN_OVERRIDES
from test_cli import TINY, tina
from tina_core.rundir import RunDir, iter_jsonl, list_run_dirs
from tina_core.store.index import Store

pytestmark = pytest.mark.slow

# On the trainer's PYTHONPATH (launch.env): once checkpoint-3 is complete, no file may grow more
# than 100 bytes past metrics.jsonl's size then, in this trainer and in every later one while the
# file `full` is there. Step 4's metrics line is cut off after 100 bytes.
FILL_AFTER_CHECKPOINT_3 = '''
import os, resource
from pathlib import Path

here = Path(__file__).parent
if (here / "full").exists():
    def fill(limit):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    if (here / "limit").exists():
        fill(int((here / "limit").read_text()))
    else:
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            dst = Path(dst)
            if dst.name == "tina-complete.json" and dst.parent.name == "checkpoint-3":
                limit = (dst.parents[2] / "metrics.jsonl").stat().st_size + 100
                (here / "limit").write_text(str(limit))
                fill(limit)

        os.replace = replace
'''


def _sets(*overrides: str) -> list[str]:
    return [a for o in (*TINY_RUN_OVERRIDES, *overrides) for a in ("--set", o)]


def _the_run(home: Path) -> RunDir:
    [rd] = list_run_dirs(home)
    return rd


def _steps(rd: RunDir) -> list[tuple[int, int]]:
    return [(r["step"], r["attempt"]) for r in iter_jsonl(rd.metrics) if "reward" in r]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.extended
def test_disk_full_after_a_checkpoint(home, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TINA_RESTART_BACKOFF_S", "0.2")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FILL_AFTER_CHECKPOINT_3)
    (hook / "full").touch()
    out = tina(home, "run", str(TINY), *_sets(f"launch.env.PYTHONPATH={hook}", "launch.max_restarts=1"),
               timeout=300)
    rd = _the_run(home)
    log = rd.train_log.read_text()
    assert out.returncode == 1, out.stderr[-3000:] + log[-3000:]

    # One restart, which met the same full disk; then failed, saying why.
    why = "File too large while writing metrics.jsonl"
    events = rd.read_events()
    assert [e["code"] for e in events if e["event"] == "attempt_exited"] == [74, 74]
    assert events[-1]["event"] == "failed"
    assert events[-1]["reason"].startswith(f"gave up after 1 restarts; last attempt exit code 74: {why}: make room")
    assert f"`tina resume {rd.run_id}`" in events[-1]["reason"]
    assert f"tina train: error: {why}" in log
    status = tina(home, "status", rd.run_id)
    assert f"failed: gave up after 1 restarts; last attempt exit code 74: {why}" in status.stdout

    # What was written stays: steps 1-3 whole, checkpoint-3 complete, and the start of step 4's
    # line, cut off where the disk filled.
    before = rd.metrics.read_bytes()
    assert len(before) == int((hook / "limit").read_text())
    *whole, torn = before.split(b"\n")
    assert [json.loads(line)["step"] for line in whole] == [1, 2, 3]
    assert torn.startswith(b'{"step":4,"attempt":1,') and len(torn) == 100
    assert rd.checkpoint_steps() == [3]
    checkpoint_3 = _files(rd.checkpoint_path(3))

    (hook / "full").unlink()  # room again
    out = tina(home, "resume", rd.run_id, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from checkpoint-3" in rd.train_log.read_text()
    after = rd.metrics.read_bytes()
    assert after.startswith(before + b"\n")  # nothing rewritten; the torn line stands alone
    assert _steps(rd) == [(1, 1), (2, 1), (3, 1), (4, 3), (5, 3), (6, 3)]
    assert rd.checkpoint_steps() == [3, 6] and _files(rd.checkpoint_path(3)) == checkpoint_3

    # The index sets the torn line aside and has every step once.
    assert "1 lines quarantined" in tina(home, "ingest").stdout
    [bad] = Store(home).quarantine(rd.run_id)
    assert (bad["file"], bad["offset"], bad["text"]) == ("metrics.jsonl", len(before) - 100, torn.decode())
    run = json.loads(tina(home, "status", rd.run_id, "--json").stdout)
    assert (run["state"], run["step"], run["failure"]) == ("finished", 6, None)
    assert [c["step"] for c in run["checkpoints"]] == [3, 6]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: room for the run's files and one checkpoint (~620 KB), not for two."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                 capture_output=True).returncode == 0
    except FileNotFoundError:
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.extended
def test_a_real_full_disk_mid_checkpoint(small_disk, tiny_model, tiny_cache, monkeypatch):
    monkeypatch.setenv("TINA_CACHE", str(tiny_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = small_disk / "tina-home"
    out = tina(home, "run", str(TINY), *_sets("launch.max_restarts=0"), timeout=300)
    rd = _the_run(home)
    assert out.returncode == 1, out.stderr[-3000:]
    events = rd.read_events()
    assert events[-1]["event"] == "failed", events[-3:]
    assert events[-1]["reason"].startswith("gave up after 0 restarts; last attempt exit code 74: "
                                           "No space left on device while saving checkpoint-6: make room")
    # checkpoint-6 was cut off: no marker, so it does not count.
    assert rd.checkpoint_steps() == [3] and rd.checkpoint_steps(complete_only=False) == [3, 6]
    # The index cannot be written either: readers answer from the run directory, saying so.
    status = tina(home, "status", rd.run_id, "--json")
    assert status.returncode == 0 and "showing run directories only" in status.stderr
    assert json.loads(status.stdout)["failure"] == events[-1]["reason"]
    before = rd.metrics.read_bytes()
    checkpoint_3 = _files(rd.checkpoint_path(3))

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    out = tina(home, "resume", rd.run_id, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    log = rd.train_log.read_text()
    assert "set aside half-written checkpoint-6" in log and "resuming from checkpoint-3" in log
    assert rd.metrics.read_bytes().startswith(before)
    assert _steps(rd) == [(s, 1) for s in range(1, 7)] + [(s, 2) for s in range(4, 7)]
    assert rd.checkpoint_steps() == [3, 6] and _files(rd.checkpoint_path(3)) == checkpoint_3
    run = json.loads(tina(home, "status", rd.run_id, "--json").stdout)
    assert (run["state"], run["step"]) == ("finished", 6)
