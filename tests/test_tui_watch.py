"""The cockpit on someone else's run: its own reward names charted, the marker with its confidence
and why, and `w` choosing what is watched, recorded in the run directory and judged again."""

from __future__ import annotations

import pytest
from textual.widgets import SelectionList

from tina_core.importer.readers import import_run
from tina_core.rundir import RunDir
from tina_tui.view import FORMAT
from tina_tui.screens.watch_chooser import WatchChooser

from test_tui_support import FROZEN, make_app, screen_text, settle
from test_watch import curve, wobble

pytestmark = pytest.mark.anyio
STRICT = "rewards/strict_format_reward_func/mean"
CORRECT = "rewards/correctness_reward_func/mean"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def imported(tmp_path):
    """A notebook's progress table: strict format jumps at 90, correctness at 40."""
    src = tmp_path / "notebook-table.csv"
    strict, correct = curve(150, 90, 0.0, 0.4, 0.04), curve(150, 40, 0.1, 1.5, 0.2)
    rows = ["Step,Training Loss,reward,completion_length,rewards / strict_format_reward_func,"
            "rewards / correctness_reward_func"]
    rows += [f"{s},0.0,{a + c:.4f},{180 + 10 * wobble(s):.2f},{a:.4f},{c:.4f}" for (s, a), (_, c) in zip(strict, correct)]
    src.write_text("\n".join(rows) + "\n")
    home = tmp_path / "home"
    return home, import_run(home, src, name="nb")


async def test_w_chooses_the_watched_signals_and_the_marker_is_judged_again(imported):
    home, rd = imported
    app = make_app(home, run=rd.run_id, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        view = app.view
        assert view.chart_keys[FORMAT] == STRICT and view.series[FORMAT]  # the run's own format reward
        assert "confirmed @ 90 strict_format_reward_func up" in screen_text(app)
        await pilot.press("w")
        await settle(app, pilot)
        chooser = app.screen
        assert isinstance(chooser, WatchChooser)
        text = screen_text(app)
        assert "watching strict_format_reward_func" in text and "correctness_reward_func" in text
        options = chooser.query_one(SelectionList)
        assert list(options.selected) == [STRICT]
        options.deselect(STRICT)
        options.select(CORRECT)
        await pilot.press("enter")
        await settle(app, pilot)
        assert not isinstance(app.screen, WatchChooser)
        [ev] = [e for e in RunDir(rd.path).read_events() if e["event"] == "watch_changed"]
        assert ev["signals"] == [CORRECT] and ev["by"] == "cockpit"
        await settle(app, pilot)
        app.refresh_data()
        await settle(app, pilot)
        assert app.view.phase["signal"] == CORRECT and abs(app.view.phase["step"] - 40) <= 3
        assert "chosen by the user (cockpit)" in " ".join(app.view.run["watch"]["candidates"][0]["reason"].split())
        # and back to the automatic choice with `a`
        await pilot.press("w")
        await settle(app, pilot)
        await pilot.press("a")
        await settle(app, pilot)
        app.refresh_data()
        await settle(app, pilot)
        assert app.view.phase["signal"] == STRICT and app.view.run["watch"]["source"] == "auto"
