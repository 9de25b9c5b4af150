"""Queries over the DuckDB index over the run directories (``$TINA_HOME/tina.duckdb``).

The JSONL files in each run directory are the truth; the index is a cache of them that can be
dropped and rebuilt at any time (`tina ingest --rebuild`). ``Store`` is its public face: ingestion
(``tina_core.store.ingest``) over the database file (``tina_core.store.database``), and the
queries the CLI, the report and the cockpit ask, with the answers each process keeps.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, TypedDict, cast

from tina_core.analysis import metric_keys
from tina_core.analysis.pick import CheckpointPick, choose
from tina_core.analysis.transition import PhaseTransition
from tina_core.caches import Cache
from tina_core.events import Kind, of_kind
from tina_core.rundir import RunFiles, runs_root
from tina_core.store.ingest import Ingestion
from tina_core.store.database import sql_str
from tina_core.store.schema import METRICS

class IndexedCheckpoint(TypedDict):
    """An evaluable checkpoint as the index holds it (``Store.checkpoints``)."""

    step: int
    evals: dict[str, float]        # task -> latest score
    avg: float | None              # mean over the tasks evaluated, None when none were
    resumable: bool                # False: an adapter snapshot pinned at the transition


class IndexedEval(TypedDict):
    """One evaluation's score (``Store.evals``)."""

    eval_id: str
    checkpoint: int | str          # a step, or "base"
    task: str
    score: float | None
    details: str | None
    ts: float | None


class EvalSample(TypedDict):
    """One sample of an evaluation, in lighteval's order (``Store.eval_samples``)."""

    sample: int
    doc_id: Any
    prompt: str | None
    gold: str | None
    prediction: str | None
    score: float | None


class GpuSample(TypedDict):
    """One GPU in the run's latest system sample (``Store.system_latest``)."""

    index: int
    util: float | None
    mem_used: float | None
    mem_total: float | None
    power_w: float | None
    ts: float


class QuarantinedLine(TypedDict):
    """A line the index refused, and why (``Store.quarantine``)."""

    run_id: str
    file: str
    offset: int
    text: str
    reason: str


PHASE_SHARE = 0.005  # of a live run's time, at most, spent detecting its phase again (see Store.phase)
# Answers kept by Store._by_files, the most recently used: a live run's few, a cockpit's view of a
# handful of runs (a long run's step clock holds a tuple per step, so not every run's is kept).
ANSWERS_KEPT = 48


def _current(attempts: list | None) -> str:
    """SQL conditions keeping only the rows no later attempt superseded (a later attempt resumed at
    or before their step), with the run's few attempts as constants: a correlated NOT EXISTS over
    the attempts table costs more than the scan itself."""
    pairs = [tuple(a.values()) if isinstance(a, dict) else a for a in (attempts or [])[1:]]  # struct or tuple
    return "".join(f" AND (attempt >= {int(a)} OR step < {int(first)})" for a, first in pairs)


def _metrics(files: RunFiles) -> Hashable:
    return files.metrics


def _series_copy(series: dict[str, list]) -> dict[str, list]:
    return {k: list(v) for k, v in series.items()}  # (step, value) tuples are immutable


class Store(Ingestion):
    """The index of one workspace. Cheap to create; holds no connection between calls."""

    def __init__(self, home: Path):
        super().__init__(home)
        # (run, question) -> answer, each kept while the run files it reads stay as ingested
        self.answers: Cache[tuple, Any] = Cache("store.answers", ANSWERS_KEPT)

    def _new_file(self, con, *, known: bool) -> None:
        self.answers.clear()
        super()._new_file(con, known=known)

    def _forget_answers(self) -> None:
        self.answers.clear()

    def _by_files(self, run_id: str, question: Hashable, version_of: Callable[[RunFiles], Hashable],
                  compute: Callable[[], Any], clone: Callable[[Any], Any] = copy.deepcopy) -> Any:
        """``compute()``'s answer, kept while the run's files that ``version_of`` picks stay as this
        process last ingested them. The index is a function of the files, so the answer only
        changes with them; another process's newer ingest is seen at this one's next ingest. A
        cockpit refresh with one new metrics line then asks again only what that line changes.
        Callers get a copy."""
        files = self.ingested_files(run_id)
        if files is None:
            return compute()
        return clone(self.answers.fetch((run_id, question), version_of(files), compute))

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
        labelled with its last step."""
        return self.metric_series_many(run_id, [key], max_points=max_points)[key]

    def metric_series_many(self, run_id: str, keys: Iterable[str], *,
                           max_points: int | None = 120) -> dict[str, list[tuple[int, float]]]:
        """``metric_series`` of several keys in one query, by the keys as given: a refresh charts
        several series of one run, and each query scans the run's rows again. Summaries (with
        ``max_points``) are kept while the run's metrics stay as ingested; every step of a long
        run is not (the detector keeps its result, the detail view asks once per change)."""
        given = list(keys)
        canonical = tuple(dict.fromkeys(map(metric_keys.normalise_key, given)))

        def query() -> dict[str, list]:
            attempts = self._attempts(run_id)
            # The same rows as metrics_latest, written out so DuckDB filters before it groups.
            base = ("SELECT key, step, arg_max(value, attempt * 1e12 + coalesce(ts, 0)) AS value FROM metrics m "
                    f"WHERE run_id = $1 AND key IN ({', '.join(map(sql_str, canonical))}){_current(attempts)} "
                    "GROUP BY key, step HAVING isfinite(value)")
            if not max_points:
                rows = self._query(base + " ORDER BY key, step", [run_id])
            else:
                rows = self._query(
                    f"SELECT key, max(step)::BIGINT, avg(value) FROM ("
                    "  SELECT key, step, value, (row_number() OVER (PARTITION BY key ORDER BY step) - 1) * $2"
                    f"   // count(*) OVER (PARTITION BY key) AS b FROM ({base})"
                    ") GROUP BY key, b ORDER BY key, 2", [run_id, int(max_points)])
            out: dict[str, list] = {k: [] for k in canonical}
            for k, step, value in rows:
                out[k].append((step, value))
            return out

        with self.batch():
            out = (query() if not max_points else
                   self._by_files(run_id, ("series", canonical, max_points), _metrics, query, _series_copy))
        return {k: list(out[metric_keys.normalise_key(k)]) for k in given}

    def _attempts(self, run_id: str) -> list:
        """The run's attempts as ``[(attempt, first_step)]``."""
        return self._by_files(run_id, "attempts", _metrics, lambda: self._query(
            "SELECT list((attempt, first_step) ORDER BY attempt) FROM attempts WHERE run_id = $1", [run_id])[0][0],
            lambda a: a)  # read only

    def last_metrics(self, run_id: str) -> dict[str, float]:
        """The latest finite value of every key (canonical names)."""
        def query() -> dict[str, float]:
            with self.batch():
                return dict(self._query(
                    "SELECT key, arg_max(value, step * 1e6 + attempt) FROM metrics m WHERE run_id = ? "
                    f"AND isfinite(value){_current(self._attempts(run_id))} GROUP BY key ORDER BY key", [run_id]))
        return self._by_files(run_id, "last_metrics", _metrics, query, dict)

    def step_clock(self, run_id: str) -> tuple[dict[int, tuple[float, int]], int | None]:
        """``({step: (ts, attempt)}, last step)``: cost.step_times of the run's metrics lines, and
        the step of the last one (the latest attempt's furthest), without reading the file."""
        def query() -> tuple[dict[int, tuple[float, int]], int | None]:
            with self.batch():
                rows = self._query(
                    f"SELECT step, max(ts), attempt FROM steps m WHERE run_id = $1{_current(self._attempts(run_id))} "
                    "GROUP BY step, attempt "
                    "QUALIFY row_number() OVER (PARTITION BY step ORDER BY attempt DESC) = 1 ORDER BY step",
                    [run_id])
            # the latest attempt's furthest step (rows are one per step, each its latest attempt),
            # also for lines without a time (imported runs)
            last = max(((a, s) for s, _, a in rows), default=(None, None))[1]
            return {s: (ts, a) for s, ts, a in rows if ts is not None}, last
        # a shallow copy: a long run's clock has a tuple per step, and tuples are immutable
        return self._by_files(run_id, "step_clock", _metrics, query, lambda r: (dict(r[0]), r[1]))

    def last_step(self, run_id: str) -> int | None:
        return self._query("SELECT max(step) FROM metrics WHERE run_id = ?", [run_id])[0][0]

    def phase(self, run_id: str, params: Any = None, *, max_age_s: float = 0.0) -> PhaseTransition | None:
        """The phase-transition object (see tina_core.phase), recomputed only when new metrics
        arrived: kept in the database (for every process, keyed by the metrics file's ingested
        offset) and in this one's answers. With ``max_age_s``, this process's last result for the
        run may stand for up to that long even though metrics arrived since: a live run gains a
        step a second and detection reads its whole history. It stands only as long as detection
        would otherwise take more than a small share of the time (PHASE_SHARE of it), so a short
        run's marker is never stale and a 13,000-step run's lags by seconds."""
        from tina_core.analysis import phase as phase_mod

        # what the run says to watch: its recipe snapshot, then its latest watch_changed event
        params = params or phase_mod.params_for_run(runs_root(self.home) / run_id)
        question = ("phase", params)
        recent = self.answers.get((run_id, question)) if max_age_s > 0 else None
        if recent and time.monotonic() - recent.made < min(max_age_s, recent.took / PHASE_SHARE):
            result = recent.value
        else:
            result = self._by_files(run_id, question, _metrics, lambda: self._detect(run_id, params), lambda r: r)
        return None if result is None else cast(PhaseTransition, dict(result))

    def _detect(self, run_id: str, params: Any) -> dict[str, Any] | None:
        """The phase of the run as indexed: from the database's phase_cache when another process
        (or an earlier one) detected it at the same metrics offset, else detected and stored there."""
        from tina_core.analysis import phase as phase_mod

        with self.session() as con:
            row = self._query('SELECT "offset" FROM ingest_state WHERE run_id = ? AND file = ?', [run_id, METRICS])
            version = row[0][0] if row else -1
            question = f"{phase_mod.detector_version()} {params!r}"  # an upgraded detector judges again
            stored = self._query("SELECT result FROM phase_cache WHERE run_id = ? AND params = ? "
                                 "AND version = ?", [run_id, question, version])
            if stored:
                return json.loads(stored[0][0])
            keys = phase_mod.series_keys(params, self.metric_keys(run_id))
            result = phase_mod.detect(self.metric_series_many(run_id, keys, max_points=None), params)
            con.execute("INSERT OR REPLACE INTO phase_cache VALUES (?, ?, ?, ?)",
                        [run_id, question, version, json.dumps(result)])
            return result

    def checkpoints(self, run_id: str) -> list[IndexedCheckpoint]:
        """Evaluable checkpoints, ascending: [{step, evals: {task: score}, avg, resumable}] (latest
        score of each task; avg is the mean over the tasks evaluated, None when none were;
        resumable False for a pinned adapter snapshot)."""
        def query() -> list[IndexedCheckpoint]:
            with self.session():
                kinds = dict(self._query(
                    "SELECT step, resumable FROM checkpoints WHERE run_id = ? AND complete ORDER BY step", [run_id]))
                steps = list(kinds)
                scores = self._query(
                    "SELECT checkpoint, task, arg_max(score, coalesce(ts, 0)) FROM evaluations "
                    "WHERE run_id = ? AND checkpoint IS NOT NULL AND isfinite(score) GROUP BY ALL", [run_id])
            evals: dict[int, dict[str, float]] = {}
            for ck, task, score in scores:
                evals.setdefault(ck, {})[task] = score
            out = []
            for s in sorted(set(steps) | set(evals)):
                e = dict(sorted(evals.get(s, {}).items()))
                out.append(IndexedCheckpoint(step=s, evals=e, avg=sum(e.values()) / len(e) if e else None,
                                             resumable=bool(kinds.get(s, False))))
            return out
        return self._by_files(run_id, "checkpoints", lambda f: (f.events, f.checkpoints), query)

    def base_evals(self, run_id: str) -> dict[str, float]:
        """The base model's latest score of each task (its evaluations have no checkpoint)."""
        return self._by_files(run_id, "base_evals", lambda f: f.events, lambda: dict(self._query(
            "SELECT task, arg_max(score, coalesce(ts, 0)) FROM evaluations WHERE run_id = ? "
            "AND checkpoint IS NULL AND isfinite(score) GROUP BY task ORDER BY task", [run_id])))

    def eval_samples(self, run_id: str, eval_id: str) -> list[EvalSample]:
        """One evaluation's samples in lighteval's order: {sample, doc_id, prompt, gold, prediction, score}."""
        cols = ("sample", "doc_id", "prompt", "gold", "prediction", "score")
        return [cast(EvalSample, dict(zip(cols, r))) for r in self._query(
            f"SELECT {', '.join(cols)} FROM eval_samples WHERE run_id = ? AND eval_id = ? ORDER BY sample",
            [run_id, eval_id])]

    def evals(self, run_id: str) -> list[IndexedEval]:
        rows = self._query(
            "SELECT eval_id, checkpoint, task, score, details, ts FROM evaluations WHERE run_id = ? "
            "ORDER BY ts NULLS FIRST, checkpoint, task", [run_id])
        return [IndexedEval(eval_id=e, checkpoint="base" if c is None else c, task=t, score=s, details=d, ts=ts)
                for e, c, t, s, d, ts in rows]

    def recommendation(self, run_id: str, *, max_age_s: float = 0.0) -> CheckpointPick:
        """Which checkpoint (``analysis.pick``), from the index's phase and scores."""
        from tina_core.analysis import phase as phase_mod

        with self.batch():
            ph = self.phase(run_id, max_age_s=max_age_s)
            cks = self.checkpoints(run_id)
        return choose(ph, cks, ended=phase_mod.params_for_run(runs_root(self.home) / run_id).ended)

    def system_latest(self, run_id: str) -> list[GpuSample]:
        rows = self._by_files(run_id, "system_latest", lambda f: f.system, lambda: self._query(
            "SELECT gpu, util, mem_used, mem_total, power_w, ts FROM system WHERE run_id = $1 "
            "AND ts = (SELECT max(ts) FROM system WHERE run_id = $1) ORDER BY gpu", [run_id]))
        return [GpuSample(index=g, util=u, mem_used=used, mem_total=total, power_w=w, ts=ts)
                for g, u, used, total, w, ts in rows]

    def events(self, run_id: str, kinds: Iterable[Kind] | None = None) -> list[dict]:
        rows = self._query('SELECT data FROM events WHERE run_id = ? ORDER BY "offset"', [run_id])
        out = [json.loads(d) for (d,) in rows]
        return out if kinds is None else of_kind(out, *kinds)

    def quarantine(self, run_id: str | None = None) -> list[QuarantinedLine]:
        sql = 'SELECT run_id, file, "offset", text, reason FROM quarantine'
        rows = self._query(sql + (" WHERE run_id = ?" if run_id else "") + ' ORDER BY run_id, file, "offset"',
                           [run_id] if run_id else [])
        return [QuarantinedLine(run_id=r, file=f, offset=o, text=t, reason=why) for r, f, o, t, why in rows]
