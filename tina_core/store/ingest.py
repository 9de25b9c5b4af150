"""Ingestion: the run directories' files into the index, exactly once.

Each tailed file is read from the byte offset it reached last time, complete lines only (a partly
written last line waits for its newline), and the new rows are committed together with the new
offset, so a crash or ``kill -9`` at any point neither loses nor duplicates a line. Lines that
cannot be read are kept in ``quarantine``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import duckdb

from tina_core.analysis import metric_keys
from tina_core.caches import Cache
from tina_core.events import Kind, is_kind
from tina_core.rundir import RunDir, RunFiles, TinaError, list_run_dirs, parse_json, runs_root
from tina_core.store.database import Database, sql_ident, sql_str, transaction
from tina_core.store.records import MAX_INT, MAX_STEP, events_problem, metrics_problem, system_problem
from tina_core.store.records import number as _num
from tina_core.store.records import step_of as _step_of
from tina_core.store.schema import FILE_TABLES, EVENTS, METRICS, SCHEMA, SYSTEM, TABLES

SMALL_CHUNK_LINES = 64  # metrics lines parsed in Python rather than staged for DuckDB's JSON reader


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


class _SlowPath(Exception):
    """The fast path cannot take this chunk as is."""


def _sample_kinds(chunk: bytes) -> dict[str, str]:
    """Column types from the chunk's first and last lines: DOUBLE for numbers, VARCHAR else."""
    kinds: dict[str, str] = {}
    first = chunk[: chunk.find(b"\n")]
    last = chunk[chunk.rfind(b"\n", 0, len(chunk) - 1) + 1:]
    for raw in (first, last):
        try:
            rec = parse_json(raw)
        except ValueError:
            raise _SlowPath from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise _SlowPath
        for k, v in rec.items():
            kind = "DOUBLE" if _num(v) is not None else "VARCHAR"
            if kinds.setdefault(k, kind) != kind or (kind == "VARCHAR" and not isinstance(v, str)):
                raise _SlowPath
    return kinds


def _metrics_values(rec: dict) -> tuple[int, int, float | None, dict[str, float]]:
    """``(step, attempt, ts, {canonical key: number})`` of a checked metrics line (see
    ``records.metrics_problem``); keys without a number are left out."""
    values = {k: x for k, v in metric_keys.normalise_record(rec).items()
              if k not in metric_keys.RECORD_FIELDS and (x := _num(v)) is not None}
    step, attempt = _step_of(rec["step"]), _step_of(rec.get("attempt", 1))
    assert step is not None and attempt is not None  # a checked line: records.metrics_problem said so
    return step, attempt, _num(rec.get("ts")), values


class Ingestion(Database):
    """Bringing the index up to date with the run directories."""

    def __init__(self, home: Path):
        super().__init__(home)
        # The files of each run as this process last ingested them: an unchanged run is skipped
        # without opening the database, which keeps the cockpit's per-refresh ingest cheap. Only
        # a run whose ingest went through is recorded (a failed one is tried again next time).
        self.ingested: Cache[str, RunFiles] = Cache("store.ingested", None)

    def _new_file(self, con, *, known: bool) -> None:
        runs = self.ingested.keys() if known else []
        self.ingested.clear()
        for run_id in runs:  # what this process had put in the old file, into this one
            rd = RunDir(runs_root(self.home) / run_id)
            if rd.run_json.exists():
                files = RunFiles.of(rd)
                self._ingest_run(con, rd, None, files)
                self.ingested.put(run_id, files, files)
        if runs:
            self._wrote(con)

    def ingested_files(self, run_id: str) -> RunFiles | None:
        """The run's files as this process last ingested them (None: not since the index file
        was opened)."""
        entry = self.ingested.get(run_id)
        return None if entry is None else entry.value

    def is_current(self, run_id: str, files: RunFiles) -> bool:
        """Has this process ingested the run as its files are now?"""
        return self.ingested_files(run_id) == files

    # --- ingestion -----------------------------------------------------------------------------
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
            files = RunFiles.of(rd)
            if not self.is_current(rd.run_id, files):
                todo.append((rd, files))
        present = {r.run_id for r in runs}
        if wanted is None and (todo or not len(self.ingested) or set(self.ingested.keys()) - present):
            with self.session() as con:  # runs whose directories are gone leave the index too
                known = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
                for run_id in sorted(known - present):
                    self._forget(con, run_id)
            self.ingested.clear(lambda r: r not in present)
        for rd, files in todo:
            # A connection per run (unless the caller holds a session): a long catch-up lets
            # other tina processes in between runs instead of locking them out throughout.
            with self.session() as con:
                s = self._ingest_run(con, rd, self.ingested_files(rd.run_id), files)
                self._wrote(con)
            stats += s
            stats.updated += 1 if (s.lines or s.quarantined) else 0
            self.ingested.put(rd.run_id, files, files)
        stats.runs = len(runs)
        stats.seconds = time.perf_counter() - t0
        return stats

    def rebuild(self) -> IngestStats:
        """Drop everything and ingest all run directories again from byte 0."""
        try:
            with self.session() as con, transaction(con):
                for t in TABLES:
                    con.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
                con.execute("DROP VIEW IF EXISTS metrics_latest")
                con.execute(SCHEMA)
                new_id = self._new_id(con)  # a new index: other processes notice
            self._file_id, self._generation = new_id
        except TinaError as e:
            if "busy" in str(e):
                raise
            # An unreadable database file (corrupt, another DuckDB version): it is only a cache.
            for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                p.unlink(missing_ok=True)
            self._file_id, self._generation = None, 0  # the next connection gives the new file its id
        self.ingested.clear()
        self._forget_answers()
        return self.ingest()

    def _forget_answers(self) -> None:
        """Answers derived from the index no longer stand (see Store)."""

    def _forget(self, con, run_id: str) -> None:
        with transaction(con):
            for t in TABLES:
                con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])

    def _ingest_run(self, con, rd: RunDir, prev: RunFiles | None, files: RunFiles) -> IngestStats:
        """Bring one run up to date; ``prev``: its files as this process last ingested them
        (parts that have not changed since are skipped)."""
        stats = IngestStats()
        run_id = rd.run_id
        if prev is None or prev.run_json != files.run_json or prev.checkpoints != files.checkpoints:
            info = rd.info()
            all_ck = rd.checkpoint_steps(complete_only=False)
            done, resumable = set(rd.checkpoint_steps(evaluable=True)), set(rd.checkpoint_steps())
            with transaction(con):
                con.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", [
                    run_id, info.get("name"), info.get("recipe"), info.get("created"),
                    bool(info.get("imported", False)), _step_of(info.get("dataset_size")),
                    json.dumps(info, default=str)])
                con.execute("DELETE FROM checkpoints WHERE run_id = ?", [run_id])
                if all_ck:
                    con.execute("INSERT INTO checkpoints SELECT ?, unnest($2::BIGINT[]), unnest($3::BOOLEAN[]), "
                                "unnest($4::BOOLEAN[])",
                                [run_id, all_ck, [s in done for s in all_ck], [s in resumable for s in all_ck]])
        for name, before, now in ((METRICS, prev and prev.metrics, files.metrics),
                                  (EVENTS, prev and prev.events, files.events),
                                  (SYSTEM, prev and prev.system, files.system)):
            if prev is None or before != now:
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
            with transaction(con):
                for t in FILE_TABLES[name]:
                    con.execute(f"DELETE FROM {t} WHERE run_id = ?", [rd.run_id])
                con.execute("DELETE FROM quarantine WHERE run_id = ? AND file = ?", [rd.run_id, name])
                con.execute("DELETE FROM ingest_state WHERE run_id = ? AND file = ?", [rd.run_id, name])
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
            try:
                with transaction(con):  # rolled back by any failure, never left open
                    stats = handler(con, rd.run_id, chunk, offset, fast)
                    con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, ?, ?)",
                                [rd.run_id, name, offset + end + 1])
                return stats
            except (duckdb.Error, _SlowPath):
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
            parsed, bad = self._parse_lines(chunk, offset, metrics_problem)
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
                if kinds.get("ts", "DOUBLE") != "DOUBLE":
                    raise _SlowPath
                # every line's step, attempt and time within what records.metrics_problem allows
                ts_bad = " OR NOT isfinite(ts)" if "ts" in kinds else ""
                counts = con.execute(
                    f"SELECT count(*) FILTER (step IS NULL OR step <> floor(step) OR step < 0 OR step > {MAX_STEP} "
                    f"OR attempt <> floor(attempt) OR attempt < 1 OR attempt > {MAX_INT}{ts_bad}), "
                    + ", ".join(f"count({sql_ident(k)})" for k in kinds) + " FROM _chunk").fetchone()
                if counts[0] or sum(counts[1:]) != chunk.count(b'":'):
                    raise _SlowPath
            else:
                parsed, bad = self._parse_lines(chunk, offset, metrics_problem)
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
        steps: list[tuple[Any, ...]] = []
        first: dict[Any, Any] = {}
        long: list[tuple[Any, ...]] = []
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
        spec = "{" + ", ".join(f"{sql_str(k)}: {sql_str(t)}" for k, t in cols.items()) + "}"
        con.execute(f"CREATE OR REPLACE TEMP TABLE _chunk AS SELECT * FROM read_json("
                    f"{sql_str(str(path))}, format='newline_delimited', columns={spec})")

    @staticmethod
    def _insert_staged(con, run_id: str, keys: list[str]) -> int:
        """The staging table's values as long metrics rows, under canonical names."""
        values = [k for k in keys if k not in metric_keys.RECORD_FIELDS]
        # Legacy names go in under canonical ones; a line carrying both keeps the canonical value.
        sources: dict[str, list[str]] = {}
        for k in sorted(values, key=lambda k: metric_keys.normalise_key(k) != k):
            sources.setdefault(metric_keys.normalise_key(k), []).append(sql_ident(k))
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
        parts = [f"SELECT step::BIGINT, coalesce(attempt, 1)::INTEGER, {sql_str(c)}, {expr}, {ts} "
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
                rec = parse_json(text)
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
        good, bad = self._parse_lines(chunk, offset, events_problem)
        self._quarantine(con, run_id, EVENTS, bad)
        if good:
            con.execute("INSERT INTO events SELECT ?, unnest($2::BIGINT[]), unnest($3::DOUBLE[]), "
                        "unnest($4::VARCHAR[]), unnest($5::JSON[])",
                        [run_id, [o for o, _ in good], [_num(r.get("ts")) for _, r in good],
                         [r["event"] for _, r in good],
                         [json.dumps(r, default=str) for _, r in good]])
        evals, samples = [], 0
        for here, r in good:
            if not is_kind(r, Kind.EVAL_FINISHED) or not isinstance(r.get("scores"), dict):
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
        good, bad = self._parse_lines(chunk, offset, system_problem)
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

