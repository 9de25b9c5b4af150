"""The stop policy in the cockpit: the runs list and the money line show the policy and its
countdown, then the stop, the dollars saved, the automatic evaluations and the pick; `p` changes the
policy of a live run from the keyboard. On copies of the shared tiny run, made live or stopped
through the product's writers; the real thing in tmux is an extended test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_tui_live import _cockpit, _tmux, _wait_pane
from test_tui_support import make_app, screen_text, settle

from tina_core import runstate
from tina_core.evaluate import queue as ev_queue
from tina_core.rundir import RunDir, iter_jsonl, list_run_dirs, write_json_atomic
from tina_core.supervise import lifecycle
from tina_core.train import snapshots
from tina_tui.screens.policy import PolicyDialog
from tina_tui.widgets.runs_list import RunsTable

FORMAT = "rewards/format_reward/mean"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _copy(tiny_run: RunDir, home: Path) -> RunDir:
    """The shared 6-step run, as one whose stop_at_step is 100 and whose marker came at step 4."""
    rd = RunDir(home / "runs" / tiny_run.run_id)
    shutil.copytree(tiny_run.path, rd.path)
    write_json_atomic(rd.run_json, {**rd.info(), "stop_at_step": 100})
    rd.event("transition", status="confirmed", step=4, signal=FORMAT, detected_at=4)
    snapshots.reconcile(rd, 4, {"marker": 4, "status": "confirmed"})
    return rd


def _make_live(rd: RunDir) -> None:
    """A supervisor that is this process, beating now: the run reads as running."""
    rd.event("supervisor_started", pid=os.getpid(), resume=True)
    rd.event("attempt_started", attempt=2, pid=os.getpid(), gpus=0)
    write_json_atomic(rd.supervisor, {"pid": os.getpid(), "pgid": os.getpgid(0), "started": time.time(),
                                      "heartbeat": time.time(), "trainer_pid": None, "attempt": 2})


def _cost_text(app) -> str:
    return app.main.query_one("#cost").render().plain


@pytest.mark.anyio
async def test_policy_and_countdown_shown_and_changed_from_the_keyboard(home, tiny_run):
    rd = _copy(tiny_run, home)
    _make_live(rd)
    lifecycle.set_policy(home, rd.run_id, by="test", after_transition=5)
    app = make_app(home, run=rd.run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert app.view.run["state"] == "running"
        # confirmed at step 4, +5: stops at 9; the run is at step 6
        assert "stop transition+5: 3 steps left (step 9)" in _cost_text(app)
        cells = RunsTable.cells(app.view.run)
        assert cells[-1].plain == "3 st"
        assert re.search(r"\b3 st\b", screen_text(app).splitlines()[1])  # in the runs list, at 80 columns
        await pilot.press("p")
        await settle(app, pilot)
        assert isinstance(app.screen, PolicyDialog)
        for key in ("end", "ctrl+u", "8", "tab", "end", "ctrl+u", "0", "full_stop", "5", "enter"):
            await pilot.press(key)
        await settle(app, pilot)
        assert not isinstance(app.screen, PolicyDialog)
        [change] = [e for e in rd.read_events() if e["event"] == "policy_changed" and e["by"] == "cockpit"]
        assert (change["after_transition"], change["budget_usd"]) == (8, 0.5)
        app.refresh_data()
        await settle(app, pilot)
        assert "stop transition+8, budget $0.50: 6 steps left (step 12)" in _cost_text(app)
        # a bad value is said in the dialog, and nothing is recorded
        await pilot.press("p")
        await settle(app, pilot)
        for key in ("end", "ctrl+u", *"soon", "enter"):
            await pilot.press(key)
        await settle(app, pilot)
        assert isinstance(app.screen, PolicyDialog)
        assert "after-transition: expected a number of steps 0..100000 or off" in screen_text(app)
        await pilot.press("escape")
        await settle(app, pilot)
        assert len([e for e in rd.read_events() if e["event"] == "policy_changed"]) == 2


@pytest.mark.anyio
async def test_the_stop_the_saved_dollars_the_evaluations_and_the_pick(home, tiny_run):
    rd = _copy(tiny_run, home)
    lifecycle.set_policy(home, rd.run_id, by="test", after_transition=2)
    rd.event("stopped", step=6, by="after_transition", reason="2 steps after the phase transition at step 4")
    for ck, score in ((4, 0.7), (5, 0.75), ("base", 0.6)):
        eid = f"e{ck}"
        rd.event("eval_queued", eval_id=eid, checkpoint=ck, task="arith", tasks=["arith"], gpus=[], why="transition")
        rd.event("eval_finished", eval_id=eid, checkpoint=ck, task="arith", score=score,
                 metric="extractive_match", scores={"arith": score}, gpus=[])
    app = make_app(home, run=rd.run_id)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        run = app.view.run
        assert run["stopped_by"]["by"] == "after_transition" and run["saved_usd"] > 0
        text = _cost_text(app)
        assert "stopped at 6 by transition+2" in text and "evals 3/3" in text
        assert re.search(r"saved \d\.\d\d¢", text), text
        # the pick is the better of the two around the marker; beside it the best of all
        assert "evals 3/3: pick 5 75.0 (best)" in text
        await pilot.press("2")
        await settle(app, pilot)
        rows = {r["step"]: r for r in app.view.checkpoints}
        assert rows[4]["snapshot"] and rows[5]["snapshot"] and not rows[3]["snapshot"]


@pytest.mark.extended
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_in_tmux_a_keyboard_user_stops_a_live_run_at_its_transition(home, tiny_model, tiny_cache):
    """The real cockpit at 80x24 on a real tiny run: the policy and its countdown, a change of it by
    keyboard, the stop, the automatic evaluations and the saved dollars."""
    sock = f"tina-policy-{os.getpid()}"
    _cockpit(sock, home, tiny_cache)
    try:
        _wait_pane(sock, lambda t: "n new" in t, 60, "the cockpit")
        # a policy that would never stop it before stop_at_step: the user brings it in
        out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "run",
                              str(ROOT / "recipes" / "tiny.yaml"), "--detach", "--name", "pol",
                              "--set", "stop.after_transition=200", "--set", "stop_at_step=150"],
                             cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        [rd] = list_run_dirs(home)
        # the policy on the money line, what it waits for there and in the runs list's stop column
        _wait_pane(sock, lambda t: "stop transition+200: awaiting the marker" in t and "marker?" in t, 120,
                   "the policy and its countdown")
        _tmux(sock, "send-keys", "-t", "tui", "p")
        _wait_pane(sock, lambda t: "Stop policy of pol" in t, 30, "the policy dialog")
        for key in ("C-e", "C-u", "3"):  # to the end, clear what is there, type the new value
            _tmux(sock, "send-keys", "-t", "tui", key)
            time.sleep(0.3)
        _wait_pane(sock, lambda t: re.search(r"▎?\s*3\s", t.split("stop N steps after")[-1]) is not None, 10, "the 3 typed")
        _tmux(sock, "send-keys", "-t", "tui", "Enter")
        _wait_pane(sock, lambda t: "stop policy now" in t, 30, "the change applied")
        changed = [e for e in rd.read_events() if e["event"] == "policy_changed"]
        assert [(e["by"], e["after_transition"]) for e in changed] == [("cockpit", 3)]
        text = _wait_pane(sock, lambda t: "stopped at" in t and "by transition+3" in t, 400, "the stop")
        stopped = next(e for e in rd.read_events() if e["event"] == "stopped")
        confirmed = [e for e in rd.read_events() if e["event"] == "transition" and e["status"] == "confirmed"][-1]
        # 3 steps after the confirmation, or at once if the change came later than that (plus the step in flight)
        at_change = max(r["step"] for r in iter_jsonl(rd.metrics) if r.get("ts", 0) <= changed[0]["ts"])
        assert stopped["by"] == "after_transition"
        assert stopped["step"] <= max(confirmed["detected_at"] + 3, at_change + 1) + 1
        text = _wait_pane(sock, lambda t: "evals 3/3: pick" in t, 400, "the automatic evaluations")
        assert re.search(r"saved \d+\.\d\d¢", text), text
        assert any(re.match(r"\s*pol\s+stopped", ln) for ln in text.splitlines()), text
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
        for rd in list_run_dirs(home):
            ev_queue.cancel_eval(home, rd.run_id)
            if runstate.liveness(rd).state in ("running", "stopping"):
                lifecycle.stop_run(home, rd.run_id, wait=True)
