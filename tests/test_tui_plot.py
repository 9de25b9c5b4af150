"""The cockpit's pure parts: bucketing, sparklines, marker alignment, smoothing, tails."""

from __future__ import annotations

import json

import pytest

from tina_core.rundir import JsonlTail, RunDir
from tina_tui.collector import FileTail
from tina_tui.view import FORMAT, LENGTH, checkpoint_rows
from tina_tui.plot import (BARS, MARK_CONFIRMED, MARK_TENTATIVE, braille_plot, bucket_mean, column_of, ema,
                           fmt_value, marker_line, spark_rows, value_at)


def test_bucket_mean_is_mean_not_max_and_keys_on_step():
    pts = [(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0), (10, 5.0)]
    b = bucket_mean(pts, 0, 10, 5)
    assert b[0] == pytest.approx(0.5)        # steps 0,1
    assert b[1] == pytest.approx(0.5)        # steps 2,3
    assert b[2] is None and b[3] is None     # no steps there
    assert b[4] == pytest.approx(5.0)        # last step lands in the last column


def test_bucket_mean_skips_nan_and_inf():
    b = bucket_mean([(0, float("nan")), (1, float("inf")), (2, 2.0)], 0, 2, 1)
    assert b == [2.0]


def test_marker_column_matches_the_bucket_of_that_step_for_any_series():
    # Two series with different sampling share one step axis: the transition step's column is the
    # column where each series' change shows.
    x0, x1, width, t = 0, 1000, 50, 420
    dense = [(s, 0.0 if s < t else 1.0) for s in range(0, 1001)]
    sparse = [(s, 0.0 if s < t else 1.0) for s in range(0, 1001, 7)]
    col = column_of(t, x0, x1, width)
    for pts in (dense, sparse):
        b = bucket_mean(pts, x0, x1, width)
        assert b[col - 1] == 0.0 and b[col + 1] == 1.0
    line = marker_line(width, col, "confirmed")
    assert len(line) == width and line.index(MARK_CONFIRMED) == col
    assert marker_line(width, col, "tentative").index(MARK_TENTATIVE) == col
    assert marker_line(width, col, "none").strip() == ""
    assert marker_line(width, None, "confirmed").strip() == ""


def test_spark_rows_heights_and_gaps():
    (row,) = spark_rows([None, 0.0, None, 1.0, None], 1)
    # a gap between values reads as a line; nothing is drawn before the first or after the last
    assert row == " " + BARS[1] + BARS[1] + BARS[8] + " "
    assert spark_rows([None, None], 2) == ["  ", "  "]
    top, bottom = spark_rows([0.0, 1.0], 2)
    assert bottom[1] == BARS[8] and top[1] == BARS[8] and top[0] == " " and bottom[0] == BARS[1]
    (flat,) = spark_rows([3.0, 3.0], 1)
    assert len(set(flat)) == 1 and flat[0] != " "


def test_ema_is_debiased_like_tensorboard():
    assert ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])  # no pull toward zero
    vals = [1.0, 3.0, 2.0]
    w = 0.6
    last, expect = 0.0, []
    for i, v in enumerate(vals, 1):
        last = last * w + (1 - w) * v
        expect.append(last / (1 - w ** i))
    assert ema(vals, w) == pytest.approx(expect)
    assert ema(vals, 0.0) == pytest.approx(vals)   # weight 0 is raw


def test_braille_plot_shape_and_extremes():
    rows = braille_plot([(0, 0.0), (10, 1.0)], width=10, height=3)
    assert len(rows) == 3 and all(len(r) == 10 for r in rows)
    assert rows[0][-1] != " " and rows[-1][0] != " "  # high at the right, low at the left
    assert all(" " <= c for r in rows for c in r)
    assert braille_plot([], 4, 2) == ["    ", "    "]


def test_value_at_and_fmt_value():
    assert value_at([(0, 1.0), (10, 2.0)], 7) == (10, 2.0)
    assert value_at([], 3) is None
    assert fmt_value(None) == "-" and fmt_value(float("nan")) == "-"
    assert fmt_value(1e-6) == "1.00e-06" and fmt_value(2400.2) == "2400" and fmt_value(0.93456) == "0.935"


def test_log_tail_reads_whole_lines_and_restarts_when_truncated(tmp_path):
    p = tmp_path / "train.log"
    tail = FileTail(p)
    assert tail.read() == ([], False)              # no file yet
    p.write_text("a\nb\npart")
    assert tail.read() == (["a", "b"], True)       # first read replaces, partial line waits
    with p.open("a") as f:
        f.write("ial\nc\n")
    assert tail.read() == (["partial", "c"], False)
    assert tail.read() == ([], False)
    p.write_text("new\n")                          # truncated: start over
    assert tail.read() == (["new"], True)


def test_log_tail_backfill_starts_on_a_line_boundary(tmp_path, monkeypatch):
    import tina_tui.collector as data

    monkeypatch.setattr(data, "LOG_BACKFILL", 10)
    p = tmp_path / "train.log"
    p.write_text("".join(f"line{i:03d}\n" for i in range(20)))
    lines, reset = FileTail(p).read()
    assert reset and lines == ["line019"]


def test_the_cockpit_s_event_tail_reports_only_new_events(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    rd.event("launched")
    tail = JsonlTail(rd.events, from_end=True)  # as the collector follows each run's events
    assert tail.read() == ([], False)
    rd.event("restarted", attempt=2)
    with rd.events.open("a") as f:
        f.write('{"event": "half')                 # a partial line waits
    assert [e["event"] for e in tail.read()[0]] == ["restarted"]
    with rd.events.open("a") as f:
        f.write('"}\n')
    assert tail.read() == ([{"event": "half"}], False)
    assert JsonlTail(tmp_path / "none", from_end=True).read() == ([], False)  # no file yet


def test_checkpoint_rows_join_cost_evals_curves_and_phase():
    run = {"checkpoints": [{"step": 50, "cost_usd_at": 1.5, "evals": {}},
                           {"step": 100, "cost_usd_at": 3.0, "evals": {"aime24": 0.4}}],
           "dataset_size": 800, "base": {"evals": {"aime24": 0.3}, "avg": 0.3}}
    store = [{"step": 100, "evals": {"aime24": 0.4, "math_500": 0.8}, "avg": 0.6}]
    series = {FORMAT: [(40.0, 0.1), (50.0, 0.2), (90.0, 0.9)], LENGTH: [(50.0, 2000.0), (100.0, 900.0)]}
    rows = checkpoint_rows(run, store, series, [(50.0, 0.5), (100.0, 1.0)],
                           {"step": 80, "status": "confirmed"}, recommended=50)
    assert [r["step"] for r in rows] == ["base", 50, 100]   # the base model first, to compare with
    base, a, b = rows
    assert base["evals"] == {"aime24": 0.3} and base["avg"] == 0.3 and not base["recommended"]
    assert a["format"] == 0.2 and a["length"] == 2000.0 and a["epoch_pct"] == 50.0
    assert a["phase"] == "before" and b["phase"] == "after"
    assert a["recommended"] and not b["recommended"]
    assert a["cost_usd_at"] == 1.5 and a["evals"] == {} and a["avg"] is None
    assert b["evals"] == {"aime24": 0.4, "math_500": 0.8} and b["avg"] == 0.6
    # without an epoch series the epoch comes from the dataset size (8 prompts per step)
    _, only = checkpoint_rows({"checkpoints": [{"step": 50}], "dataset_size": 800}, [], {}, [], None, None)
    assert checkpoint_rows({"checkpoints": []}, [], {}, [], None, None) == []   # no checkpoint, no base row
    assert only["epoch_pct"] == pytest.approx(50.0) and only["phase"] is None
    # a checkpoint exactly at the transition is "at" it, and that is where the recommendation sits
    at = checkpoint_rows(run, store, series, [], {"step": 100, "status": "tentative"}, recommended=100)
    assert [r["phase"] for r in at] == [None, "before", "at"] and at[2]["recommended"]


def test_demo_workspace_is_deterministic(tmp_path):
    from tina_tui.demo import make_workspace

    a = make_workspace(tmp_path / "a")
    b = make_workspace(tmp_path / "b")
    for ra, rb in zip(a, b):
        for name in ("events.jsonl", "metrics.jsonl", "system.jsonl", "train.log", "run.json", "recipe.yaml"):
            # the same bytes but for the workspace's own path (the launch command names the run directory)
            assert (ra.path / name).exists() == (rb.path / name).exists()
            if (ra.path / name).exists():
                assert (ra.path / name).read_text().replace(str(tmp_path / "a"), "~") == \
                    (rb.path / name).read_text().replace(str(tmp_path / "b"), "~")
        assert ra.checkpoint_steps() == rb.checkpoint_steps()
    first = json.loads(a[0].metrics.read_text().splitlines()[0])
    assert {"step", "attempt", "ts", FORMAT, LENGTH}.issubset(first)


def test_eta_is_as_precise_as_it_is_near():
    from tina_tui.widgets.text import eta_text

    assert [eta_text(s) for s in (None, 0.4, 42, 61, 599, 601, 3 * 3600 + 29 * 60 + 40)] == \
        ["-", "0s", "42s", "1m00s", "10m00s", "10m", "3h30m"]
