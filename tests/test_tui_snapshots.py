"""SVG snapshots of the cockpit's main screens at 80x24 (tmux over SSH) and 160x48, on a fixed
synthetic workspace and a frozen clock. Update with `pytest --snapshot-update` after a deliberate
visual change and review the SVGs."""

from __future__ import annotations

import pytest

import tina_tui.data

from tina_core.rundir import find_run

from test_tui_support import FROZEN, make_app, settle, workspace

SIZES = [(80, 24), (160, 48)]


@pytest.fixture(autouse=True)
def _whole_frames(monkeypatch):
    # On a slow machine a refresh describes only the runs its time budget allows and fills in the rest
    # later; a snapshot must not depend on machine speed, so every refresh here describes every run.
    monkeypatch.setattr(tina_tui.data, "REFRESH_BUDGET_S", float("inf"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    # A fixed path: the workspace path appears nowhere on screen, but keep runs identical anyway.
    return workspace(tmp_path_factory.mktemp("snap") / "home")


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
