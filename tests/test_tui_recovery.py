"""A cockpit left open recovers by itself: a failed ingest is tried again (never recorded as done),
and a deleted or replaced index file is noticed, given its tables again and filled again. Checked
by comparing what a reused Collector shows with what a fresh one shows, and with the real app."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from textual.worker import WorkerFailed

import tina_tui.collector
from tina_core.rundir import find_run, iter_jsonl
from tina_core.store.database import DB_NAME
from tina_tui.collector import Collector
from tina_tui.demo import SyntheticRun

from test_cli import tina
from test_tui_support import FROZEN, make_app, refreshed, settle, workspace


@pytest.fixture(autouse=True)
def _whole_refreshes(monkeypatch):
    # every refresh ingests and describes every run, so one collect is a whole snapshot
    monkeypatch.setattr(tina_tui.collector, "REFRESH_BUDGET_S", float("inf"))


def shown(snap) -> tuple:
    """What a snapshot shows, less the log tail (a fresh cockpit backfills it, a reused one follows it)."""
    v = snap.view
    return (snap.runs, v.run_id, v.series, v.phase, v.pick, v.checkpoints, v.system, v.detail)


def settled(collector: Collector, selected: str):
    """Collect until nothing is left for later refreshes (the app asks for those at once)."""
    for _ in range(10):
        snap = collector.collect(selected)
        if not collector.pending:
            return snap
    raise AssertionError("the collector kept asking for another refresh")


def grow(home, run: str, steps: int) -> None:
    """Log more steps of a run the way its trainer does."""
    rd = find_run(home, run)
    synthetic = SyntheticRun(rd.run_id)
    last = max(r["step"] for r in iter_jsonl(rd.metrics))
    for step in range(last + 1, last + 1 + steps):
        rd.log_metrics(step, 1, synthetic.metrics_at(step, random.Random(step)), at=FROZEN + step)


def _damage(db):
    good = db.read_bytes()
    db.write_bytes(good[: len(good) // 4] + os.urandom(len(good) // 4) + good[len(good) // 2:])


@pytest.mark.parametrize("what", ["damaged, then rebuilt by tina ingest --rebuild", "deleted",
                                  "replaced by an older copy"])
def test_a_reused_collector_shows_what_a_fresh_one_does(tmp_path, what):
    home = workspace(tmp_path / "home")
    sel = find_run(home, "open-rs3").run_id  # a stopped run: its figures do not move with the clock
    db = home / DB_NAME
    cockpit = Collector(home, clock=lambda: FROZEN)
    first = settled(cockpit, sel)
    assert first.error is None and first.view.phase["status"] == "confirmed"
    older = tmp_path / "older.duckdb"
    shutil.copy(db, older)
    grow(home, "open-rs3", 5)
    grow(home, "tiny", 5)  # another run, not in view
    assert settled(cockpit, sel).error is None  # the index has the new steps

    grow(home, "open-rs3", 5)
    if what.startswith("damaged"):
        _damage(db)
        broken = cockpit.collect(sel)
        assert "tina ingest --rebuild" in broken.error and broken.view.series  # the files still answer
        assert tina(home, "ingest", "--rebuild").returncode == 0
    elif what == "deleted":
        db.unlink()
    else:
        shutil.copy(older, db)  # knows neither the steps grown since nor the cockpit's reading of them
    again = settled(cockpit, sel)
    other = find_run(home, "tiny").run_id  # the run that moved before, looked at now
    again_other = settled(cockpit, other)
    fresh = Collector(home, clock=lambda: FROZEN)
    assert again.error is None and again_other.error is None
    assert shown(again) == shown(settled(fresh, sel))
    assert shown(again_other) == shown(settled(fresh, other))
    assert again.view.series["completions/mean_length"][-1][0] == first.view.run["step"] + 10


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["deleted", "replaced by an older copy"])
async def test_the_cockpit_recovers_from_a_deleted_or_replaced_index(tmp_path, what):
    """Attack: `rm $TINA_HOME/tina.duckdb` (or copying another file over it) while the cockpit is
    open used to wedge it on "Table ingest_state does not exist" until another command rebuilt it."""
    home = workspace(tmp_path / "home")
    run = find_run(home, "open-rs3").run_id
    app = make_app(home, run=run, clock=lambda: FROZEN)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        step = app.view.run["step"]
        older = tmp_path / "older.duckdb"
        shutil.copy(home / DB_NAME, older)
        grow(home, "open-rs3", 3)
        grow(home, "tiny", 3)
        await refreshed(app, pilot)
        if what == "deleted":
            (home / DB_NAME).unlink()
        else:
            shutil.copy(older, home / DB_NAME)
        grow(home, "open-rs3", 3)
        await refreshed(app, pilot)
        await settle(app, pilot)
        for _ in range(3):  # a few more seconds of an open cockpit
            await refreshed(app, pilot)
        assert app.snapshot.error is None
        assert app.view.run["step"] == step + 6
        assert app.view.series["rewards/format_reward/mean"][-1][0] == step + 6
        assert app.view.phase["status"] == "confirmed"
        assert not any("Catalog Error" in n.message for n in app._notifications)
        tiny = find_run(home, "tiny")  # moved before the index was replaced, and not since
        app.selected = tiny.run_id
        await refreshed(app, pilot)
        assert app.view.series["rewards/format_reward/mean"][-1][0] == 63


@pytest.mark.anyio
async def test_an_action_that_fails_unforeseen_is_said(tmp_path):
    """An action's worker that raises something its handler did not foresee (here an OSError: the
    run's events.jsonl became a directory) used to end silently; the cockpit says it."""
    home = workspace(tmp_path / "home")
    run = find_run(home, "tiny")
    app = make_app(home, run=run.run_id, clock=lambda: FROZEN)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(app, pilot)
        run.events.unlink()
        run.events.mkdir()
        worker = app.queue_eval(run.run_id, "base", ["arith"])
        with pytest.raises(WorkerFailed):
            await worker.wait()
        await pilot.pause()
        said = [n.message for n in app._notifications if n.severity == "error"]
        assert any(m.startswith("queue eval failed: IsADirectoryError") and "events.jsonl" in m for m in said), said
