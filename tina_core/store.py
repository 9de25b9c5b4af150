"""The DuckDB index over the run directories (``$TINA_HOME/tina.duckdb``).

The JSONL files in each run directory are the truth; this database is a cache of them that can be
dropped and rebuilt at any time (`tina ingest --rebuild`). Ingestion tails each file from the byte
offset it reached last time, takes complete lines only (a partly written last line waits for its
newline), and commits the new rows together with the new offset, so a crash or ``kill -9`` at any
point neither loses nor duplicates a line. Lines that cannot be read are kept in ``quarantine``.

DuckDB lets one process at a time open the file for writing, and a reader cannot open it while a
writer holds it. The TUI and the CLI run side by side, so every operation opens a short-lived
connection, retries on the lock with jittered back-off, and closes it again; nothing keeps the file
open across TUI refreshes. The schema is documented in docs/schema.md.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import duckdb

from tina_core import metric_keys
from tina_core.rundir import RunDir, TinaError, list_run_dirs, runs_root

DB_NAME = "tina.duckdb"
LOCK_TIMEOUT_S = 5.0
WAIT_NOTICE_S, WAIT_YIELD_S = 0.3, 0.03  # a waiter's notice counts this long; a holder yields this
METRICS, EVENTS, SYSTEM = "metrics.jsonl", "events.jsonl", "system.jsonl"
TAILED = (METRICS, EVENTS, SYSTEM)
SMALL_CHUNK_LINES = 64  # metrics lines parsed in Python rather than staged for DuckDB's JSON reader

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, name VARCHAR, recipe VARCHAR, created VARCHAR,
    imported BOOLEAN, dataset_size BIGINT, info JSON);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL, step BIGINT NOT NULL, attempt INTEGER NOT NULL,
    key VARCHAR NOT NULL, value DOUBLE, ts DOUBLE);
CREATE TABLE IF NOT EXISTS attempts (
    run_id VARCHAR, attempt INTEGER, first_step BIGINT, PRIMARY KEY (run_id, attempt));
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR, step BIGINT, complete BOOLEAN, PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS evaluations (
    run_id VARCHAR, eval_id VARCHAR, checkpoint BIGINT, task VARCHAR, score DOUBLE,
    details VARCHAR, ts DOUBLE);
CREATE TABLE IF NOT EXISTS eval_samples (
    run_id VARCHAR, eval_id VARCHAR, checkpoint BIGINT, task VARCHAR, sample BIGINT, doc_id VARCHAR,
    prompt VARCHAR, gold VARCHAR, prediction VARCHAR, score DOUBLE, metrics JSON);
CREATE TABLE IF NOT EXISTS events (
    run_id VARCHAR, "offset" BIGINT, ts DOUBLE, event VARCHAR, data JSON);
CREATE TABLE IF NOT EXISTS system (
    run_id VARCHAR, ts DOUBLE, gpu INTEGER, util DOUBLE, mem_used DOUBLE, mem_total DOUBLE,
    power_w DOUBLE);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id VARCHAR, file VARCHAR, "offset" BIGINT, text VARCHAR, reason VARCHAR);
CREATE TABLE IF NOT EXISTS ingest_state (
    run_id VARCHAR, file VARCHAR, "offset" BIGINT, PRIMARY KEY (run_id, file));
CREATE TABLE IF NOT EXISTS steps (
    run_id VARCHAR NOT NULL, step BIGINT NOT NULL, attempt INTEGER NOT NULL, ts DOUBLE);
CREATE TABLE IF NOT EXISTS phase_cache (
    run_id VARCHAR, params VARCHAR, version BIGINT, result JSON, PRIMARY KEY (run_id, params));
CREATE TABLE IF NOT EXISTS meta (schema_version INTEGER);
-- Each step once: a restarted attempt supersedes what earlier attempts logged from the step it
-- resumed at, and a key logged twice in one step keeps its last value.
CREATE OR REPLACE VIEW metrics_latest AS
SELECT m.run_id, m.step, m.attempt, m.key, m.value, m.ts
FROM metrics m
WHERE NOT EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = m.run_id AND a.attempt > m.attempt
                  AND a.first_step <= m.step)
QUALIFY row_number() OVER (PARTITION BY m.run_id, m.step, m.key
                           ORDER BY m.attempt DESC, m.ts DESC NULLS LAST) = 1;
"""
TABLES = ("runs", "metrics", "attempts", "checkpoints", "evaluations", "eval_samples", "events", "system",
          "quarantine", "ingest_state", "steps", "phase_cache")
PHASE_SHARE = 0.005  # of a live run's time, at most, spent detecting its phase again (see Store.phase)
# Answers kept by Store._by_files, the most recently used: a live run's few, a cockpit's view of a
# handful of runs (a long run's step clock holds a tuple per step, so not every run's is kept).
ANSWERS_KEPT = 24
# Where each source of a run sits in Store._signature's tuple (run.json, the tailed files, then
# the checkpoint folders and the complete ones).
_SIG_PARTS = {"metrics": 1, "events": 2, "system": 3, "checkpoints": slice(4, 6)}
SCHEMA_VERSION = 3  # a file written with another version is dropped and read again
# Rows that came from each tailed file, dropped when that file is found rewritten from scratch.
_FILE_TABLES = {METRICS: ("metrics", "attempts", "steps", "phase_cache"), EVENTS: ("events", "evaluations", "eval_samples"), SYSTEM: ("system",)}


@dataclass
class IngestStats:
    runs: int = 0          # runs looked at
    updated: int = 0       # runs with anything new
    lines: int = 0         # complete lines read
    rows: int = 0          # metric/event/system rows written
    quarantined: int = 0   # lines set aside
    seconds: float = 0.0

    def __iadd__(self, other: "IngestStats") -> "IngestStats":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    # "unique file handle conflict": this process already has the file open another way
    return "lock" in msg or "different configuration" in msg or "file handle conflict" in msg


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _step_of(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


class _SlowPath(Exception):
    """The fast path cannot take this chunk as is."""


def _sample_kinds(chunk: bytes) -> dict[str, str]:
    """Column types from the chunk's first and last lines: DOUBLE for numbers, VARCHAR else."""
    kinds: dict[str, str] = {}
    first = chunk[: chunk.find(b"\n")]
    last = chunk[chunk.rfind(b"\n", 0, len(chunk) - 1) + 1:]
    for raw in (first, last):
        try:
            rec = json.loads(raw)
        except ValueError:
            raise _SlowPath from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise _SlowPath
        for k, v in rec.items():
            kind = "DOUBLE" if _num(v) is not None else "VARCHAR"
            if kinds.setdefault(k, kind) != kind or (kind == "VARCHAR" and not isinstance(v, str)):
                raise _SlowPath
    return kinds


def _metrics_line_problem(rec: dict) -> str | None:
    if _step_of(rec.get("step")) is None:
        return "no integer 'step'"
    if _step_of(rec.get("attempt", 1)) is None:
        return "'attempt' is not an integer"
    return None


def _metrics_values(rec: dict) -> tuple[int, int, float | None, dict[str, float]]:
    """``(step, attempt, ts, {canonical key: number})`` of a checked metrics line (see
    ``_metrics_line_problem``); keys without a number are left out."""
    values = {k: x for k, v in metric_keys.normalise_record(rec).items()
              if k not in metric_keys.RECORD_FIELDS and (x := _num(v)) is not None}
    return _step_of(rec["step"]), _step_of(rec.get("attempt", 1)), _num(rec.get("ts")), values


def _current(attempts: list | None) -> str:
    """SQL conditions keeping only the rows no later attempt superseded (a later attempt resumed at
    or before their step), with the run's few attempts as constants: a correlated NOT EXISTS over
    the attempts table costs more than the scan itself."""
    pairs = [tuple(a.values()) if isinstance(a, dict) else a for a in (attempts or [])[1:]]  # struct or tuple
    return "".join(f" AND (attempt >= {int(a)} OR step < {int(first)})" for a, first in pairs)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


# What reading a damaged database file raises (a truncated file, garbage inside it).
_DAMAGE_ERRORS = (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException, duckdb.FatalException)


class _Attachments:
    """The process's one in-memory DuckDB instance and the database files attached to it, counted
    so that overlapping sessions (threads, several Store objects) share one attachment and the
    file is detached, its lock released, when the last session ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instance: duckdb.DuckDBPyConnection | None = None
        self._users: dict[Path, int] = {}

    @staticmethod
    def alias(path: Path) -> str:
        return "ws_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]

    def acquire(self, path: Path) -> duckdb.DuckDBPyConnection:
        path = path.resolve()
        alias = self.alias(path)
        with self._lock:
            if self._instance is None:
                self._instance = duckdb.connect(":memory:")
            if not self._users.get(path):
                self._instance.execute(f"ATTACH {_sql_str(str(path))} AS {alias}")
            self._users[path] = self._users.get(path, 0) + 1
            con = self._instance.cursor()
        con.execute(f"USE {alias}")
        return con

    def release(self, path: Path, con: duckdb.DuckDBPyConnection) -> None:
        path = path.resolve()
        con.close()
        with self._lock:
            self._users[path] -= 1
            if not self._users[path]:
                del self._users[path]
                self._instance.execute(f"DETACH {self.alias(path)}")


_ATTACHED = _Attachments()


class Store:
    """The index of one workspace. Cheap to create; holds no connection between calls."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.path = self.home / DB_NAME
        self._waiting = self.home / (DB_NAME + ".waiting")  # pid of a process waiting for the lock
        self._con: duckdb.DuckDBPyConnection | None = None
        self._schema_ok = False
        # What this process last saw ingested, per run: an unchanged run is skipped without
        # opening the database, which keeps the TUI's per-refresh ingest() cheap.
        self._seen: dict[str, tuple] = {}
        self._phase_cache: dict[tuple, Any] = {}
        # (run, params) -> (when computed, result, seconds it took)
        self._phase_recent: dict[tuple, tuple[float, Any, float]] = {}
        self._series: dict[tuple, tuple[Any, list]] = {}
        # Answers that stand for the rest of one session unless it writes.
        self._in_session: dict[tuple, Any] = {}
        # see _by_files: (what, run_id) -> (files' version, answer), the most recently used last
        self._answers: collections.OrderedDict[tuple, tuple[tuple, Any]] = collections.OrderedDict()

    # --- connections ---------------------------------------------------------------------------
    def _open(self) -> duckdb.DuckDBPyConnection:
        """A connection with the workspace file attached and in use. Starting a DuckDB instance
        costs tens of milliseconds; attaching a file to a running one costs about one, so the
        process keeps one in-memory instance and attaches the file per session. Detaching releases
        the file lock just as closing a connection did."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._let_waiter_in()
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                con = _ATTACHED.acquire(self.path)
                break
            except duckdb.Error as e:
                if not _is_lock_error(e):
                    raise TinaError(f"cannot open {self.path}: {e} (try `tina ingest --rebuild`)") from e
                if time.monotonic() >= deadline:
                    raise TinaError(f"{self.path} is busy (another tina process holds it); try again") from e
                self._waiting.write_text(str(os.getpid()))
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)
        if not self._schema_ok:
            try:
                with self._damage_said(con):
                    self._create(con)
            except BaseException:
                _ATTACHED.release(self.path, con)
                raise
            self._schema_ok = True
        return con

    @contextmanager
    def _damage_said(self, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """A damaged file attaches fine and fails once the damaged part is read: say so, and how
        to mend it (as a TinaError, which every reader answers by showing the run directories),
        and end the transaction it broke, so the rest of a refresh gets that message too."""
        try:
            yield
        except duckdb.Error as e:
            # a bad checksum comes as a bare duckdb.Error
            if not isinstance(e, _DAMAGE_ERRORS) and type(e) is not duckdb.Error:
                raise
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise TinaError(f"cannot read {self.path}: {e} (try `tina ingest --rebuild`)") from e

    def _create(self, con) -> None:
        con.execute(SCHEMA)
        if con.execute("SELECT max(schema_version) FROM meta").fetchone()[0] != SCHEMA_VERSION:
            con.execute("BEGIN")
            for t in (*TABLES, "meta"):
                con.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
            con.execute(SCHEMA)
            con.execute("INSERT INTO meta VALUES (?)", [SCHEMA_VERSION])
            con.execute("COMMIT")
            self._seen.clear()

    def _let_waiter_in(self) -> None:
        """A process that just let the file go would take it straight back before a waiting one
        polls again: when another process said it is waiting, give it a moment first."""
        try:
            if time.time() - os.stat(self._waiting).st_mtime < WAIT_NOTICE_S \
                    and self._waiting.read_text() != str(os.getpid()):
                time.sleep(WAIT_YIELD_S)
        except (FileNotFoundError, ValueError):
            pass

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection for several calls (one TUI refresh); the file is let go when it ends."""
        if self._con is not None:
            with self._damage_said(self._con):
                yield self._con
            return
        self._con = self._open()
        self._in_session.clear()
        try:
            with self._damage_said(self._con):
                yield self._con
        finally:
            con, self._con = self._con, None
            _ATTACHED.release(self.path, con)

    def _query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        with self.session() as con:
            return con.execute(sql, params).fetchall()

    # --- ingestion -----------------------------------------------------------------------------
    def _signature(self, rd: RunDir) -> tuple:
        sizes = []
        for name in ("run.json", *TAILED):
            try:
                st = os.stat(rd.path / name)
                sizes.append((st.st_size, st.st_mtime_ns) if name == "run.json" else st.st_size)
            except FileNotFoundError:
                sizes.append(None)
        return (*sizes, tuple(rd.checkpoint_steps(complete_only=False)),
                tuple(rd.checkpoint_steps()))

    def ingest(self, run_ids: Iterable[str] | None = None) -> IngestStats:
        """Catch up with the run directories: new lines, run.json, checkpoints, vanished runs."""
        t0 = time.perf_counter()
        runs = list_run_dirs(self.home)
        wanted = None if run_ids is None else set(run_ids)
        if wanted is not None:
            runs = [r for r in runs if r.run_id in wanted]
        stats = IngestStats(runs=len(runs))
        todo = []
        for rd in runs:
            sig = self._signature(rd)
            if self._seen.get(rd.run_id) != sig:
                todo.append((rd, sig))
        present = {r.run_id for r in runs}
        gone = [] if wanted is not None else [r for r in self._seen if r not in present]
        if wanted is None and (todo or gone or not self._seen):
            with self.session() as con:
                known = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
                for run_id in sorted(known - present):
                    self._forget(con, run_id)
            for run_id in gone:
                self._seen.pop(run_id, None)
        for rd, sig in todo:
            # A connection per run (unless the caller holds a session): a long catch-up lets
            # other tina processes in between runs instead of locking them out throughout.
            with self.session() as con:
                s = self._ingest_run(con, rd, self._seen.get(rd.run_id), sig)
            stats += s
            stats.updated += 1 if (s.lines or s.quarantined) else 0
            self._seen[rd.run_id] = sig
        stats.runs = len(runs)
        stats.seconds = time.perf_counter() - t0
        return stats

    def rebuild(self) -> IngestStats:
        """Drop everything and ingest all run directories again from byte 0."""
        try:
            with self.session() as con:
                con.execute("BEGIN")
                for t in TABLES:
                    con.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
                con.execute("DROP VIEW IF EXISTS metrics_latest")
                con.execute(SCHEMA)
                con.execute("COMMIT")
        except TinaError as e:
            if "busy" in str(e):
                raise
            # An unreadable database file (corrupt, another DuckDB version): it is only a cache.
            for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                p.unlink(missing_ok=True)
            self._schema_ok = False
        self._seen.clear()
        self._phase_cache.clear()
        self._phase_recent.clear()
        self._series.clear()
        self._in_session.clear()
        self._answers.clear()
        return self.ingest()

    def _forget(self, con, run_id: str) -> None:
        self._in_session.clear()
        con.execute("BEGIN")
        for t in TABLES:
            con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
        con.execute("COMMIT")

    def _ingest_run(self, con, rd: RunDir, prev: tuple | None, sig: tuple) -> IngestStats:
        """Bring one run up to date; ``prev`` is what this process saw last time (parts that have
        not changed since are skipped)."""
        self._in_session.clear()
        stats = IngestStats()
        run_id = rd.run_id
        if prev is None or prev[0] != sig[0] or prev[4:] != sig[4:]:
            info = rd.info()
            all_ck, done = sig[4], set(sig[5])
            con.execute("BEGIN")
            con.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", [
                run_id, info.get("name"), info.get("recipe"), info.get("created"),
                bool(info.get("imported", False)), _step_of(info.get("dataset_size")),
                json.dumps(info, default=str)])
            con.execute("DELETE FROM checkpoints WHERE run_id = ?", [run_id])
            if all_ck:
                con.execute("INSERT INTO checkpoints SELECT ?, unnest($2::BIGINT[]), unnest($3::BOOLEAN[])",
                            [run_id, list(all_ck), [s in done for s in all_ck]])
            con.execute("COMMIT")
        for i, name in enumerate(TAILED, start=1):
            if prev is None or prev[i] != sig[i]:
                stats += self._tail(con, rd, name)
        return stats

    def _tail(self, con, rd: RunDir, name: str) -> IngestStats:
        path = rd.path / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return IngestStats()
        row = con.execute('SELECT "offset" FROM ingest_state WHERE run_id = ? AND file = ?',
                          [rd.run_id, name]).fetchone()
        offset = row[0] if row else 0
        if size < offset:
            # Rewritten from scratch (append-only files never shrink): start that file over.
            con.execute("BEGIN")
            for t in _FILE_TABLES[name]:
                con.execute(f"DELETE FROM {t} WHERE run_id = ?", [rd.run_id])
            con.execute("DELETE FROM quarantine WHERE run_id = ? AND file = ?", [rd.run_id, name])
            con.execute("DELETE FROM ingest_state WHERE run_id = ? AND file = ?", [rd.run_id, name])
            con.execute("COMMIT")
            self._series = {k: v for k, v in self._series.items() if k[0] != rd.run_id}
            offset = 0
        if size == offset:
            return IngestStats()
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size - offset)
        end = data.rfind(b"\n")
        if end < 0:
            return IngestStats()  # only a partial line so far: it waits for its newline
        chunk = data[: end + 1]
        handler = {METRICS: self._metrics_chunk, EVENTS: self._events_chunk, SYSTEM: self._system_chunk}[name]
        for fast in (True, False):
            con.execute("BEGIN")
            try:
                stats = handler(con, rd.run_id, chunk, offset, fast)
                con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, ?, ?)",
                            [rd.run_id, name, offset + end + 1])
                con.execute("COMMIT")
                return stats
            except (duckdb.Error, _SlowPath):
                con.execute("ROLLBACK")
                if not fast:
                    raise
        raise AssertionError("unreachable")

    # --- per-file handlers (run inside the caller's transaction) -----------------------------
    def _quarantine(self, con, run_id: str, file: str, bad: list[tuple[int, str, str]]) -> None:
        if bad:
            con.execute("INSERT INTO quarantine SELECT ?, ?, unnest($3::BIGINT[]), unnest($4::VARCHAR[]), "
                        "unnest($5::VARCHAR[])", [run_id, file, [b[0] for b in bad],
                                                   [b[1] for b in bad], [b[2] for b in bad]])

    def _metrics_chunk(self, con, run_id: str, chunk: bytes, offset: int, fast: bool) -> IngestStats:
        """Metrics lines, parsed by DuckDB's JSON reader (several times faster than Python's).

        The fast path declares the keys of the chunk's first and last lines and reads every line
        once into a staging table. It is taken only when that provably saw every key of every
        line: each ``"key":`` in the bytes must be matched by a non-null value read, and every step
        must be an integer. Anything else (a malformed line, an unexpected key, a string where a
        number was) fails it, and the lines go through Python one by one instead, which sets bad
        lines aside and hands the good ones back to DuckDB re-encoded."""
        if chunk.count(b"\n") <= SMALL_CHUNK_LINES:
            # A live run's few new lines: parsed here and inserted as arrays, three statements in
            # all (staging a file for DuckDB's reader costs more than reading these lines).
            parsed, bad = self._parse_lines(chunk, offset, _metrics_line_problem)
            self._quarantine(con, run_id, METRICS, bad)
            return IngestStats(lines=chunk.count(b"\n"), rows=self._insert_parsed(con, run_id, parsed),
                               quarantined=len(bad))
        tmp_dir = Path(tempfile.mkdtemp(prefix="tina-ingest-"))
        try:
            quarantined = 0
            if fast:
                kinds = _sample_kinds(chunk)
                # DuckDB reads a copy of exactly these bytes: the file itself may have grown since.
                (tmp_dir / "chunk.jsonl").write_bytes(chunk)
                self._stage(con, tmp_dir / "chunk.jsonl", kinds)
                counts = con.execute(
                    "SELECT count(*) FILTER (step IS NULL OR step <> floor(step) OR attempt <> floor(attempt)), "
                    + ", ".join(f"count({_ident(k)})" for k in kinds) + " FROM _chunk").fetchone()
                if counts[0] or sum(counts[1:]) != chunk.count(b'":'):
                    raise _SlowPath
            else:
                parsed, bad = self._parse_lines(chunk, offset, _metrics_line_problem)
                self._quarantine(con, run_id, METRICS, bad)
                quarantined = len(bad)
                kinds = {"step": "DOUBLE", "attempt": "DOUBLE", "ts": "DOUBLE"}
                with open(tmp_dir / "clean.jsonl", "w") as f:
                    for _, rec in parsed:
                        step, attempt, ts, values = _metrics_values(rec)
                        kinds.update(dict.fromkeys(values, "DOUBLE"))
                        f.write(json.dumps({"step": step, "attempt": attempt, "ts": ts, **values},
                                           allow_nan=True) + "\n")
                self._stage(con, tmp_dir / "clean.jsonl", kinds)
            rows = self._insert_staged(con, run_id, [k for k, t in kinds.items() if t == "DOUBLE"])
            return IngestStats(lines=chunk.count(b"\n"), rows=rows, quarantined=quarantined)
        finally:
            con.execute("DROP TABLE IF EXISTS _chunk")
            shutil.rmtree(tmp_dir, ignore_errors=True)

    @staticmethod
    def _insert_parsed(con, run_id: str, parsed: list[tuple[int, dict]]) -> int:
        """Parsed metrics records as steps, attempts and long metrics rows (canonical names)."""
        steps, first, long = [], {}, []
        for _, rec in parsed:
            step, attempt, ts, values = _metrics_values(rec)
            steps.append((step, attempt, ts))
            first[attempt] = min(first.get(attempt, step), step)
            long += [(step, attempt, k, x, ts) for k, x in values.items()]
        if not steps:
            return 0
        con.execute("INSERT INTO attempts SELECT $1, unnest($2::INTEGER[]), unnest($3::BIGINT[]) "
                    "ON CONFLICT DO UPDATE SET first_step = least(first_step, excluded.first_step)",
                    [run_id, list(first), list(first.values())])
        con.execute("INSERT INTO steps SELECT $1, unnest($2::BIGINT[]), unnest($3::INTEGER[]), unnest($4::DOUBLE[])",
                    [run_id, *map(list, zip(*steps))])
        if long:
            con.execute("INSERT INTO metrics SELECT $1, unnest($2::BIGINT[]), unnest($3::INTEGER[]), "
                        "unnest($4::VARCHAR[]), unnest($5::DOUBLE[]), unnest($6::DOUBLE[])",
                        [run_id, *map(list, zip(*long))])
        return len(long)

    @staticmethod
    def _stage(con, path: Path, kinds: dict[str, str]) -> None:
        cols = {"step": "DOUBLE", "attempt": "DOUBLE", **kinds}
        spec = "{" + ", ".join(f"{_sql_str(k)}: {_sql_str(t)}" for k, t in cols.items()) + "}"
        con.execute(f"CREATE OR REPLACE TEMP TABLE _chunk AS SELECT * FROM read_json("
                    f"{_sql_str(str(path))}, format='newline_delimited', columns={spec})")

    @staticmethod
    def _insert_staged(con, run_id: str, keys: list[str]) -> int:
        """The staging table's values as long metrics rows, under canonical names."""
        values = [k for k in keys if k not in metric_keys.RECORD_FIELDS]
        # Legacy names go in under canonical ones; a line carrying both keeps the canonical value.
        sources: dict[str, list[str]] = {}
        for k in sorted(values, key=lambda k: metric_keys.normalise_key(k) != k):
            sources.setdefault(metric_keys.normalise_key(k), []).append(_ident(k))
        pairs = [(f"coalesce({', '.join(src)})" if len(src) > 1 else src[0], c) for c, src in sources.items()]
        con.execute(
            "INSERT INTO attempts SELECT $1, coalesce(attempt, 1), min(step) FROM _chunk GROUP BY ALL "
            "ON CONFLICT DO UPDATE SET first_step = least(first_step, excluded.first_step)", [run_id])
        ts = "TRY_CAST(ts AS DOUBLE)" if "ts" in keys else "NULL::DOUBLE"
        con.execute(f"INSERT INTO steps SELECT $1, step::BIGINT, coalesce(attempt, 1)::INTEGER, {ts} FROM _chunk",
                    [run_id])
        if not pairs:
            return 0
        # One SELECT per key, so the rows of a key land together: a series query then reads a
        # few row groups instead of every one of the run's (and this is cheaper than sorting).
        parts = [f"SELECT step::BIGINT, coalesce(attempt, 1)::INTEGER, {_sql_str(c)}, {expr}, {ts} "
                 f"FROM _chunk WHERE {expr} IS NOT NULL" for expr, c in pairs]
        return con.execute(f"INSERT INTO metrics SELECT $1, * FROM ({' UNION ALL '.join(parts)})",
                           [run_id]).fetchone()[0]

    @staticmethod
    def _parse_lines(chunk: bytes, offset: int, check) -> tuple[list, list]:
        """(offset, record) of good lines and (offset, text, reason) of bad ones."""
        good, bad = [], []
        pos = offset
        for raw in chunk.split(b"\n")[:-1]:
            here, pos = pos, pos + len(raw) + 1
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "replace")
            try:
                rec = json.loads(text)
            except ValueError as e:
                bad.append((here, text, f"not JSON: {e}"))
                continue
            reason = "not a JSON object" if not isinstance(rec, dict) else check(rec)
            if reason:
                bad.append((here, text, reason))
            else:
                good.append((here, rec))
        return good, bad

    def _events_chunk(self, con, run_id, chunk, offset, fast) -> IngestStats:
        good, bad = self._parse_lines(
            chunk, offset,
            lambda r: None if isinstance(r.get("event"), str) else "no 'event' name")
        self._quarantine(con, run_id, EVENTS, bad)
        if good:
            con.execute("INSERT INTO events SELECT ?, unnest($2::BIGINT[]), unnest($3::DOUBLE[]), "
                        "unnest($4::VARCHAR[]), unnest($5::JSON[])",
                        [run_id, [o for o, _ in good], [_num(r.get("ts")) for _, r in good],
                         [r["event"] for _, r in good],
                         [json.dumps(r, default=str) for _, r in good]])
        evals, samples = [], 0
        for here, r in good:
            if r["event"] != "eval_finished" or not isinstance(r.get("scores"), dict):
                continue
            ck = r.get("checkpoint")
            details = r.get("details") or r.get("details_path")
            for task, score in r["scores"].items():
                d = details.get(task) if isinstance(details, dict) else details
                evals.append((str(r.get("eval_id", "")), _step_of(ck), str(task), _num(score),
                              None if d is None else str(d), _num(r.get("ts"))))
                if d is not None:
                    samples += self._eval_samples(con, run_id, here, evals[-1], str(d), r.get("metric"))
        if evals:
            con.execute("INSERT INTO evaluations SELECT ?, " + ", ".join(
                f"unnest(${i + 2}::{t}[])" for i, t in enumerate(
                    ("VARCHAR", "BIGINT", "VARCHAR", "DOUBLE", "VARCHAR", "DOUBLE"))),
                [run_id, *map(list, zip(*evals))])
        return IngestStats(lines=chunk.count(b"\n"), rows=len(good) + len(evals) + samples, quarantined=len(bad))

    def _eval_samples(self, con, run_id: str, offset: int, ev: tuple, details: str, metric: Any) -> int:
        """One evaluation's per-sample rows from lighteval's details parquet (the run directory's
        file stays the truth). An unreadable file goes to quarantine, naming the event's line."""
        path = Path(details)
        if not path.exists() and f"/{run_id}/" in details:  # the workspace was moved since
            path = self.home / "runs" / run_id / details.split(f"/{run_id}/", 1)[1]
        try:
            # Its own connection: a failed read must not abort the ingest's transaction.
            with con.cursor() as cur:
                rows = cur.execute(
                    "SELECT file_row_number, doc.id, doc.query, doc.choices, doc.gold_index, model_response.text, "
                    "to_json(metric) FROM read_parquet(?, file_row_number = true) ORDER BY file_row_number",
                    [str(path)]).fetchall()
        except duckdb.Error as e:
            self._quarantine(con, run_id, EVENTS, [(offset, details, f"per-sample details not readable: {e}")])
            return 0

        def first(v: Any) -> Any:  # lighteval keeps lists: one text per sample drawn, golds per doc
            return (v[0] if v else None) if isinstance(v, list) else v

        out = []
        for n, doc_id, prompt, choices, gold_index, text, metrics in rows:
            scores = json.loads(metrics) if metrics else {}
            gi = first(gold_index)
            gold = choices[gi] if isinstance(choices, list) and isinstance(gi, int) and 0 <= gi < len(choices) else None
            nums = [v for v in scores.values() if _num(v) is not None]
            score = scores.get(metric) if metric in scores else (nums[0] if len(nums) == 1 else None)
            out.append((n, None if doc_id is None else str(doc_id), prompt, gold, first(text), _num(score),
                        json.dumps(scores)))
        if out:
            eval_id, ck, task = ev[:3]
            con.execute("INSERT INTO eval_samples SELECT ?, ?, ?, ?, " + ", ".join(
                f"unnest(${i + 5}::{t}[])" for i, t in enumerate(
                    ("BIGINT", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "DOUBLE", "JSON"))),
                [run_id, eval_id, ck, task, *map(list, zip(*out))])
        return len(out)

    def _system_chunk(self, con, run_id, chunk, offset, fast) -> IngestStats:
        good, bad = self._parse_lines(
            chunk, offset,
            lambda r: None if isinstance(r.get("gpus"), list) else "no 'gpus' list")
        self._quarantine(con, run_id, SYSTEM, bad)
        rows = []
        for _, r in good:
            for i, g in enumerate(r["gpus"]):
                if isinstance(g, dict):
                    idx = _step_of(g.get("index"))
                    rows.append((_num(r.get("ts")), i if idx is None else idx, _num(g.get("util")),
                                 _num(g.get("mem_used")), _num(g.get("mem_total")), _num(g.get("power_w"))))
        if rows:
            con.execute("INSERT INTO system SELECT ?, " + ", ".join(
                f"unnest(${i + 2}::{t}[])" for i, t in enumerate(
                    ("DOUBLE", "INTEGER", "DOUBLE", "DOUBLE", "DOUBLE", "DOUBLE"))),
                [run_id, *map(list, zip(*rows))])
        return IngestStats(lines=chunk.count(b"\n"), rows=len(rows), quarantined=len(bad))

    # --- queries -------------------------------------------------------------------------------
    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """Run any SQL against the index (see docs/schema.md)."""
        return self._query(sql, params)

    def run_ids(self) -> list[str]:
        return [r for (r,) in self._query("SELECT run_id FROM runs ORDER BY run_id")]

    def metric_keys(self, run_id: str) -> list[str]:
        return [k for (k,) in self._query(
            "SELECT DISTINCT key FROM metrics WHERE run_id = ? ORDER BY key", [run_id])]

    def metric_series(self, run_id: str, key: str, *, max_points: int | None = 120) -> list[tuple[int, float]]:
        """(step, value) ascending, one per step (latest attempt), non-finite values left out;
        with ``max_points``, consecutive steps are averaged into about that many buckets, each
        labelled with its last step. Kept per process until the run's metrics change: the TUI
        asks for the same series every second."""
        return self.metric_series_many(run_id, [key], max_points=max_points)[key]

    def metric_series_many(self, run_id: str, keys: Iterable[str], *,
                           max_points: int | None = 120) -> dict[str, list[tuple[int, float]]]:
        """``metric_series`` of several keys in one query, by the keys as given: a refresh charts
        several series of one run, and each query scans the run's rows again."""
        given = list(keys)
        keys = list(dict.fromkeys(map(metric_keys.normalise_key, given)))
        with self.session():
            version = self._metrics_version(run_id)
            out: dict[str, list] = {}
            for k in keys:
                hit = self._series.get((run_id, k, max_points))
                if hit and hit[0] == version:
                    out[k] = hit[1]
            todo = [k for k in keys if k not in out]
            if todo:
                # The same rows as metrics_latest, written out so DuckDB filters before it groups.
                base = ("SELECT key, step, arg_max(value, attempt * 1e12 + coalesce(ts, 0)) AS value FROM metrics m "
                        f"WHERE run_id = $1 AND key IN ({', '.join(map(_sql_str, todo))}){_current(version[0])} "
                        "GROUP BY key, step HAVING isfinite(value)")
                if not max_points:
                    rows = self._query(base + " ORDER BY key, step", [run_id])
                else:
                    rows = self._query(
                        f"SELECT key, max(step)::BIGINT, avg(value) FROM ("
                        "  SELECT key, step, value, (row_number() OVER (PARTITION BY key ORDER BY step) - 1) * $2"
                        f"   // count(*) OVER (PARTITION BY key) AS b FROM ({base})"
                        ") GROUP BY key, b ORDER BY key, 2", [run_id, int(max_points)])
                for k in todo:
                    out[k] = []
                for k, step, value in rows:
                    out[k].append((step, value))
                for k in todo:
                    self._series[(run_id, k, max_points)] = (version, out[k])
        return {k: list(out[metric_keys.normalise_key(k)]) for k in given}

    def _metrics_version(self, run_id: str) -> tuple:
        """``(attempts, offset)``: the run's attempts as ``[(attempt, first_step)]`` and how far its
        metrics file is ingested. Changes whenever the run's metrics do."""
        hit = self._in_session.get(("version", run_id))
        if hit is None:
            hit = self._query(
                "SELECT (SELECT list((attempt, first_step) ORDER BY attempt) FROM attempts WHERE run_id = $1), "
                "(SELECT \"offset\" FROM ingest_state WHERE run_id = $1 AND file = $2)", [run_id, METRICS])[0]
            if self._con is not None:
                self._in_session[("version", run_id)] = hit
        return hit

    def _by_files(self, what: str, run_id: str, files: tuple[str, ...], compute: Callable[[], Any],
                  clone: Callable[[Any], Any] = copy.deepcopy) -> Any:
        """``compute()``'s answer, kept while the run's ``files`` (metrics, events, system,
        checkpoints) stay as this process last ingested them. The index is a function of the
        files, so the answer only changes with them; another process's newer ingest is seen at
        this one's next ingest. A cockpit refresh with one new metrics line then asks again only
        what that line changes. Callers get a copy."""
        seen = self._seen.get(run_id)
        if seen is None:
            return compute()
        version = tuple(seen[_SIG_PARTS[f]] for f in files)
        hit = self._answers.get((what, run_id))
        if hit is None or hit[0] != version:
            hit = (version, compute())
            self._answers[(what, run_id)] = hit
            while len(self._answers) > ANSWERS_KEPT:
                self._answers.popitem(last=False)
        self._answers.move_to_end((what, run_id))
        return clone(hit[1])

    def last_metrics(self, run_id: str) -> dict[str, float]:
        """The latest finite value of every key (canonical names)."""
        def query() -> dict[str, float]:
            with self.session():
                attempts = self._metrics_version(run_id)[0]
                return dict(self._query(
                    "SELECT key, arg_max(value, step * 1e6 + attempt) FROM metrics m WHERE run_id = ? "
                    f"AND isfinite(value){_current(attempts)} GROUP BY key ORDER BY key", [run_id]))
        return self._by_files("last_metrics", run_id, ("metrics",), query)

    def step_clock(self, run_id: str) -> tuple[dict[int, tuple[float, int]], int | None]:
        """``({step: (ts, attempt)}, last step)``: cost.step_times of the run's metrics lines, and
        the step of the last one (the latest attempt's furthest), without reading the file."""
        def query() -> tuple[dict[int, tuple[float, int]], int | None]:
            with self.session():
                attempts = self._metrics_version(run_id)[0]
                rows = self._query(
                    f"SELECT step, max(ts), attempt FROM steps m WHERE run_id = $1{_current(attempts)} "
                    "GROUP BY step, attempt "
                    "QUALIFY row_number() OVER (PARTITION BY step ORDER BY attempt DESC) = 1 ORDER BY step",
                    [run_id])
            # the latest attempt's furthest step (rows are one per step, each its latest attempt),
            # also for lines without a time (imported runs)
            last = max(((a, s) for s, _, a in rows), default=(None, None))[1]
            return {s: (ts, a) for s, ts, a in rows if ts is not None}, last
        # a shallow copy: a long run's clock has a tuple per step, and tuples are immutable
        return self._by_files("step_clock", run_id, ("metrics",), query, lambda r: (dict(r[0]), r[1]))

    def last_step(self, run_id: str) -> int | None:
        return self._query("SELECT max(step) FROM metrics WHERE run_id = ?", [run_id])[0][0]

    def phase(self, run_id: str, params: Any = None, *, max_age_s: float = 0.0) -> dict | None:
        """The phase-transition object (see tina_core.phase), recomputed only when new metrics
        arrived: kept in the database (for every process) and in this one, keyed by the metrics
        file's ingested offset. With ``max_age_s``, this process's last result for the run may
        stand for up to that long even though metrics arrived since: a live run gains a step a
        second and detection reads its whole history. It stands only as long as detection would
        otherwise take more than a small share of the time (PHASE_SHARE of it), so a short run's
        marker is never stale and a 13,000-step run's lags by seconds."""
        from tina_core import phase as phase_mod

        # by default the run's own format rewards (from its recipe snapshot) are watched
        params = params or phase_mod.params_for_run(runs_root(self.home) / run_id)
        recent = self._phase_recent.get((run_id, params))
        if max_age_s > 0 and recent and time.monotonic() - recent[0] < min(max_age_s, recent[2] / PHASE_SHARE):
            result = recent[1]
            return None if result is None else dict(result)
        started = time.monotonic()
        with self.session() as con:
            version = self._query('SELECT "offset" FROM ingest_state WHERE run_id = ? AND file = ?',
                                  [run_id, METRICS])
            version = version[0][0] if version else -1
            cache_key = (run_id, version, params)
            if cache_key not in self._phase_cache:
                stored = self._query("SELECT result FROM phase_cache WHERE run_id = ? AND params = ? "
                                     "AND version = ?", [run_id, repr(params), version])
                if stored:
                    result = json.loads(stored[0][0])
                else:
                    series = self.metric_series_many(run_id, params.signals, max_points=None)
                    result = phase_mod.detect(series, params)
                    con.execute("INSERT OR REPLACE INTO phase_cache VALUES (?, ?, ?, ?)",
                                [run_id, repr(params), version, json.dumps(result)])
                took = time.monotonic() - started
                self._phase_cache = {k: v for k, v in self._phase_cache.items() if k[0] != run_id}
                self._phase_cache[cache_key] = result
                self._phase_recent[(run_id, params)] = (time.monotonic(), result, took)
        result = self._phase_cache[cache_key]
        return None if result is None else dict(result)

    def checkpoints(self, run_id: str) -> list[dict]:
        """Complete checkpoints, ascending: [{step, evals: {task: score}, avg}] (latest score of
        each task; avg is the mean over the tasks evaluated, None when none were)."""
        def query() -> list[dict]:
            with self.session():
                steps = [s for (s,) in self._query(
                    "SELECT step FROM checkpoints WHERE run_id = ? AND complete ORDER BY step", [run_id])]
                scores = self._query(
                    "SELECT checkpoint, task, arg_max(score, coalesce(ts, 0)) FROM evaluations "
                    "WHERE run_id = ? AND checkpoint IS NOT NULL AND isfinite(score) GROUP BY ALL", [run_id])
            evals: dict[int, dict[str, float]] = {}
            for ck, task, score in scores:
                evals.setdefault(ck, {})[task] = score
            out = []
            for s in sorted(set(steps) | set(evals)):
                e = dict(sorted(evals.get(s, {}).items()))
                out.append({"step": s, "evals": e, "avg": sum(e.values()) / len(e) if e else None})
            return out
        return self._by_files("checkpoints", run_id, ("events", "checkpoints"), query)

    def base_evals(self, run_id: str) -> dict[str, float]:
        """The base model's latest score of each task (its evaluations have no checkpoint)."""
        return self._by_files("base_evals", run_id, ("events",), lambda: dict(self._query(
            "SELECT task, arg_max(score, coalesce(ts, 0)) FROM evaluations WHERE run_id = ? "
            "AND checkpoint IS NULL AND isfinite(score) GROUP BY task ORDER BY task", [run_id])))

    def eval_samples(self, run_id: str, eval_id: str) -> list[dict]:
        """One evaluation's samples in lighteval's order: {sample, doc_id, prompt, gold, prediction, score}."""
        cols = ("sample", "doc_id", "prompt", "gold", "prediction", "score")
        return [dict(zip(cols, r)) for r in self._query(
            f"SELECT {', '.join(cols)} FROM eval_samples WHERE run_id = ? AND eval_id = ? ORDER BY sample",
            [run_id, eval_id])]

    def evals(self, run_id: str) -> list[dict]:
        rows = self._query(
            "SELECT eval_id, checkpoint, task, score, details, ts FROM evaluations WHERE run_id = ? "
            "ORDER BY ts NULLS FIRST, checkpoint, task", [run_id])
        return [{"eval_id": e, "checkpoint": "base" if c is None else c, "task": t, "score": s,
                 "details": d, "ts": ts} for e, c, t, s, d, ts in rows]

    def recommendation(self, run_id: str, *, max_age_s: float = 0.0) -> dict:
        from tina_core import phase as phase_mod

        with self.session():
            ph = self.phase(run_id, max_age_s=max_age_s)
            cks = self.checkpoints(run_id)
        return phase_mod.recommend(ph, cks)

    def system_latest(self, run_id: str) -> list[dict]:
        rows = self._by_files("system_latest", run_id, ("system",), lambda: self._query(
            "SELECT gpu, util, mem_used, mem_total, power_w, ts FROM system WHERE run_id = $1 "
            "AND ts = (SELECT max(ts) FROM system WHERE run_id = $1) ORDER BY gpu", [run_id]))
        return [dict(zip(("index", "util", "mem_used", "mem_total", "power_w", "ts"), r)) for r in rows]

    def events(self, run_id: str, kinds: Iterable[str] | None = None) -> list[dict]:
        rows = self._query('SELECT data FROM events WHERE run_id = ? ORDER BY "offset"', [run_id])
        out = [json.loads(d) for (d,) in rows]
        return out if kinds is None else [e for e in out if e.get("event") in set(kinds)]

    def quarantine(self, run_id: str | None = None) -> list[dict]:
        sql = 'SELECT run_id, file, "offset", text, reason FROM quarantine'
        rows = self._query(sql + (" WHERE run_id = ?" if run_id else "") + ' ORDER BY run_id, file, "offset"',
                           [run_id] if run_id else [])
        return [dict(zip(("run_id", "file", "offset", "text", "reason"), r)) for r in rows]


def cli_ingest(home: Path, rebuild: bool) -> int:
    store = Store(home)
    stats = store.rebuild() if rebuild else store.ingest()
    total_q = store.query("SELECT count(*) FROM quarantine")[0][0]
    print(f"{'rebuilt' if rebuild else 'ingested'} {stats.runs} runs ({stats.updated} with new data): "
          f"{stats.lines} lines, {stats.rows} rows, {stats.quarantined} lines quarantined "
          f"in {stats.seconds:.2f}s -> {store.path}")
    if total_q:
        print(f"{total_q} malformed lines are set aside in the quarantine table "
              f"(SELECT * FROM quarantine)", flush=True)
    return 0
