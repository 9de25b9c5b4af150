"""The cockpit on real runs: following a real tiny training run live through Pilot, and the real
`tina-tui` driven in tmux as a person would (recipe picker -> run -> marker -> evaluation)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tina_core.evaluate import queue as ev_queue
from tina_core.supervise import lifecycle
from tina_core import runstate
from tina_core.rundir import list_run_dirs

from test_tui_support import make_app, screen_text, settle

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_follows_a_real_tiny_run_live(home, tiny_model):

    rd = lifecycle.start_run(home, ROOT / "recipes" / "tiny.yaml", name="live",
                              overrides=("grpo.max_steps=36", "grpo.save_steps=12", "stop_at_step=36"))
    try:
        # A tiny step takes ~0.1 s: 36 of them give a few seconds of training to watch.
        app = make_app(home, refresh_s=0.25)
        seen_states, seen_steps = set(), []
        async with app.run_test(size=(80, 24)) as pilot:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                await pilot.pause(0.25)
                view = app.view
                if view is None:
                    continue
                seen_states.add(view.run["state"])
                if view.run.get("step"):
                    seen_steps.append(view.run["step"])
                if view.run["state"] in ("finished", "failed", "crashed"):
                    break
            await settle(app, pilot)
            view = app.view
            assert view.run["state"] == "finished", rd.train_log.read_text()[-2000:]
            assert "running" in seen_states
            assert len(set(seen_steps)) >= 2 and seen_steps == sorted(seen_steps)  # it moved while we watched
            assert [s for s, _ in view.series["rewards/format_reward/mean"]][-1] == 36
            steps = [c["step"] for c in view.checkpoints]
            assert steps[0] == "base" and {12, 24, 36} <= set(steps[1:])  # the base model first, then the grid
            # and whatever a phase transition brought: the snapshots pinned around it, the checkpoint it asked for
            events = rd.read_events()
            pinned = {e["step"] for e in events if e["event"] == "checkpoint_pinned"}
            asked = set(rd.checkpoint_steps()) if any(e["event"] == "checkpoint_requested" for e in events) else set()
            assert set(steps[1:]) - {12, 24, 36} <= pinned | asked
            assert any("live: finished" in n.message for n in app._notifications)
            text = screen_text(app)
            assert "finished" in text and "36/36" in text
            await pilot.press("3")
            await pilot.pause()
            assert app.query_one("#log-tail").line_count > 0
    finally:
        if runstate.liveness(rd).state in ("running", "stopping"):
            lifecycle.stop_run(home, rd.run_id, wait=True)


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, check=True).stdout


def _wait_pane(sock: str, pred, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _tmux(sock, "capture-pane", "-p", "-t", "tui")
        if pred(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")


def _cockpit(sock: str, home: Path, tiny_cache: Path) -> None:
    """The real `tina-tui` in a new tmux session at 80x24 with TERM=screen, as a default tmux gives
    it: an 8/16-colour terminal."""
    exe = Path(sys.executable).with_name("tina-tui")
    cmd = f"env TINA_HOME={home} TINA_CACHE={tiny_cache} HF_HUB_OFFLINE=1 TERM=screen {exe} --home {home}"
    _tmux(sock, "new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", "-c", str(ROOT), cmd)


MARKER_LINE = re.compile(r"(tentative|confirmed) @ \d+")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_app_in_tmux_from_recipe_to_marker_to_evaluation(home, tiny_model, tiny_cache):

    sock = f"tina-test-{os.getpid()}"
    _cockpit(sock, home, tiny_cache)
    try:
        _wait_pane(sock, lambda t: "n new" in t, 30, "the cockpit")
        _tmux(sock, "send-keys", "-t", "tui", "n")
        _wait_pane(sock, lambda t: "recipes/tiny.yaml" in t, 30, "the recipe picker")
        _tmux(sock, "send-keys", "-t", "tui", "Enter")
        _wait_pane(sock, lambda t: "running" in t, 120, "the run to start")
        (run,) = list_run_dirs(home)
        # Lose the cockpit the hard way (a dropped SSH connection): the run goes on without it.
        os.kill(int(_tmux(sock, "display-message", "-p", "-t", "tui", "#{pane_pid}")), signal.SIGKILL)
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
        assert runstate.liveness(run).state == "running"
        steps_then = len(run.metrics.read_text().splitlines()) if run.metrics.exists() else 0
        time.sleep(2)
        _cockpit(sock, home, tiny_cache)
        _wait_pane(sock, lambda t: "n new" in t, 30, "the cockpit again")
        # The tiny model learns the format within its 100 steps: the marker shows in the runs list
        # and under the charts, for steps trained while no cockpit was open too.
        _wait_pane(sock, lambda t: MARKER_LINE.search(t) and any(
            m in ln for ln in t.splitlines() if "running" in ln or "finished" in ln for m in ("│ ", "┆ ")),
            400, "the phase marker")
        assert len(run.metrics.read_text().splitlines()) > steps_then
        # 8/16-colour terminal: only the terminal's own palette, no 256-colour or RGB codes
        coloured = _tmux(sock, "capture-pane", "-e", "-p", "-t", "tui")
        assert "\x1b[" in coloured and not re.search(r"\x1b\[[0-9;]*[34]8;[25];", coloured), coloured[:2000]
        _tmux(sock, "send-keys", "-t", "tui", "2")
        # E asks for the recommended checkpoint: wait until there is one (a tentative marker may
        # have none yet, "none recommended yet"), however far training got under this machine's load
        _wait_pane(sock, lambda t: "$ at" in t and re.search(r"\* \d+ recommended", t), 240,
                   "the checkpoints tab with a recommended checkpoint")
        _tmux(sock, "send-keys", "-t", "tui", "E")
        _wait_pane(sock, lambda t: "arith" in t and "enter queues" in t, 30, "the task chooser")
        _tmux(sock, "send-keys", "-t", "tui", "Enter")
        # what the key did is in the run's events (its notice comes and goes: never waited for)
        deadline = time.monotonic() + 60
        while not (queued := [e for e in run.read_events() if e["event"] == "eval_queued"]):
            assert time.monotonic() < deadline, "the evaluation was never queued; screen:\n" + _tmux(
                sock, "capture-pane", "-p", "-t", "tui")
            time.sleep(0.2)
        assert queued[0]["task"] == "arith"
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
        for rd in list_run_dirs(home):
            try:
                ev_queue.cancel_eval(home, rd.run_id)
            except Exception:
                pass
            if runstate.liveness(rd).state in ("running", "stopping"):
                lifecycle.stop_run(home, rd.run_id, wait=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_an_alert_rings_the_bell_in_the_tmux_pane(home, tiny_cache):
    from test_tui_support import workspace

    from tina_core.rundir import find_run

    workspace(home)
    sock = f"tina-bell-{os.getpid()}"
    _cockpit(sock, home, tiny_cache)
    try:
        # the runs are listed: the cockpit has read their events so far (history, not news)
        _wait_pane(sock, lambda t: "n new" in t and "open-rs3" in t, 90, "the cockpit")
        assert _tmux(sock, "display-message", "-p", "-t", "tui", "#{window_bell_flag}").strip() == "0"
        find_run(home, "open-rs3").event("failed", reason="gave up after 3 restarts; last attempt exit code 1")
        _wait_pane(sock, lambda t: "open-rs3: failed: gave up" in t, 30, "the notice")
        deadline = time.monotonic() + 30
        while _tmux(sock, "display-message", "-p", "-t", "tui", "#{window_bell_flag}").strip() != "1":
            assert time.monotonic() < deadline, "the bell never reached the tmux window"
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


@pytest.mark.extended
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_two_runs_marked_by_keyboard_are_both_in_the_chart(home, tiny_cache):
    from test_tui_support import ablation_workspace

    ablation_workspace(home)
    sock = f"tina-mark-{os.getpid()}"
    _cockpit(sock, home, tiny_cache)
    try:
        _wait_pane(sock, lambda t: "n new" in t and "rs2-r16" in t, 90, "the cockpit")
        # the newest run is in view: mark it, go up one, mark that one
        for key in ("Space", "Up", "Space"):
            _tmux(sock, "send-keys", "-t", "tui", key)
            time.sleep(0.3)
        text = _wait_pane(sock, lambda t: "by step" in t and "* rs2-r16 @" in t and "+ rs2-lr2e-6 @" in t,
                          30, "the overlay of the two marked runs")
        lines = text.splitlines()
        top = next(i for i, ln in enumerate(lines) if "by step" in ln)
        plot = lines[top + 1:top + 9]
        assert any("*" in ln for ln in plot) and any("+" in ln for ln in plot), text
        assert re.match(r"^ \* rs2-r16 ", lines[3]) and re.match(r"^ \+ rs2-lr2e-6 ", lines[2]), text
        _tmux(sock, "send-keys", "-t", "tui", "a")
        _wait_pane(sock, lambda t: "by transition" in t and "0 = each run's transition" in t, 30, "the alignment")
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
