"""SVG snapshots of the cockpit's main screens at 80x24 (tmux over SSH) and 160x48, on a fixed
synthetic workspace and a frozen clock. Update with `pytest --snapshot-update` after a deliberate
visual change and review the SVGs."""

from __future__ import annotations

import pytest

import tina_tui.collector

from tina_core.rundir import find_run

from tina_tui.demo import SyntheticRun

from test_tui_support import FROZEN, make_app, settle, workspace

SIZES = [(80, 24), (160, 48)]


@pytest.fixture(autouse=True)
def _whole_frames(monkeypatch):
    # On a slow machine a refresh describes only the runs its time budget allows and fills in the rest
    # later; a snapshot must not depend on machine speed, so every refresh here describes every run.
    monkeypatch.setattr(tina_tui.collector, "REFRESH_BUDGET_S", float("inf"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    # A fixed path: the workspace path appears nowhere on screen, but keep runs identical anyway.
    home = workspace(tmp_path_factory.mktemp("snap") / "home")
    # A run training right now (its heartbeat names this process), 90 of 150 steps in at "now",
    # past its phase transition: the rate, the projection and the ETA tick on screen.
    SyntheticRun("live-20260110-000000-f7a8", name="open-rs2-live", steps=90, stop_at_step=150, max_steps=300,
                 save_steps=25, transition=60, state="running", seed=4, start_ts=FROZEN - 90 * 30.0).write(home)
    return home


def _app(home, run="open-rs2"):
    return make_app(home, run=find_run(home, run).run_id, clock=lambda: FROZEN)


async def _settled(pilot):
    await settle(pilot.app, pilot)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen,keys", [
    ("charts", []),
    ("checkpoints", ["2"]),
    ("log", ["3"]),
    ("gpu", ["4"]),
    ("detail", ["d", "left", "left", "left"]),
    ("detail_raw", ["j", "d", "s"]),
    ("help", ["question_mark"]),
])
def test_screens(snap_compare, home, size, screen, keys):
    assert snap_compare(_app(home), press=keys, terminal_size=size, run_before=_settled)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu_run(snap_compare, home, size):
    assert snap_compare(_app(home, "tiny"), terminal_size=size, run_before=_settled)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_live_run(snap_compare, home, size):
    assert snap_compare(_app(home, "open-rs2-live"), terminal_size=size, run_before=_settled)


async def _open_dialog(pilot, *keys):
    await _settled(pilot)
    await pilot.press(*keys)
    await _settled(pilot)


@pytest.mark.parametrize("dialog,keys", [
    ("recipe_picker", ["n"]),
    ("task_chooser", ["2", "e"]),
    ("stop_confirm", ["s"]),
])
def test_dialogs(snap_compare, home, dialog, keys):
    run = "open-rs2-live" if dialog == "stop_confirm" else "open-rs2"
    assert snap_compare(_app(home, run), terminal_size=(80, 24), run_before=lambda p: _open_dialog(p, *keys))


def test_empty_workspace(snap_compare, tmp_path):
    assert snap_compare(make_app(tmp_path / "empty", clock=lambda: FROZEN), terminal_size=(80, 24),
                        run_before=_settled)
