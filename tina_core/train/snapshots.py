"""The ring of adapter snapshots, and the pins that keep the ones bracketing the transition.

The live detector raises its alarm some steps after the format turn, and the save grid may be 50
steps apart, so a checkpoint at or just before the marker's step would rarely exist. The trainer's
rank 0 therefore writes the LoRA adapter at the end of every step into a small ring,
``RUN_DIR/snapshots/step-N/`` (``adapter_model.safetensors``, ``adapter_config.json`` and the
``tina-snapshot.json`` marker, written last), keeping the newest ``stop.ring`` of them. The ring is
out of HF Trainer's sight (its resume and rotation look at ``checkpoints/checkpoint-*``), and it
never takes the disk space a real checkpoint needs.

Once a marker is placed, the supervisor pins the snapshots that bracket it (the latest at or before
its step, the first after it) as ``checkpoints/checkpoint-N/``: hard links to the ring's files (no
copy, and the ring may rotate them away meanwhile) plus ``tina-snapshot.json``. A pinned snapshot
is evaluable (merged into the base model like any adapter) but not resumable (no optimizer,
scheduler or RNG state): ``RunDir.checkpoint_steps()`` does not list it, ``evaluable=True`` does.
Pins that no longer bracket the marker (it moved, or was rejected) are removed; real checkpoints
never are.

The save grid's own rotation (``grpo.save_total_limit``) is tina's too (``rotate``): HF Trainer's
deletes the oldest ``checkpoint-*`` folders, and with them the pins and the checkpoint the alarm
asked for; tina's keeps the newest N of the grid and everything that brackets the marker.

Disk: the ring holds ``stop.ring`` adapters, plus the two pins once the ring has rotated past them.
``adapter_bytes`` gives a recipe's adapter size from its model's architecture (Tina's r32 LoRA on
DeepSeek-R1-Distill-Qwen-1.5B: 147.7 MB in fp32, so the default ring of 16 takes 2.4 GB; half that
where DeepSpeed's bf16 engine holds the adapter in bf16). The trainer sizes its own adapter from
its parameters, so its room check is exact either way.

Light: the standard library only (the trainer passes its own save function).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from tina_core.analysis.policy import brackets
from tina_core.rundir import (CHECKPOINT_SNAPSHOT, RunDir, now_iso, read_json,
                              write_json_atomic)

# Snapshots kept. The alarm comes a median 2 steps after the marker's step (95%: 11, on
# bench/detector.py's synthetic curves) and the verdict ~12 points later; the supervisor pins at
# the alarm and again at the verdict, so 16 steps cover both with room for its polling delay.
DEFAULT_RING = 16
SNAPSHOT_RE = re.compile(r"^step-(\d+)$")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# Room a checkpoint needs, before one exists to measure: the adapter, two Adam moments of it, and
# the rest (trainer state, RNG, tokenizer) -- measured on the tiny recipe's checkpoints: 3.7x.
CHECKPOINT_PER_ADAPTER = 4.0

# PEFT keeps (and saves) LoRA weights in fp32, even on a bf16 base: the bound (a bf16 DeepSpeed
# engine halves it)
ADAPTER_BYTES_PER_PARAM = 4


# --- sizes --------------------------------------------------------------------------------------
def adapter_bytes(recipe: Any) -> int | None:
    """A recipe's LoRA adapter on disk, from its model's architecture (``train.memory``): r x (in +
    out) per targeted projection and layer, 4 bytes a weight. None when the architecture is unknown."""
    from tina_core.train import memory

    config, _ = memory.model_config(recipe)
    if config is None:
        return None
    arch = memory.Architecture.from_config(config)
    return arch.lora_parameters(int(recipe.get("lora.r") or 8), recipe.get("lora.target_modules")) * ADAPTER_BYTES_PER_PARAM


def ring_size(recipe: Any) -> int:
    return int(recipe.get("stop.ring", DEFAULT_RING) or 0)


def disk_line(recipe: Any) -> str:
    """The dry run's word on the ring's disk: its bound, which ``stop.ring`` sets."""
    n, each = ring_size(recipe), adapter_bytes(recipe)
    if n == 0:
        return "# disk: no snapshot ring (stop.ring 0): checkpoints on the save grid and at the stop only"
    if each is None:
        return f"# disk: the snapshot ring keeps {n} adapters (stop.ring); their size is unknown here"
    return (f"# disk: the snapshot ring keeps {n} adapters (stop.ring) of {_size(each)} at most (fp32): "
            f"{_size(n * each)}, and up to {_size((n + 2) * each)} with the two it pins at the transition")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# --- the ring (the trainer's rank 0) ---------------------------------------------------------
def snapshot_path(rd: RunDir, step: int) -> Path:
    return rd.snapshots / f"step-{step}"


def ring_steps(rd: RunDir) -> list[int]:
    """Steps with a complete snapshot in the ring, ascending."""
    try:
        names = os.listdir(rd.snapshots)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := SNAPSHOT_RE.match(n))
                  and (rd.snapshots / n / CHECKPOINT_SNAPSHOT).exists())


def _dir_bytes(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    except OSError:
        return 0


def room_for_checkpoint(rd: RunDir, snapshot_size: int) -> bool:
    """Whether the disk keeps room for a full checkpoint after one more snapshot: the ring must
    never cost the run its next real checkpoint."""
    done = rd.checkpoint_steps()
    need = _dir_bytes(rd.checkpoint_path(done[-1])) if done else 0
    need = need or int(CHECKPOINT_PER_ADAPTER * snapshot_size)
    try:
        free = shutil.disk_usage(rd.path).free
    except OSError:
        return False
    return free - snapshot_size >= need


def prune(rd: RunDir, keep: int) -> list[int]:
    """Remove all but the newest ``keep`` snapshots (and leftovers of interrupted writes)."""
    steps = ring_steps(rd)
    gone = steps[: max(0, len(steps) - keep)]
    for step in gone:
        shutil.rmtree(snapshot_path(rd, step), ignore_errors=True)
    for p in (rd.snapshots.iterdir() if rd.snapshots.is_dir() else ()):
        if p.name.startswith(".step-"):
            shutil.rmtree(p, ignore_errors=True)
    return gone


def write_snapshot(rd: RunDir, step: int, save: Callable[[Path], None], keep: int, *, attempt: int,
                   size: int) -> Path | None:
    """Save the adapter of ``step`` (about ``size`` bytes) into the ring (``save(folder)`` writes
    its files), keeping the newest ``keep``; None when skipped for want of room (see
    room_for_checkpoint). Written under a hidden name and renamed, so the ring only ever shows
    whole snapshots. Raises what ``save`` raises, with nothing left behind."""
    if keep <= 0:
        return None
    prune(rd, keep - 1)  # before writing: the ring never holds more than ``keep``
    if not room_for_checkpoint(rd, size):
        return None
    rd.snapshots.mkdir(exist_ok=True)
    tmp, dest = rd.snapshots / f".step-{step}.{os.getpid()}", snapshot_path(rd, step)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save(tmp)
        write_json_atomic(tmp / CHECKPOINT_SNAPSHOT, {
            "step": step, "attempt": attempt, "time": now_iso(), "resumable": False,
            "files": sorted(p.name for p in tmp.iterdir())})
        shutil.rmtree(dest, ignore_errors=True)  # a stale one of an attempt that went further
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def drop_after(rd: RunDir, step: int) -> list[int]:
    """Remove ring snapshots past ``step``: a resumed attempt retrains those steps, and what the
    dead one saved there is not what this one will have."""
    gone = [s for s in ring_steps(rd) if s > step]
    for s in gone:
        shutil.rmtree(snapshot_path(rd, s), ignore_errors=True)
    return gone


# --- pins (the supervisor) -----------------------------------------------------------------------
def pinned_steps(rd: RunDir) -> list[int]:
    """Checkpoints that are pinned snapshots (adapter only, no ``tina-complete.json``)."""
    return [s for s in rd.checkpoint_steps(evaluable=True) if rd.checkpoint_kind(s) == "snapshot"]


def pin(rd: RunDir, step: int, why: dict[str, Any]) -> bool:
    """Make the ring's snapshot of ``step`` a checkpoint: ``checkpoints/checkpoint-N/`` with hard
    links to its files (copies where the filesystem has none) and the snapshot marker. False when
    the ring no longer has it or that checkpoint already exists."""
    src, dest = snapshot_path(rd, step), rd.checkpoint_path(step)
    if dest.exists() or not (src / CHECKPOINT_SNAPSHOT).exists():
        return False
    tmp = rd.checkpoints / f".pin-{step}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for f in src.iterdir():
            if f.name == CHECKPOINT_SNAPSHOT or not f.is_file():
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        marker = read_json(src / CHECKPOINT_SNAPSHOT, {}) or {}
        write_json_atomic(tmp / CHECKPOINT_SNAPSHOT, {**marker, "pinned": {**why, "time": now_iso()},
                                                      "files": sorted(p.name for p in tmp.iterdir())})
        os.rename(tmp, dest)
    except FileNotFoundError:  # the ring rotated it away meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.exists():  # the trainer saved this step itself meanwhile
            return False
        raise
    return True


def unpin(rd: RunDir, step: int) -> bool:
    """Remove a pinned snapshot; a real checkpoint (``tina-complete.json``) is never touched."""
    if rd.checkpoint_kind(step) != "snapshot":
        return False
    shutil.rmtree(rd.checkpoint_path(step), ignore_errors=True)
    return True


def reconcile(rd: RunDir, marker: int | None, why: dict[str, Any], keep: Iterable[int] = ()
              ) -> dict[str, Any]:
    """Pin what brackets ``marker`` (None: no marker) and unpin the other pinned snapshots, except
    those in ``keep`` (evaluated ones). The brackets are chosen among the checkpoints and the
    ring together, so a real checkpoint closer to the marker is used as it is.
    Returns ``{before, after, pinned, unpinned}``."""
    have = set(rd.checkpoint_steps(evaluable=True))
    sides: dict[str, int | None] = {"before": None, "after": None}
    pinned: list[int] = []
    if marker is not None:
        for side, step in zip(sides, brackets(marker, have | set(ring_steps(rd)))):
            if step is not None and step not in have and pin(rd, step, {**why, "side": side}):
                pinned.append(step)
                have.add(step)
            sides[side] = step if step in have else None
    keep = {*keep, *(s for s in sides.values() if s is not None)}
    unpinned = [s for s in pinned_steps(rd) if s not in keep and unpin(rd, s)]
    return {**sides, "pinned": pinned, "unpinned": unpinned}


# --- the save grid's rotation (the trainer's rank 0) ------------------------------------------------
def rotate(rd: RunDir, limit: int) -> list[int]:
    """``save_total_limit`` as tina keeps it: the newest ``limit`` checkpoints of the save grid,
    and besides them every one that matters, which HF Trainer's own rotation (it deletes the
    oldest ``checkpoint-*`` folders, pins included) would lose: the two that bracket the marker in
    force, any an evaluation was queued for, and any newer than the step the live watch has judged
    through (the marker there is not known yet). Pinned snapshots are the watch's (``reconcile``).
    Returns the steps removed."""
    from tina_core.events import Kind, is_kind, marker
    from tina_core.train.pace import WATCH_FILE

    complete = rd.checkpoint_steps()
    if limit <= 0 or len(complete) <= limit:
        return []
    events = rd.read_events()
    keep = set(complete[-limit:])
    m = marker(events)
    if m is not None and isinstance(m.get("step"), int):
        keep.update(s for s in brackets(m["step"], complete) if s is not None)
    keep.update(c for e in events if is_kind(e, Kind.EVAL_QUEUED) and isinstance(c := e.get("checkpoint"), int))
    judged = (read_json(rd.path / WATCH_FILE, {}) or {}).get("judged_through")
    if isinstance(judged, int):
        keep.update(s for s in complete if s > judged)
    gone = [s for s in complete if s not in keep]
    for s in gone:
        shutil.rmtree(rd.checkpoint_path(s), ignore_errors=True)
    return gone
