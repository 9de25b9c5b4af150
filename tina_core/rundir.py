"""The workspace and the run directory: the on-disk contract every part of tina shares.

A workspace (``$TINA_HOME``, default ``~/.tina``) holds ``runs/<run_id>/`` and the DuckDB index
``tina.duckdb``. The JSONL files in a run directory are the source of truth and are only ever
appended to, one complete line per write, so a reader sees either nothing or a whole record (or a
partial last line, which it must leave for later).

Kept free of heavy imports: the CLI and the TUI import this at start-up.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tina_core.credentials import redact
from tina_core.events import Kind, as_kind

DEFAULT_HOME = Path("~/.tina")


class TinaError(Exception):
    """A user-facing error: the message is shown as is, and the command exits non-zero."""


def tina_home(home: str | os.PathLike | None = None) -> Path:
    """The workspace: ``home`` if given, else ``$TINA_HOME``, else ``~/.tina``."""
    raw = home or os.environ.get("TINA_HOME") or DEFAULT_HOME
    path = Path(raw).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise TinaError(f"the workspace {path} is not a directory (--home or $TINA_HOME)")
    return path


def workspace_config(home: Path) -> dict[str, Any]:
    """``$TINA_HOME/config.yaml`` (``prices:``, ``alerts:``) as a mapping; {} when there is none."""
    path = home / "config.yaml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TinaError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TinaError(f"{path}: expected a mapping (prices:, alerts:)")
    return data


def cache_root(home: str | os.PathLike | None = None) -> Path:
    """Built and derived things kept between runs (the tiny model, validation verdicts):
    ``$TINA_CACHE``, else ``<workspace>/cache``."""
    env = os.environ.get("TINA_CACHE")
    return Path(env).expanduser().resolve() if env else tina_home(home) / "cache"


def now_iso(ts: float | None = None) -> str:
    """``ts`` (epoch seconds, default now) as an ISO 8601 UTC time to the millisecond."""
    when = _dt.datetime.now(_dt.timezone.utc) if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return when.isoformat(timespec="milliseconds")


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return s[:60] or "run"


# --- writing on a disk that may be full ----------------------------------------------------------
# A full disk (ENOSPC), a quota (EDQUOT) or a file-size limit (EFBIG, `ulimit -f`; Python ignores
# SIGXFSZ, so the write fails rather than the process dying).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_error_text(e: OSError, what: str | os.PathLike | None = None, doing: str = "writing") -> str:
    """``No space left on device while writing metrics.jsonl``: a failed write, said plainly."""
    what = what or e.filename
    cause = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    return f"{cause} while {doing} {Path(what).name}" if what else cause


APPEND_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT  # read too: append_bytes looks at the last byte


def append_bytes(fd: int, data: bytes) -> None:
    """Append whole lines to ``fd`` (opened with ``APPEND_FLAGS``). A full disk can take part of a
    write and refuse the rest, leaving a torn last line: a retry of that same write finishes it,
    and anything else starts on a new line, so the torn line stands alone (a reader sets it
    aside) and never swallows the record after it."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        start = max(0, size - len(data))
        tail = os.pread(fd, size - start, start)
        cut = tail.rfind(b"\n")
        torn = tail[cut + 1:]
        ours = (cut >= 0 or start == 0) and data.startswith(torn)
        data = data[len(torn):] if ours else b"\n" + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- JSONL -------------------------------------------------------------------------------------
def parse_json(text: str | bytes) -> Any:
    """One JSON document. Anything that is not one raises ValueError, a value nested too deeply for
    Python's parser included (``json`` raises RecursionError for a line of a few thousand ``[``):
    a hostile line is one malformed line, never the reader's end."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def append_jsonl(path: Path, record: dict[str, Any], *, fsync: bool = False) -> None:
    """Append one record as one line with a single write, so readers never see half a record
    followed by another (unless the disk fills mid-line: see ``append_bytes``). Credentials are
    masked first. A failed write raises OSError naming ``path``."""
    line = json.dumps(redact(record), separators=(",", ":"), default=str, allow_nan=True) + "\n"
    try:
        fd = os.open(path, APPEND_FLAGS, 0o644)
        try:
            append_bytes(fd, line.encode())
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        e.filename = e.filename or str(path)
        raise


def read_whole_lines(path: Path, offset: int, size: int) -> tuple[bytes, int]:
    """The complete lines of ``path`` between ``offset`` and ``size`` (a partial last line is left
    for later), and the offset after them."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size - offset)
    end = data.rfind(b"\n")
    return (b"", offset) if end < 0 else (data[: end + 1], offset + end + 1)


class JsonlTail:
    """The new complete records of a growing JSONL file, from where the last ``read`` stopped: a
    partial last line waits for the next call, a malformed line is skipped (the store counts it),
    and a file that shrank (rewritten) is read again from its start. ``from_end``: only what is
    appended after now."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = path
        self.offset = 0
        if from_end:
            try:
                self.offset = path.stat().st_size
            except FileNotFoundError:
                pass

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """(new records, whether the file was found rewritten: drop what came from it before)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return [], False
        reset = size < self.offset
        if reset:
            self.offset = 0
        if size == self.offset:
            return [], reset
        data, self.offset = read_whole_lines(self.path, self.offset, size)
        return list(records(data.splitlines())), reset


def records(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The well-formed records among JSONL lines; a malformed one (a line nested too deeply to
    parse included) or one that is not an object is skipped (the store counts and quarantines it)."""
    for raw in lines:
        try:
            rec = parse_json(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def tail_records(path: Path, nbytes: int = 64 * 1024) -> list[dict[str, Any]]:
    """The complete, well-formed records among the last ``nbytes`` of a JSONL file (the first line
    there, likely cut, and a partial last line are left out): its newest records without reading a
    long file whole."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - nbytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return list(records(lines[1:] if size > nbytes else lines))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete, well-formed records of a JSONL file; a partial last line and malformed lines are
    skipped here (the store counts and quarantines them)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    yield from records(data[: data.rfind(b"\n") + 1].splitlines())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` whole or not at all; a failed write raises OSError naming ``path`` and
    leaves no temporary file behind (on a full disk it would hold on to the space)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(redact(obj), indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        e.filename = str(path)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return parse_json(path.read_text())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return default


# --- the run directory -------------------------------------------------------------------------
# (at most 15 digits: a step the index can hold, see store.records.MAX_STEP)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{1,15})$")
# Written by the trainer's callback after a checkpoint is fully saved: a checkpoint without it is
# half-written (killed mid-save) and is never resumed from or evaluated.
CHECKPOINT_COMPLETE = "tina-complete.json"
# Written into an adapter-only snapshot (tina_core.train.snapshots) once its files are all there:
# it can be evaluated (merged into the base model) but not resumed from (no optimizer, scheduler
# or RNG state). A checkpoint-N/ with this marker and no CHECKPOINT_COMPLETE is a pinned snapshot.
CHECKPOINT_SNAPSHOT = "tina-snapshot.json"


@dataclass(frozen=True)
class RunInfo:
    """A run's ``run.json`` (ARCHITECTURE.md): who it is, how to make it again, what it runs on and at
    what price. Written once when the run is created (``supervise.lifecycle.run_info``, ``tina
    import``); ``RunInfo.read`` is its one typed reader. A key the file lacks is its default here; a
    value of the wrong type (a hand-edited file) reads as None; keys this version does not name
    (an import's ``format``, ``source``...) are kept in ``extra``."""

    run_id: str
    name: str | None
    recipe: str | None = None            # the recipe path given
    overrides: list[str] = field(default_factory=list)  # the --set list, credentials masked
    tina_command: str | None = None      # how to run it again
    created: str | None = None
    hardware: dict[str, Any] | None = None
    device: str | None = "cpu"
    gpu_count: int | None = 0
    gpu_hour_usd: float | None = None
    cpu_hour_usd: float | None = 0.0
    price_source: str | None = None
    command: list[str] = field(default_factory=list)
    cwd: str | None = None
    stop_at_step: int | None = None
    max_steps: int | None = None
    save_steps: int | None = None
    dataset_size: int | None = None
    max_restarts: int | None = None
    stop_timeout_s: float | None = None
    imported: bool = False
    sweep: str | None = None             # a sweep's run: its name
    sweep_index: int | None = None       # and its place (the Slurm array task id)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, rd: "RunDir") -> "RunInfo":
        return cls.of(rd.info(), rd.run_id)

    @classmethod
    def of(cls, data: dict[str, Any], run_id: str) -> "RunInfo":
        kw: dict[str, Any] = {"run_id": run_id, "name": run_id, "extra": {}}
        for key, value in data.items():
            accept = _INFO_TYPES.get(key)
            if accept is None:
                kw["extra"][key] = value
            elif value is None or (isinstance(value, accept) and not (isinstance(value, bool) and bool not in accept)):
                kw[key] = value
            else:
                kw[key] = None
        kw["imported"] = bool(kw.get("imported"))
        kw["overrides"], kw["command"] = kw.get("overrides") or [], kw.get("command") or []
        return cls(**kw)

    @property
    def planned_steps(self) -> int | None:
        """Where it stops: ``stop_at_step``, else ``max_steps``."""
        return self.stop_at_step or self.max_steps

    def as_dict(self) -> dict[str, Any]:
        """The file's JSON: every named key, then ``extra``'s."""
        out = {k: getattr(self, k) for k in _INFO_TYPES}
        for key in ("sweep", "sweep_index"):  # only a sweep's run names them
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}


_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "name": (str,), "recipe": (str,), "overrides": (list,), "tina_command": (str,),
    "created": (str,), "hardware": (dict,), "device": (str,), "gpu_count": (int,), "gpu_hour_usd": (int, float),
    "cpu_hour_usd": (int, float), "price_source": (str,), "command": (list,), "cwd": (str,),
    "stop_at_step": (int,), "max_steps": (int,), "save_steps": (int,), "dataset_size": (int,),
    "max_restarts": (int,), "stop_timeout_s": (int, float), "imported": (bool, int), "sweep": (str,),
    "sweep_index": (int,),
}


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def system(self) -> Path:
        return self.path / "system.jsonl"

    @property
    def train_log(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def evals(self) -> Path:
        return self.path / "evals"

    @property
    def supervisor(self) -> Path:
        """pid + heartbeat of the live supervisor (absent when none ever ran)."""
        return self.path / "supervisor.json"

    def info(self) -> dict[str, Any]:
        """``run.json`` as the file holds it (``RunInfo.read``: typed)."""
        return read_json(self.run_json, {}) or {}

    def write_info(self, info: RunInfo) -> None:
        write_json_atomic(self.run_json, info.as_dict())

    @staticmethod
    def event_record(kind: Kind, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
        """An ``events.jsonl`` record of ``kind`` (a string that is not a Kind is a ValueError)."""
        kind = as_kind(kind)
        at = time.time() if at is None else at
        return {"time": now_iso(at), "ts": at, "event": kind.value, **fields}

    def event(self, kind: Kind, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
        """Record a lifecycle event (``Kind.LAUNCHED``, ``Kind.EVAL_FINISHED``...; its fields:
        ``tina_core.events``) that happened now (or ``at``, epoch seconds)."""
        rec = self.event_record(kind, at=at, **fields)
        append_jsonl(self.events, rec, fsync=True)
        return rec

    @staticmethod
    def metrics_record(step: int, attempt: int, logs: dict[str, Any], *, at: float | None = None) -> dict[str, Any]:
        at = time.time() if at is None else at
        return {"step": step, "attempt": attempt, "time": now_iso(at), "ts": at, **logs}

    def log_metrics(self, step: int, attempt: int, logs: dict[str, Any], *, at: float | None = None) -> dict[str, Any]:
        """One ``metrics.jsonl`` line: what the trainer logged at ``step`` of ``attempt`` (its
        callback's writer; rank 0 only), at ``at`` (epoch seconds, default now)."""
        rec = self.metrics_record(step, attempt, logs, at=at)
        append_jsonl(self.metrics, rec)
        return rec

    @staticmethod
    def system_record(gpus: list[dict[str, Any]], *, at: float | None = None) -> dict[str, Any]:
        at = time.time() if at is None else at
        return {"time": now_iso(at), "ts": at, "gpus": gpus}

    def log_system(self, gpus: list[dict[str, Any]], *, at: float | None = None) -> dict[str, Any]:
        """One ``system.jsonl`` line: a sample of every GPU (``gpu.Sampler.read``), taken now or ``at``."""
        rec = self.system_record(gpus, at=at)
        append_jsonl(self.system, rec)
        return rec

    def mark_complete(self, step: int, attempt: int, *, at: float | None = None) -> Path:
        """Mark ``checkpoint-<step>`` fully saved (the trainer, once every rank has written its
        part): only a marked checkpoint is resumed from or evaluated."""
        ckpt = self.checkpoint_path(step)
        write_json_atomic(ckpt / CHECKPOINT_COMPLETE, {
            "step": step, "attempt": attempt, "time": now_iso(at),
            "files": sorted(p.name for p in ckpt.iterdir() if p.name != CHECKPOINT_COMPLETE)})
        return ckpt

    def read_events(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.events))

    @property
    def snapshots(self) -> Path:
        """The trainer's ring of recent adapter snapshots (tina_core.train.snapshots)."""
        return self.path / "snapshots"

    def checkpoint_steps(self, *, complete_only: bool = True, evaluable: bool = False) -> list[int]:
        """Saved checkpoint steps, ascending: the complete ones (resumable and evaluable), with
        ``evaluable`` the pinned adapter snapshots too, with ``complete_only=False`` every
        ``checkpoint-N`` folder (half-written ones included)."""
        markers = (CHECKPOINT_COMPLETE, CHECKPOINT_SNAPSHOT) if evaluable else (CHECKPOINT_COMPLETE,)
        steps = []
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                m = CHECKPOINT_RE.match(p.name)
                if m and p.is_dir() and (not complete_only or any((p / k).exists() for k in markers)):
                    steps.append(int(m.group(1)))
        return sorted(steps)

    def checkpoint_kind(self, step: int) -> str | None:
        """``complete`` (resumable and evaluable), ``snapshot`` (adapter only: evaluable), or None
        (missing or half-written)."""
        path = self.checkpoint_path(step)
        if (path / CHECKPOINT_COMPLETE).exists():
            return "complete"
        return "snapshot" if (path / CHECKPOINT_SNAPSHOT).exists() else None

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{step}"

    def eval_log(self, eval_id: str) -> Path:
        """One evaluation's output (its job touches it while alive: see runstate.eval_last_alive)."""
        return self.evals / f"{eval_id}.log"


@dataclass(frozen=True)
class FileStamp:
    """A file's size and modification time: it changes whenever the file is written."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileStamp | None":
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return cls(st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class CheckpointsStamp:
    """The checkpoints folder: its own stamp changes when a checkpoint is added, removed or renamed;
    the newest one's completion marker is the one change inside a checkpoint that matters."""

    folder: FileStamp | None
    newest: str | None
    newest_complete: bool


@dataclass(frozen=True)
class RunFiles:
    """What a run directory's files look like now, one part per source the index reads: "have this
    run's files changed?" is ``RunFiles.of(rd) != before``, and which part moved says what to read
    again. A few stat calls: the cockpit takes one of every run every second."""

    run_json: FileStamp | None
    events: FileStamp | None
    metrics: FileStamp | None
    system: FileStamp | None
    checkpoints: CheckpointsStamp

    @classmethod
    def of(cls, rd: "RunDir") -> "RunFiles":
        try:
            names = [n for n in os.listdir(rd.checkpoints) if CHECKPOINT_RE.match(n)]
        except (FileNotFoundError, NotADirectoryError):
            names = []
        newest = max(names, key=lambda n: int(n.rpartition("-")[2]), default=None)
        return cls(FileStamp.of(rd.run_json), FileStamp.of(rd.events), FileStamp.of(rd.metrics),
                   FileStamp.of(rd.system),
                   CheckpointsStamp(FileStamp.of(rd.checkpoints), newest,
                                    newest is not None and (rd.checkpoints / newest / CHECKPOINT_COMPLETE).exists()))


def runs_root(home: Path) -> Path:
    return home / "runs"


def new_run_id(name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{slug(name)}-{stamp}-{secrets.token_hex(2)}"


def create_run_dir(home: Path, name: str) -> RunDir:
    root = runs_root(home)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        path = root / new_run_id(name)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "checkpoints").mkdir()
        return RunDir(path)


def list_run_dirs(home: Path) -> list[RunDir]:
    root = runs_root(home)
    if not root.is_dir():
        return []
    return sorted((RunDir(p) for p in root.iterdir() if p.is_dir() and (p / "run.json").exists()),
                  key=lambda r: r.run_id)


def find_run(home: Path, ref: str, *, acting: bool = False) -> RunDir:
    """A run by id, unique id prefix, or name. A name is a label, not an identity: when several
    runs have it, a command that only shows (``acting`` False) takes the newest and says so on
    stderr, and one that acts on the run (stop, resume, policy, eval...) refuses, naming their ids,
    rather than act on one the user may not mean."""
    runs = list_run_dirs(home)
    exact = [r for r in runs if r.run_id == ref]
    if exact:
        return exact[0]
    prefix = [r for r in runs if r.run_id.startswith(ref)]
    if len(prefix) == 1:
        return prefix[0]
    named = sorted((r for r in runs if RunInfo.read(r).name == ref), key=lambda r: RunInfo.read(r).created or "")
    if len(named) > 1:
        ids = ", ".join(r.run_id for r in reversed(named))
        if acting:
            raise TinaError(f"{len(named)} runs are named {ref!r} ({ids}): give the id of the one you mean")
        print(f"tina: note: {len(named)} runs are named {ref!r}: this is the newest, {named[-1].run_id} "
              f"(all: {ids})", file=sys.stderr)
    if named:
        return named[-1]
    if len(prefix) > 1:
        raise TinaError(f"run {ref!r} is ambiguous: " + ", ".join(r.run_id for r in prefix[:5]))
    raise TinaError(f"no run {ref!r} in {runs_root(home)} (see `tina ls`)")
