"""`tina import`: trainer_state.json (TRL 0.15 keys), W&B-style CSV, metrics.jsonl, and errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tina_core.cli.commands import app
from tina_core.importer.readers import IMPORTING, import_run
from tina_core.rundir import RunDir, TinaError, list_run_dirs
from tina_core.report.runs import list_runs
from tina_core.store.index import Store

DATA = Path(__file__).parent / "data"


def tina_like_history(n: int = 400, turn: int = 230) -> list[dict]:
    """A Tina-style TRL 0.15 log: format reward high then destabilising at `turn`, length jumping."""
    hist = []
    for s in range(1, n + 1):
        wobble = ((s * 37) % 11) / 11 - 0.5
        fmt = 0.92 + 0.04 * wobble if s < turn else 0.55 + 0.06 * wobble
        length = 3100 + 120 * wobble if s < turn else 1900 + 120 * wobble
        hist.append({"step": s, "epoch": s / 875, "loss": 0.01 * wobble, "learning_rate": 1e-6,
                     "rewards/format_reward": fmt, "rewards/accuracy_reward": 0.4 + 0.0005 * s,
                     "reward": fmt + 0.8, "reward_std": 0.3, "completion_length": length, "kl": 0.001 * s})
        if s % 100 == 0:
            hist.append({"step": s, "eval_loss": 0.5, "eval_rewards/format_reward": fmt})
    hist.append({"step": n, "train_runtime": 1234.5, "train_loss": 0.01, "total_flos": 0.0})
    return hist


def test_trainer_state_with_trl_015_keys(tmp_path):
    src = tmp_path / "checkpoint-400" / "trainer_state.json"
    src.parent.mkdir()
    src.write_text(json.dumps({"global_step": 400, "max_steps": 1500, "save_steps": 50,
                               "log_history": tina_like_history()}))
    home = tmp_path / "home"
    rd = import_run(home, src, name="open-rs2")
    info = rd.info()
    assert info["imported"] is True and info["name"] == "open-rs2" and info["format"] == "trainer_state"
    assert info["max_steps"] == 1500 and info["save_steps"] == 50 and info["source"] == str(src.resolve())
    assert [e["event"] for e in rd.read_events()] == ["imported", "finished"]
    first = json.loads(rd.metrics.read_text().splitlines()[0])
    assert "rewards/format_reward/mean" in first and "completions/mean_length" in first
    assert "completion_length" not in first and "rewards/format_reward" not in first

    store = Store(home)
    store.ingest()
    assert len(store.metric_series(rd.run_id, "rewards/format_reward/mean", max_points=None)) == 400
    keys = store.metric_keys(rd.run_id)
    assert {"eval_rewards/format_reward/mean", "eval_loss", "train_runtime", "kl"} <= set(keys)
    ph = store.phase(rd.run_id)
    assert ph["status"] == "confirmed" and ph["direction"] == "down"
    assert abs(ph["step"] - 230) <= 2
    assert set(ph["signals"]) == {"rewards/format_reward/mean", "completions/mean_length"}


def test_wandb_csv_export(tmp_path):
    src = tmp_path / "wandb_export.csv"
    rows = ["_step,run - train/global_step,run - train/rewards/format_reward,"
            "run - train/rewards/format_reward__MIN,run - train/completion_length,train/loss,note"]
    for i in range(1, 61):
        rows.append(f"{i * 3},{i},{0.1 if i < 30 else 0.9},0,{300 + i},{'' if i % 7 == 0 else 0.5},x")
    rows.append("999,,0.5,0,1,1,eval row without a global step")
    src.write_text("\n".join(rows) + "\n")
    home = tmp_path / "home"
    rd = import_run(home, src)
    assert rd.info()["name"] == "wandb_export" and rd.info()["format"] == "csv"
    assert rd.read_events()[0]["skipped_rows"] == 1
    store = Store(home)
    store.ingest()
    assert set(store.metric_keys(rd.run_id)) == {"rewards/format_reward/mean", "completions/mean_length", "loss"}
    fmt = store.metric_series(rd.run_id, "rewards/format_reward/mean", max_points=None)
    assert [s for s, _ in fmt] == list(range(1, 61))           # train/global_step, not _step
    assert len(store.metric_series(rd.run_id, "loss", max_points=None)) == 60 - 8   # blanks skipped


def test_plain_csv_and_metrics_jsonl(tmp_path):
    csv_src = tmp_path / "m.csv"
    csv_src.write_text("step,reward\n1,0.1\n2,0.2\n")
    home = tmp_path / "home"
    assert import_run(home, csv_src).info()["stop_at_step"] == 2
    jl = tmp_path / "run7" / "metrics.jsonl"
    jl.parent.mkdir()
    jl.write_text('{"step": 1, "attempt": 1, "reward": 0.5, "time": "t"}\nnot json\n'
                  '{"step": 2, "completion_length": 12}\n')
    rd = import_run(home, jl)
    assert rd.info()["name"] == "run7"
    assert rd.read_events()[0]["skipped_rows"] == 1
    lines = [json.loads(x) for x in rd.metrics.read_text().splitlines()]
    assert lines == [{"step": 1, "attempt": 1, "reward": 0.5},
                     {"step": 2, "attempt": 1, "completions/mean_length": 12.0}]


@pytest.mark.parametrize("name, content, expect", [
    ("missing.csv", None, "no such file"),
    ("nostep.csv", "epoch,reward\n1,2\n", "no step column"),
    ("state.json", '{"global_step": 3}', "log_history"),
    ("broken.json", "{nope", "not valid JSON"),
    ("empty.jsonl", "garbage\n", "no metric rows"),
    ("notes.txt", "hello world\n", "unknown format"),
])
def test_clear_errors_and_nothing_half_made(tmp_path, name, content, expect):
    src = tmp_path / name
    if content is not None:
        src.write_text(content)
    home = tmp_path / "home"
    with pytest.raises(TinaError, match=expect) as e:
        import_run(home, src)
    assert str(src.name) in str(e.value)
    assert list_run_dirs(home) == []


@pytest.mark.parametrize("name, content, where", [
    ("m.jsonl", '{"step": 1, "loss": 0.5}\n{"step": 35, "attempt": 99999999999, "loss": 1}\n', "line 2: 'attempt'"),
    ("m.jsonl", '{"step": 1, "loss": 0.5}\n{"step": 100000000000000000000, "loss": 1}\n', "line 2: 'step'"),
    ("m.jsonl", '{"step": 1, "loss": 0.5, "ts": 1e999}\n', "line 1: 'ts'"),
    ("trainer_state.json", '{"log_history": [{"step": 1, "loss": 0.5}, {"step": -4, "loss": 1}]}', "log_history[1]"),
    ("m.csv", "step,loss\n1,0.5\n1e30,0.2\n", "line 3: 'step'"),
])
def test_import_refuses_numbers_the_index_cannot_hold(tmp_path, name, content, where):
    """Attack 2 through `tina import`: a clear error naming the line, no traceback, no run left."""
    src = tmp_path / name
    src.write_text(content)
    home = tmp_path / "home"
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "import", str(src)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and where in out.stderr and "nothing was imported" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert list_run_dirs(home) == [] and [p for p in home.rglob("*") if p.is_file()] == []


def test_a_csv_with_a_byte_order_mark_imports(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark, which hid the step column."""
    src = tmp_path / "excel.csv"
    src.write_bytes("step,reward\n1,0.1\n2,0.2\n".encode("utf-8-sig"))
    rd = import_run(tmp_path / "home", src)
    assert [json.loads(x)["step"] for x in rd.metrics.read_text().splitlines()] == [1, 2]
    nosuffix = tmp_path / "export"
    nosuffix.write_bytes(src.read_bytes())
    assert import_run(tmp_path / "home", nosuffix).info()["format"] == "csv"


CRASHING_IMPORT = """
import os, signal, sys
from tina_core.importer import readers as importer
from tina_core.rundir import RunDir

write_event = RunDir.event
def event(self, kind, **fields):
    write_event(self, kind, **fields)
    if kind == "imported":  # the metrics and an event are written, run.json is not: die here
        os.kill(os.getpid(), signal.SIGKILL)
RunDir.event = event
importer.import_run(sys.argv[1], sys.argv[2])
"""


def test_import_is_atomic_a_crash_midway_leaves_no_run(tmp_path, monkeypatch):
    src = tmp_path / "trainer_state.json"
    src.write_text(json.dumps({"log_history": tina_like_history(300, 150)}))
    home = tmp_path / "home"
    killed = subprocess.run([sys.executable, "-c", CRASHING_IMPORT, str(home), str(src)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [partial] = (home / "runs" / IMPORTING).iterdir()
    assert (partial / "metrics.jsonl").stat().st_size > 0 and not (partial / "run.json").exists()
    assert list_run_dirs(home) == [] and list_runs(home) == []
    assert Store(home).ingest().runs == 0

    # an error midway cleans up after itself
    def fail(self, kind, **fields):
        raise OSError("disk full")
    monkeypatch.setattr(RunDir, "event", fail)
    with pytest.raises(OSError, match="disk full"):
        import_run(home, src)
    assert list((home / "runs" / IMPORTING).iterdir()) == [partial]
    monkeypatch.undo()

    rd = import_run(home, src, name="rs2")
    assert list_run_dirs(home) == [rd] and rd.path.parent == home / "runs"
    assert rd.info()["run_id"] == rd.run_id and len(rd.metrics.read_text().splitlines()) == 300
    assert [e["event"] for e in rd.read_events()] == ["imported", "finished"] and rd.checkpoints.is_dir()


def fresh_tina(home, *args: str) -> object:
    """A fresh `tina ... --json` process: its parsed output."""
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_new_metrics_lines_show_in_the_next_fresh_ls_and_status(tmp_path):
    """Issue 4's "new lines visible in the database": lines appended to a run's metrics.jsonl (as
    the trainer writes them) are in the next `tina ls/status --json` (how fast: bench/cli_speed.py)."""
    lines = DATA.joinpath("tiny_run_metrics.jsonl").read_text().splitlines(keepends=True)
    src = tmp_path / "metrics.jsonl"
    src.write_text("".join(lines[:50]))
    home = tmp_path / "home"
    rd = import_run(home, src, name="growing")
    [run] = fresh_tina(home, "ls", "--json")  # the index now holds the first 50 steps
    assert run["step"] == 50

    with open(rd.metrics, "a") as f:
        f.write("".join(lines[50:100]))
    run = fresh_tina(home, "status", rd.run_id, "--json")
    last = json.loads(lines[99])
    assert run["step"] == 100 and run["last_metrics"]["rewards/format_reward/mean"] == last["rewards/format_reward/mean"]
    assert run["phase_transition"]["status"] == "confirmed"

    with open(rd.metrics, "a") as f:  # one more step, as a live run gains them
        f.write(json.dumps({**last, "step": 101}) + "\n")
    [run] = fresh_tina(home, "ls", "--json")
    assert run["step"] == 101


def test_cli_import(tmp_path):
    src = tmp_path / "trainer_state.json"
    src.write_text(json.dumps({"log_history": tina_like_history(300, 150)}))
    home = tmp_path / "home"
    res = CliRunner().invoke(app, ["--home", str(home), "import", str(src), "--name", "rs2"])
    assert res.exit_code == 0, res.output
    assert "imported" in res.output and "phase transition: confirmed" in res.output
    [rd] = list_run_dirs(home)
    assert rd.info()["name"] == "rs2"


# --- the formats people really have: small fixtures written here in each one's own shape ----------

def _wobble(s: int, k: int = 37) -> float:
    return ((s * k) % 11) / 11 - 0.5


def _keys(home, rd) -> set[str]:
    store = Store(home)
    store.ingest()
    return set(store.metric_keys(rd.run_id))


NOTEBOOK_HEADER = ["Step", "Training Loss", "reward", "reward_std", "completion_length", "kl",
                   "rewards / xmlcount_reward_func", "rewards / strict_format_reward_func",
                   "rewards / correctness_reward_func"]


def _notebook_rows(n: int = 120, turn: int = 70) -> list[list[str]]:
    rows = []
    for s in range(1, n + 1):
        strict = (0.0 if s < turn else 0.35) + (0.03 * _wobble(s) if s >= turn else 0.0)
        xml = (0.08 if s < turn else 0.42) + 0.04 * _wobble(s, 7)
        correct = 0.4 + 0.6 * _wobble(s, 13)
        length = (195 if s < turn - 3 else 150) + 8 * _wobble(s, 5)
        rows.append([str(s), "No log" if s == 1 else f"{0.001 * _wobble(s):.6f}", f"{strict + xml + correct:.6f}",
                     "0.3", f"{length:.3f}", f"{0.0001 * s:.6f}", f"{xml:.6f}", f"{strict:.6f}", f"{correct:.6f}"])
    return rows


def test_a_notebooks_printed_progress_table(tmp_path):
    """The table an Unsloth/HF notebook prints: `Step`, `Training Loss` ("No log" before the first
    log) and names spelled with spaces, imported under canonical names and judged on its own
    format rewards."""
    src = tmp_path / "grpo_notebook-table.csv"
    src.write_text("\n".join(",".join(r) for r in [NOTEBOOK_HEADER, *_notebook_rows()]) + "\n")
    home = tmp_path / "home"
    rd = import_run(home, src)
    assert _keys(home, rd) == {"loss", "reward", "reward_std", "completions/mean_length", "kl",
                               "rewards/xmlcount_reward_func/mean", "rewards/strict_format_reward_func/mean",
                               "rewards/correctness_reward_func/mean"}
    assert "notebook's progress table" in rd.read_events()[0]["detail"]
    [run] = list_runs(home)
    ph = run["phase_transition"]
    assert ph["status"] == "confirmed" and abs(ph["step"] - 70) <= 2 and ph["confidence"] == "high"
    assert ph["signal"] in ("rewards/xmlcount_reward_func/mean", "rewards/strict_format_reward_func/mean")
    assert "rewards/correctness_reward_func/mean" not in run["watch"]["signals"]


def test_the_same_table_inside_an_executed_notebook(tmp_path):
    """An .ipynb whose training cell printed two progress tables (a first start, then the run):
    the last one is read."""
    def html(rows):
        head = "".join(f"<th>{h}</th>" for h in NOTEBOOK_HEADER)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>\n" for r in rows)
        return ['<div><progress value="5" max="250"></progress>\n<table border="1" class="dataframe">\n',
                f'<thead>\n <tr style="text-align: left;">{head}</tr>\n</thead>\n<tbody>\n{body}</tbody>\n</table><p>']
    rows = _notebook_rows()
    nb = {"nbformat": 4, "nbformat_minor": 0, "metadata": {}, "cells": [
        {"cell_type": "markdown", "source": ["# GRPO"], "metadata": {}},
        {"cell_type": "code", "source": ["trainer.train()"], "metadata": {}, "execution_count": 15, "outputs": [
            {"output_type": "display_data", "data": {"text/html": html(rows[:5]), "text/plain": ["<IPython>"]}},
            {"output_type": "display_data", "data": {"text/html": html(rows), "text/plain": ["<IPython>"]}}]}]}
    src = tmp_path / "Qwen2.5_(3B)-GRPO.ipynb"
    src.write_text(json.dumps(nb))
    home = tmp_path / "home"
    rd = import_run(home, src)
    assert rd.info()["format"] == "notebook" and rd.info()["stop_at_step"] == 120
    assert "the last of 2 progress table(s), in cell 1" in rd.read_events()[0]["detail"]
    assert "rewards/strict_format_reward_func/mean" in _keys(home, rd)
    [run] = list_runs(home)
    assert abs(run["phase_transition"]["step"] - 70) <= 2


def test_a_wandb_export_of_several_runs_and_one_metric_per_file(tmp_path):
    """W&B's panel export: `Step` and `<run> - <metric>` columns with __MIN/__MAX companions; with
    two runs in it, the run must be named. Panels export one metric each: the files of one run
    merge by step."""
    fmt = tmp_path / "format.csv"
    rows = ['"Step","grpo-a - train/rewards/format_reward/mean","grpo-a - train/rewards/format_reward/mean__MIN",'
            '"grpo-a - train/rewards/format_reward/mean__MAX","grpo-b - train/rewards/format_reward/mean"']
    for s in range(1, 101):
        a, b = (0.05 if s < 50 else 0.8), (0.1 if s < 30 else 0.9)
        rows.append(f"{s},{a},{a - 0.1},{a + 0.1},{b}")
    fmt.write_text("\n".join(rows) + "\n")
    length = tmp_path / "length.csv"
    length.write_text('"Step","grpo-b - train/completions/mean_length"\n'
                      + "".join(f"{s},{300 - (100 if s >= 32 else 0) + 5 * _wobble(s)}\n" for s in range(1, 101)))
    home = tmp_path / "home"
    with pytest.raises(TinaError, match=r"several runs \(grpo-a, grpo-b\): name one with --run"):
        import_run(home, fmt)
    with pytest.raises(TinaError, match="no run 'grpo-c'"):
        import_run(home, fmt, run="grpo-c")
    rd = import_run(home, [fmt, length], run="grpo-b", name="b")
    assert rd.info()["sources"] == [str(fmt.resolve()), str(length.resolve())]
    store = Store(home)
    store.ingest()
    assert set(store.metric_keys(rd.run_id)) == {"rewards/format_reward/mean", "completions/mean_length"}
    assert dict(store.metric_series(rd.run_id, "rewards/format_reward/mean", max_points=None))[40] == 0.9
    ph = store.phase(rd.run_id)
    assert ph["step"] == 30 and ph["confidence"] == "high" and "completions/mean_length" in ph["signals"]


def test_trainer_state_with_logging_steps_10_and_what_real_logs_hold(tmp_path):
    """A TRL 1.x trainer_state.json logged every 10 steps, starting with a byte-order mark, with a
    NaN grad norm, a KL spike of 1e5, a missing entry (a step gap), an eval entry sharing a train
    step, and a JSON-validity reward that jumps while length sits at its 128-token cap."""
    hist = []
    for s in range(10, 501, 10):
        if s == 230:
            continue  # a gap
        hist.append({"step": s, "epoch": s / 900, "loss": 0.01, "grad_norm": float("nan") if s == 40 else 0.5,
                     "kl": 1e5 if s == 300 else 0.001, "reward": 1.0,
                     "rewards/valid_json_reward/mean": (-0.4 if s < 150 else 1.9) + 0.1 * _wobble(s // 10),
                     "rewards/valid_json_reward/std": 0.5, "rewards/gameplay_scores/mean": 3 * _wobble(s // 10, 7),
                     "completions/mean_length": 126.0 + _wobble(s // 10, 5), "completions/clipped_ratio": 0.95,
                     "completions/max_length": 128.0})
        if s % 100 == 0:
            hist.append({"step": s, "eval_loss": 0.5})
    state = {"global_step": 500, "max_steps": 500, "logging_steps": 10, "save_steps": 100, "log_history": hist}
    src = tmp_path / "checkpoint-500" / "trainer_state.json"
    src.parent.mkdir()
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(state, indent=2).encode())  # json.dumps writes NaN
    home = tmp_path / "home"
    rd = import_run(home, src)
    assert rd.info()["logging_steps"] == 10 and rd.info()["name"] == "checkpoint-500"
    lines = [json.loads(x) for x in rd.metrics.read_text().splitlines()]
    assert [r["step"] for r in lines] == [s for s in range(10, 501, 10) if s != 230]
    assert lines[9]["eval_loss"] == 0.5 and lines[9]["loss"] == 0.01  # train and eval of step 100 merged
    store = Store(home)
    store.ingest()
    assert max(v for _, v in store.metric_series(rd.run_id, "kl", max_points=None)) == 1e5
    assert 40 not in dict(store.metric_series(rd.run_id, "grad_norm", max_points=None))  # NaN left out
    [run] = list_runs(home)
    ph = run["phase_transition"]
    assert ph["signal"] == "rewards/valid_json_reward/mean" and ph["step"] == 150 and ph["confidence"] == "high"
    assert any("sits at the cap" in r for r in ph["reasons"])
    assert run["watch"]["signals"] == ["rewards/valid_json_reward/mean"]


def test_jsonl_with_global_step_and_a_restarted_log(tmp_path):
    """TRL 1.x-style JSONL (one logs dict per line, `global_step`, `NaN` as JSON writes it); the
    log restarts at step 1 (a cell run again): the later attempt supersedes the earlier."""
    src = tmp_path / "logs.jsonl"
    lines = [json.dumps({"global_step": s, "rewards/format_reward/mean": 0.1, "loss": float("nan")}) for s in range(1, 6)]
    lines += [json.dumps({"global_step": s, "rewards/format_reward/mean": 0.2, "kl": 0.01}) for s in range(1, 21)]
    src.write_text("\ufeff" + "\n".join(lines) + "\n")
    home = tmp_path / "home"
    rd = import_run(home, src)
    store = Store(home)
    store.ingest()
    fmt = store.metric_series(rd.run_id, "rewards/format_reward/mean", max_points=None)
    assert [s for s, _ in fmt] == list(range(1, 21)) and {v for _, v in fmt} == {0.2}
    assert rd.info()["stop_at_step"] == 20


def _trackio_db(path, runs: dict[str, list[dict]]) -> None:
    """A project database laid out as trackio's SQLiteStorage writes it (its metrics table)."""
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
                "timestamp TEXT NOT NULL, run_name TEXT NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL)")
    con.execute("CREATE TABLE configs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, "
                "run_name TEXT NOT NULL, config TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE(run_id))")
    for name, logs in runs.items():
        for i, m in enumerate(logs):
            con.execute("INSERT INTO metrics (run_id, timestamp, run_name, step, metrics) VALUES (?, ?, ?, ?, ?)",
                        [f"id-{name}", "2026-01-01T00:00:00", name, i, json.dumps(m)])
    con.commit()
    con.close()


def test_a_trackio_database(tmp_path):
    """trackio keeps a project per SQLite file; the Trainer's callback logs train/global_step in
    every row (trackio's own step counts log calls); NaN is stored as the string "NaN"."""
    def logs(turn):
        return [{"train/rewards/format_reward/mean": 0.02 if s < turn else 0.85, "train/loss": "NaN" if s == 3 else 0.1,
                 "train/completions/mean_length": 400 + 10 * _wobble(s), "train/global_step": s * 5}
                for s in range(1, 61)]
    db = tmp_path / "grpo-project.db"
    _trackio_db(db, {"dainty-sunset-1": logs(30), "brisk-river-2": logs(20)})
    home = tmp_path / "home"
    before = db.read_bytes()
    with pytest.raises(TinaError, match="several runs"):
        import_run(home, db)
    rd = import_run(home, db, run="dainty-sunset-1")
    assert rd.info()["format"] == "trackio" and rd.info()["name"] == "dainty-sunset-1"
    store = Store(home)
    store.ingest()
    assert set(store.metric_keys(rd.run_id)) == {"rewards/format_reward/mean", "loss", "completions/mean_length"}
    assert [s for s, _ in store.metric_series(rd.run_id, "loss", max_points=None)][:3] == [5, 10, 20]
    assert store.phase(rd.run_id)["step"] == 150
    assert db.read_bytes() == before  # opened read-only: trackio's file is left as it was
