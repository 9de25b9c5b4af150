"""The DuckDB index: exactly-once tail ingestion, quarantine, rebuild, concurrency, queries."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tina_core.rundir import CHECKPOINT_COMPLETE, RunDir, append_jsonl, write_json_atomic
from tina_core.store.index import Store

KEYS = ("loss", "reward", "rewards/format_reward/mean", "completions/mean_length", "kl")
RECORD = ("step", "attempt", "time", "ts")  # what the trainer's writer puts in every line itself


def make_run(home: Path, run_id: str, **info) -> RunDir:
    rd = RunDir(home / "runs" / run_id)
    (rd.path / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json_atomic(rd.run_json, {"run_id": run_id, "name": run_id, "recipe": "recipes/tiny.yaml",
                                    "created": "2026-01-01T00:00:00+00:00", **info})
    return rd


def metric_line(step: int, attempt: int = 1, **extra) -> dict:
    rec = {"step": step, "attempt": attempt, "time": "2026-01-01T00:00:00+00:00", "ts": 1e9 + step}
    rec.update({k: round(step * 0.01 + i + attempt * 100, 6) for i, k in enumerate(KEYS)})
    rec.update(extra)
    return rec


def write_metrics(rd: RunDir, steps, attempt: int = 1) -> None:
    """Lines as the trainer writes them."""
    for s in steps:
        rec = metric_line(s, attempt)
        rd.log_metrics(s, attempt, {k: v for k, v in rec.items() if k not in RECORD}, at=rec["ts"])


def snapshot(store: Store) -> dict:
    """Everything a user's SQL could see, in a canonical order."""
    q = store.query
    return {
        "latest": q("SELECT run_id, step, attempt, key, value FROM metrics_latest ORDER BY ALL"),
        "metrics": q("SELECT run_id, step, attempt, key, value, ts FROM metrics ORDER BY ALL"),
        "quarantine": q('SELECT run_id, file, "offset", text, reason FROM quarantine ORDER BY ALL'),
        "events": q('SELECT run_id, "offset", event FROM events ORDER BY ALL'),
        "evaluations": q("SELECT run_id, eval_id, checkpoint, task, score FROM evaluations ORDER BY ALL"),
        "checkpoints": q("SELECT * FROM checkpoints ORDER BY ALL"),
        "system": q("SELECT * FROM system ORDER BY ALL"),
        "runs": q("SELECT run_id, name, imported FROM runs ORDER BY ALL"),
    }


def test_series_restart_dedup_legacy_keys_and_downsampling(tmp_path):
    rd = make_run(tmp_path, "r1")
    write_metrics(rd, range(1, 31), attempt=1)
    write_metrics(rd, range(21, 41), attempt=2)   # resumed from checkpoint-20
    append_jsonl(rd.metrics, {"step": 41, "attempt": 2, "ts": 2e9, "completion_length": 7.5,
                              "rewards/format_reward": 0.25, "note": "text is ignored"})
    store = Store(tmp_path)
    stats = store.ingest()
    assert (stats.runs, stats.lines, stats.quarantined) == (1, 51, 0)

    series = store.metric_series("r1", "loss", max_points=None)
    assert [s for s, _ in series] == list(range(1, 41))
    assert dict(series)[25] == metric_line(25, 2)["loss"]    # the resumed attempt wins
    assert dict(series)[10] == metric_line(10, 1)["loss"]
    # legacy names land under the canonical ones
    assert store.metric_series("r1", "completions/mean_length", max_points=None)[-1] == (41, 7.5)
    assert store.metric_series("r1", "rewards/format_reward", max_points=None)[-1] == (41, 0.25)
    assert "note" not in store.metric_keys("r1")
    assert store.last_metrics("r1")["completions/mean_length"] == 7.5
    assert store.last_metrics("r1")["loss"] == metric_line(40, 2)["loss"]

    # downsampling: 40 points into 8 buckets of 5, each the mean, labelled with its last step
    full = dict(series)
    down = store.metric_series("r1", "loss", max_points=8)
    assert [s for s, _ in down] == list(range(5, 41, 5))
    for s, v in down:
        assert v == pytest.approx(sum(full[x] for x in range(s - 4, s + 1)) / 5)
    assert store.metric_series("r1", "loss", max_points=100) == series


def test_partial_last_line_waits_for_its_newline(tmp_path):
    rd = make_run(tmp_path, "r1")
    write_metrics(rd, [1, 2])
    line = json.dumps(metric_line(3))
    with open(rd.metrics, "a") as f:
        f.write(line[:17])
    store = Store(tmp_path)
    store.ingest()
    assert [s for s, _ in store.metric_series("r1", "loss", max_points=None)] == [1, 2]
    assert store.quarantine() == []
    with open(rd.metrics, "a") as f:
        f.write(line[17:] + "\n")
    assert store.ingest().lines == 1
    assert [s for s, _ in store.metric_series("r1", "loss", max_points=None)] == [1, 2, 3]
    assert store.query("SELECT count(*) FROM metrics")[0][0] == 3 * len(KEYS)


def test_malformed_lines_are_quarantined_counted_and_never_fatal(tmp_path):
    rd = make_run(tmp_path, "r1")
    bad = ["{not json", "[1, 2]", '{"loss": 1.0}', '{"step": "seven", "loss": 1}', '{"step": 3.5}']
    with open(rd.metrics, "w") as f:
        f.write(json.dumps(metric_line(1)) + "\n")
        for b in bad:
            f.write(b + "\n")
        f.write("\n")
        f.write(json.dumps(metric_line(2, loss=float("nan"))) + "\n")
    with open(rd.events, "w") as f:
        f.write('{"event": "launched", "ts": 1}\n{"ts": 2}\ngarbage\n')
    store = Store(tmp_path)
    stats = store.ingest()
    assert stats.quarantined == len(bad) + 2
    q = store.quarantine("r1")
    assert [r["text"] for r in q if r["file"] == "metrics.jsonl"] == bad
    data = rd.metrics.read_bytes()
    for r in q:
        src = (rd.path / r["file"]).read_bytes()
        assert src[r["offset"]:].split(b"\n", 1)[0].decode() == r["text"]
        assert r["reason"]
    assert any("step" in r["reason"] for r in q)
    # good lines on both sides of the bad ones got in; NaN is kept in the table, not in series
    assert [s for s, _ in store.metric_series("r1", "reward", max_points=None)] == [1, 2]
    assert [s for s, _ in store.metric_series("r1", "loss", max_points=None)] == [1]
    assert store.query("SELECT count(*) FROM metrics WHERE isnan(value)")[0][0] == 1
    assert store.events("r1")[0]["event"] == "launched"
    # nothing is read twice
    assert store.ingest().lines == 0
    assert len(store.quarantine()) == len(bad) + 2
    assert len(data) == store.query("SELECT \"offset\" FROM ingest_state WHERE file='metrics.jsonl'")[0][0]


def test_rebuild_gives_identical_results(tmp_path):
    rd = make_run(tmp_path, "a", dataset_size=64)
    rd2 = make_run(tmp_path, "b", imported=True)
    store = Store(tmp_path)
    for lo in range(1, 60, 7):   # many small incremental batches
        write_metrics(rd, range(lo, lo + 7))
        write_metrics(rd2, range(lo, lo + 3), attempt=1 + lo // 30)
        with open(rd.metrics, "a") as f:
            f.write(f"broken line {lo}\n")
        rd.event("attempt_started", attempt=1)
        append_jsonl(rd.system, {"ts": 100 + lo, "gpus": [{"index": 0, "util": lo, "mem_used": 1,
                                                          "mem_total": 2, "power_w": 3.0}]})
        store.ingest()
    for s in (10, 20):
        (rd.checkpoint_path(s)).mkdir()
        (rd.checkpoint_path(s) / CHECKPOINT_COMPLETE).write_text("{}")
    rd.checkpoint_path(30).mkdir()   # half-written: no marker
    rd.event("eval_finished", eval_id="e1", checkpoint=10, scores={"arith": 0.5, "gsm": 0.25})
    store.ingest()
    before = snapshot(store)
    assert before["quarantine"] and before["system"] and before["evaluations"]
    stats = Store(tmp_path).rebuild()
    assert stats.runs == 2
    assert snapshot(Store(tmp_path)) == before


def test_events_checkpoints_evals_system_and_recommendation(tmp_path):
    rd = make_run(tmp_path, "r1", dataset_size=800)
    with open(rd.metrics, "w") as f:
        for s in range(1, 121):
            fmt = 0.02 * (s % 3 == 0) if s < 61 else 0.9 + 0.02 * (s % 2)
            f.write(json.dumps({"step": s, "rewards/format_reward/mean": fmt,
                                "completions/mean_length": 50 + (s % 5)}) + "\n")
    for s in (20, 40, 60, 80, 100):
        rd.checkpoint_path(s).mkdir()
        (rd.checkpoint_path(s) / CHECKPOINT_COMPLETE).write_text("{}")
    rd.checkpoint_path(120).mkdir()
    rd.event("eval_finished", eval_id="e1", checkpoint=40, scores={"a": 0.2, "b": 0.4}, details={"a": "x.parquet"})
    rd.event("eval_finished", eval_id="e2", checkpoint=80, scores={"a": 0.5, "b": 0.5})
    rd.event("eval_finished", eval_id="e3", checkpoint=40, scores={"a": 0.3})  # a re-run: latest wins
    rd.event("eval_finished", eval_id="e0", checkpoint="base", scores={"a": 0.1})
    append_jsonl(rd.system, {"ts": 1, "gpus": [{"index": 0, "util": 10}]})
    append_jsonl(rd.system, {"ts": 2, "gpus": [{"index": 0, "util": 90, "mem_used": 5, "mem_total": 8,
                                                "power_w": 200}, {"index": 1, "util": 80}]})
    store = Store(tmp_path)
    store.ingest()
    cks = store.checkpoints("r1")
    assert [c["step"] for c in cks] == [20, 40, 60, 80, 100]
    assert cks[1]["evals"] == {"a": 0.3, "b": 0.4} and cks[1]["avg"] == pytest.approx(0.35)
    assert cks[3]["avg"] == 0.5 and cks[0]["avg"] is None
    assert [e["checkpoint"] for e in store.evals("r1")] == [40, 40, 80, 80, 40, "base"]
    assert store.evals("r1")[0]["details"] == "x.parquet"
    sys_now = store.system_latest("r1")
    assert [(g["index"], g["util"]) for g in sys_now] == [(0, 90.0), (1, 80.0)]

    ph = store.phase("r1")
    assert ph["status"] == "confirmed" and ph["signal"] == "rewards/format_reward/mean"
    assert ph["step"] == 61 and ph["direction"] == "up" and ph["size"] > 0.8
    rec = store.recommendation("r1")
    assert rec["recommended"] == 60 and rec["best_evaluated"] == 80 and rec["disagree"] is True
    assert "61" in rec["reason"]


def test_unchanged_runs_are_skipped_without_opening_the_database(tmp_path, monkeypatch):
    rd = make_run(tmp_path, "r1")
    write_metrics(rd, range(1, 11))
    store = Store(tmp_path)
    store.ingest()
    opened = []
    real_open = Store._open
    monkeypatch.setattr(Store, "_open", lambda self: opened.append(1) or real_open(self))
    for _ in range(3):
        assert store.ingest().lines == 0
    assert opened == []  # nothing changed: the file is never opened (how fast: bench/cli_speed.py)
    write_metrics(rd, [11])
    assert store.ingest().lines == 1 and opened


def test_vanished_and_rewritten_files(tmp_path):
    rd = make_run(tmp_path, "r1")
    make_run(tmp_path, "gone")
    write_metrics(rd, range(1, 6))
    write_metrics(RunDir(tmp_path / "runs" / "gone"), [1])
    store = Store(tmp_path)
    store.ingest()
    import shutil

    shutil.rmtree(tmp_path / "runs" / "gone")
    rd.metrics.write_text(json.dumps(metric_line(1, loss=42.0)) + "\n")   # rewritten, shorter
    store.ingest()
    assert store.run_ids() == ["r1"]
    assert store.metric_series("r1", "loss", max_points=None) == [(1, 42.0)]
    assert Store(tmp_path).ingest().lines == 0   # a fresh process sees it all done


INGEST_LOOP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tina_core.store.index import Store
    store = Store(Path(sys.argv[1]))
    mode = sys.argv[2]
    if mode.startswith("hold"):
        # Stop for good inside the Nth run's transaction, its rows written but not committed, and
        # say so: the test kills the process exactly there.
        hold_at, calls = int(mode[4:]), [0]
        staged = Store._insert_staged
        def insert_then_hold(*args):
            rows = staged(*args)
            calls[0] += 1
            if calls[0] == hold_at:
                Path(sys.argv[1], "holding").write_text("1")
                time.sleep(600)
            return rows
        Store._insert_staged = staticmethod(insert_then_hold)
        mode = "once"
    end = time.time() + float(sys.argv[3])
    n = 0
    while mode == "once" or time.time() < end:
        store.ingest()
        if mode == "once":
            break
        with store.session():
            store.metric_series("r0", "loss")
            store.last_metrics("r0")
            store.phase("r0")
        store.checkpoints("r0")
        n += 1
    print(n)
""")


def test_kill_9_mid_batch_then_reingest_is_exactly_once(tmp_path):
    rds = [make_run(tmp_path, f"r{i}") for i in range(3)]
    rng = random.Random(7)
    written = {rd.run_id: 0 for rd in rds}
    killed_mid = 0
    for round_ in range(6):
        for rd in rds:
            n = rng.randint(1500, 3000)
            write_metrics(rd, range(written[rd.run_id] + 1, written[rd.run_id] + n + 1))
            written[rd.run_id] += n
            with open(rd.metrics, "a") as f:
                f.write('{"step": 1, "loss": ')   # a torn line that later completes
            with open(rd.metrics, "a") as f:
                f.write("oops}\n")
        # Even rounds die inside the transaction of their first, second or third run's metrics
        # (earlier runs committed); odd rounds at a random moment, which may land anywhere.
        holding = tmp_path / "holding"
        holding.unlink(missing_ok=True)
        mode = f"hold{round_ // 2 % 3 + 1}" if round_ % 2 == 0 else "once"
        p = subprocess.Popen([sys.executable, "-c", INGEST_LOOP, str(tmp_path), mode, "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + (60 if mode != "once" else rng.uniform(0.2, 0.8))
        while time.monotonic() < deadline and p.poll() is None and not holding.exists():
            time.sleep(0.01)
        if p.poll() is None:
            killed_mid += holding.exists()
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert killed_mid == 3, "every held round is killed inside its transaction"
    store = Store(tmp_path)
    store.ingest()
    for rd in rds:
        n = written[rd.run_id]
        assert store.query("SELECT count(*), count(DISTINCT (step, key)) FROM metrics WHERE run_id = ?",
                           [rd.run_id])[0] == (n * len(KEYS), n * len(KEYS))
        assert [s for s, _ in store.metric_series(rd.run_id, "kl", max_points=None)] == list(range(1, n + 1))
        assert len(store.quarantine(rd.run_id)) == 6
    assert Store(tmp_path).rebuild().quarantined == 18


def test_two_processes_hammering_side_by_side(tmp_path):
    rd = make_run(tmp_path, "r0")
    write_metrics(rd, range(1, 200))
    procs = [subprocess.Popen([sys.executable, "-c", INGEST_LOOP, str(tmp_path), "loop", "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    step = 200
    end = time.time() + 6
    while time.time() < end:
        write_metrics(rd, range(step, step + 5))
        step += 5
        time.sleep(0.02)
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert int(out) >= 2
    store = Store(tmp_path)
    store.ingest()
    assert store.query("SELECT count(*) FROM metrics")[0][0] == (step - 1) * len(KEYS)


def test_cli_ingest(tmp_path, capsys):
    from tina_core.cli.workspace import cli_ingest

    rd = make_run(tmp_path, "r1")
    write_metrics(rd, range(1, 4))
    with open(rd.metrics, "a") as f:
        f.write("bad\n")
    assert cli_ingest(tmp_path, rebuild=False) == 0
    out = capsys.readouterr().out
    assert "4 lines" in out and "1 lines quarantined" in out and "quarantine" in out
    assert cli_ingest(tmp_path, rebuild=True) == 0
    assert "rebuilt 1 runs" in capsys.readouterr().out


def test_series_kept_between_calls_matches_a_fresh_read(tmp_path):
    rd = make_run(tmp_path, "r1")
    write_metrics(rd, range(1, 301))
    store = Store(tmp_path)
    store.ingest()
    fresh = lambda: Store(tmp_path).metric_series("r1", "loss", max_points=None)  # noqa: E731
    assert store.metric_series("r1", "loss", max_points=50) == Store(tmp_path).metric_series("r1", "loss", max_points=50)
    write_metrics(rd, range(301, 321))
    store.ingest()
    assert store.metric_series("r1", "loss", max_points=None) == fresh()
    write_metrics(rd, range(290, 331), attempt=2)   # a resume rewrites steps from 290 on
    store.ingest()
    assert store.metric_series("r1", "loss", max_points=None) == fresh()
    assert dict(store.metric_series("r1", "loss", max_points=None))[300] == metric_line(300, 2)["loss"]
    other = Store(tmp_path)                          # another process ingests meanwhile
    write_metrics(rd, [331], attempt=2)
    other.ingest()
    assert store.metric_series("r1", "loss", max_points=None)[-1][0] == 331


def test_series_many_matches_one_key_at_a_time(tmp_path):
    rd = make_run(tmp_path, "r1")
    write_metrics(rd, range(1, 61), attempt=1)
    write_metrics(rd, range(41, 81), attempt=2)   # resumed from checkpoint-40
    append_jsonl(rd.metrics, {"step": 81, "attempt": 2, "ts": 3e9, "completion_length": 9.0})
    Store(tmp_path).ingest()
    keys = ["loss", "completion_length", "kl", "absent"]  # a legacy name and a key never logged
    for points in (None, 7, 1000):
        many = Store(tmp_path).metric_series_many("r1", keys, max_points=points)
        assert list(many) == keys
        assert many == {k: Store(tmp_path).metric_series("r1", k, max_points=points) for k in keys}
    assert many["absent"] == [] and many["completion_length"][-1] == (81, 9.0)
    assert len(Store(tmp_path).metric_series_many("r1", ["loss"], max_points=7)["loss"]) == 7


def test_phase_max_age_keeps_a_recent_result_until_it_expires(tmp_path, monkeypatch):
    import tina_core.store.index as store_mod

    # every detection counts as costly here, so max_age_s alone decides how long a result stands
    monkeypatch.setattr(store_mod, "PHASE_SHARE", 1e-9)
    rd = make_run(tmp_path, "r1")
    flat = lambda s: {"step": s, "attempt": 1, "ts": 1e9 + s,  # noqa: E731
                      "rewards/format_reward/mean": 0.1, "completions/mean_length": 500.0}
    for s in range(1, 200):
        append_jsonl(rd.metrics, flat(s))
    store = Store(tmp_path)
    store.ingest()
    before = store.phase("r1", max_age_s=60)
    assert before["status"] == "none"
    for s in range(200, 400):                     # the format reward jumps: a transition
        append_jsonl(rd.metrics, {**flat(s), "rewards/format_reward/mean": 0.9})
    store.ingest()
    assert store.phase("r1", max_age_s=60) == before
    from tina_core.analysis.pick import choose
    assert store.recommendation("r1", max_age_s=60) == choose(before, store.checkpoints("r1"))
    after = store.phase("r1")                     # no leeway: the new steps count
    assert after == Store(tmp_path).phase("r1") and after["status"] != "none"
    assert store.phase("r1", max_age_s=60) == after
    # a detection cheap next to the time since (any short run) is redone: its marker never lags
    monkeypatch.setattr(store_mod, "PHASE_SHARE", 1e9)
    short = make_run(tmp_path, "r2")
    for s in range(1, 200):
        append_jsonl(short.metrics, flat(s))
    store.ingest()
    assert store.phase("r2", max_age_s=60)["status"] == "none"
    for s in range(200, 400):
        append_jsonl(short.metrics, {**flat(s), "rewards/format_reward/mean": 0.9})
    store.ingest()
    assert store.phase("r2", max_age_s=60)["status"] != "none"


def test_checkpoints_within_one_session_see_what_it_ingests(tmp_path):
    rd = make_run(tmp_path, "r1")
    write_metrics(rd, range(1, 21))
    rd.checkpoint_path(10).mkdir()
    (rd.checkpoint_path(10) / CHECKPOINT_COMPLETE).write_text("{}")
    store = Store(tmp_path)
    with store.session():
        store.ingest()
        first = store.checkpoints("r1")
        first[0]["evals"]["x"] = 1.0                 # a caller's copy: changing it changes nothing
        assert store.checkpoints("r1") == [{"step": 10, "evals": {}, "avg": None, "resumable": True}]
        rd.event("eval_finished", eval_id="e1", checkpoint=10, scores={"a": 0.5})
        store.ingest()
        assert store.checkpoints("r1") == [{"step": 10, "evals": {"a": 0.5}, "avg": 0.5, "resumable": True}]
    assert store.checkpoints("r1") == Store(tmp_path).checkpoints("r1")


def test_small_and_large_chunks_give_the_same_rows(tmp_path):
    from tina_core.store.ingest import SMALL_CHUNK_LINES

    lines = [metric_line(s, extra_metric=s / 2) for s in range(1, 3 * SMALL_CHUNK_LINES)]
    lines[5] = {"step": 6, "attempt": 1, "ts": 5.0, "completion_length": 3.0,          # a legacy name
                "completions/mean_length": 4.0, "kl": None}                            # canonical wins
    lines[9] = {"step": 10, "loss": 1.5}                                                # no attempt, no ts
    small, large = make_run(tmp_path / "a", "r1"), make_run(tmp_path / "b", "r1")
    store = Store(tmp_path / "a")
    for i, rec in enumerate(lines):                   # a live run: a line or two per ingest
        append_jsonl(small.metrics, rec)
        if i % 2:
            store.ingest()
    store.ingest()
    for rec in lines:
        append_jsonl(large.metrics, rec)
    other = Store(tmp_path / "b")
    other.ingest()
    assert snapshot(store)["metrics"] == snapshot(other)["metrics"]
    for table in ("steps", "attempts"):
        assert store.query(f"SELECT * FROM {table} ORDER BY ALL") == other.query(f"SELECT * FROM {table} ORDER BY ALL")
    assert dict(store.metric_series("r1", "completions/mean_length", max_points=None))[6] == 4.0
    assert store.metric_series("r1", "kl", max_points=None)[:6] == other.metric_series("r1", "kl", max_points=None)[:6]


# Numbers the index's columns cannot take (INTEGER attempts and GPU indexes, BIGINT steps, DOUBLE
# times), as an attacker or a buggy writer appends them. Each is one bad line.
OUT_OF_RANGE_METRICS = ['{"step": 35, "attempt": 99999999999, "loss": 1}', '{"step": -3, "loss": 1}',
                        '{"step": 1e300, "loss": 1}', '{"step": 36, "attempt": 0, "loss": 1}',
                        '{"step": 37, "ts": "yesterday", "loss": 1}', '{"step": 38, "ts": 1e999, "loss": 1}',
                        '{"step": 39, "attempt": true, "loss": 1}']
OUT_OF_RANGE_EVENTS = ['{"event": "eval_finished", "eval_id": "x", "checkpoint": 99999999999999999999, '
                       '"scores": {"arith": 0.5}}', '{"event": "launched", "ts": 1e999}']
OUT_OF_RANGE_SYSTEM = ['{"ts": 5, "gpus": [{"index": 99999999999, "util": 1}]}']


@pytest.mark.parametrize("good_lines", [3, 200], ids=["few lines", "a chunk for DuckDB's reader"])
def test_out_of_range_numbers_quarantine_their_line_and_nothing_else(tmp_path, good_lines):
    """Attack 2: one out-of-range or wrong-typed number used to break the whole workspace (every
    `tina ls` saw the index unavailable, `tina ingest --rebuild` crashed). Now it is one bad line;
    real `tina` processes list every run with all its steps."""
    healthy = make_run(tmp_path, "healthy")
    write_metrics(healthy, range(1, 11))
    rd = make_run(tmp_path, "attacked")
    write_metrics(rd, range(1, good_lines + 1))
    for path, lines in ((rd.metrics, OUT_OF_RANGE_METRICS), (rd.events, OUT_OF_RANGE_EVENTS),
                        (rd.system, OUT_OF_RANGE_SYSTEM)):
        with open(path, "a") as f:
            f.write("".join(line + "\n" for line in lines))
    (rd.checkpoints / f"checkpoint-{10**20}").mkdir()  # not a step: not a checkpoint
    append_jsonl(rd.metrics, metric_line(good_lines + 1))
    append_jsonl(rd.system, {"ts": 6, "gpus": [{"index": 0, "util": 50.0}]})

    store = Store(tmp_path)
    stats = store.ingest()
    bad = OUT_OF_RANGE_METRICS + OUT_OF_RANGE_EVENTS + OUT_OF_RANGE_SYSTEM
    assert stats.quarantined == len(bad)
    assert sorted(r["text"] for r in store.quarantine("attacked")) == sorted(bad)
    assert all(r["reason"] for r in store.quarantine("attacked"))
    assert [s for s, _ in store.metric_series("attacked", "loss", max_points=None)] == list(range(1, good_lines + 2))
    assert store.query("SELECT count(*) FROM system WHERE run_id = 'attacked'")[0][0] == 1
    assert store.query("SELECT count(*) FROM checkpoints")[0][0] == 0

    def tina(*args):
        out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(tmp_path), *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "unavailable" not in out.stderr, out.stderr
        return out.stdout

    assert "rebuilt 2 runs" in tina("ingest", "--rebuild")
    listed = {r["run_id"]: r["step"] for r in json.loads(tina("ls", "--json"))}
    assert listed == {"healthy": 10, "attacked": good_lines + 1}
    assert json.loads(tina("status", "attacked", "--json"))["step"] == good_lines + 1
    assert len(store.quarantine("attacked")) == len(bad)  # rebuilt: the same lines set aside again
