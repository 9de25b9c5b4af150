"""The cockpit on hostile runs, driven with Pilot: names, reward keys, reasons and log lines holding
terminal escapes are shown written out on every screen (the screen read back as the terminal would
receive it), never as markup; and a live marker that moves leaves one notice, not one per move."""

from __future__ import annotations

import pytest

from test_hostile import CLEAR, CLIPBOARD, CONTROL, TITLE, hostile_csv
from test_tui_support import make_app, refreshed, screen_text, settle
from tina_core.events import Kind
from tina_core.importer.readers import import_run
from tina_tui.demo import SyntheticRun
from tina_tui.screens.detail import DetailScreen

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


def _clean(app, where: str) -> str:
    text = screen_text(app)
    assert not any(c in text for c in CONTROL), f"{where}: {text!r}"
    return text


async def test_escapes_in_names_keys_reasons_and_logs_are_shown_written_out(tmp_path):
    """Attack 1 in the cockpit: an imported run's reward key and name set the terminal's title,
    wrote its clipboard, and `ESC [2J` blanked the cockpit until restart."""
    home = tmp_path / "home"
    imported = import_run(home, hostile_csv(tmp_path / "export.csv"), name=f"imp{TITLE}orted[/bold]")
    trained = SyntheticRun("trained-1", name=f"tr{CLIPBOARD}ained[b]", steps=60, stop_at_step=60, transition=30,
                           state="failed", evals={30: {f"ar{CLEAR}ith": 0.5}}).write(home)
    with trained.train_log.open("a") as f:
        f.write(f"a line the trainer printed {TITLE}{CLEAR}\n")
    app = make_app(home, run=imported.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert "\\x1b]0;pwned\\x07" in _clean(app, "runs list")  # the name, written out
        text = _clean(app, "charts")  # the format chart draws the hostile reward: its label and marker
        assert "confirmed @ 30" in text
        for tab in ("2", "3", "4"):
            await pilot.press(tab)
            await pilot.pause()
            _clean(app, f"tab {tab}")
        await pilot.press("1", "enter")  # the format reward's full view: its key in the title
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen)
        assert "\\x1b[2J" in _clean(app, "detail view")
        await pilot.press("escape", "w")  # what the marker watches, and why
        await pilot.pause()
        _clean(app, "watch chooser")
        await pilot.press("escape")
        # the trained run: its failure reason, its evaluation's task, its log
        trained.event(Kind.EVAL_FAILED, eval_id="e1", checkpoint=30, task=f"ar{CLEAR}ith", gpus=[], pid=None,
                      reason=f"lighteval crashed {TITLE}")
        app.selected = trained.run_id
        await refreshed(app, pilot)
        for tab in ("1", "2", "3"):
            await pilot.press(tab)
            await pilot.pause()
            text = _clean(app, f"trained run, tab {tab}")
        assert "a line the trainer printed \\x1b]0;pwned\\x07\\x1b[2J" in text
        assert notes(app) and not any(c in m for m in notes(app) for c in CONTROL)
        assert any("lighteval crashed \\x1b]0;pwned\\x07" in m for m in notes(app))
        # both runs marked: the overlay's legend, what differs (D), the ablation table (T)
        await pilot.press("1", "tab", "space", "down", "space")
        await pilot.pause()
        await refreshed(app, pilot)
        _clean(app, "overlay")
        for key in ("D", "T"):
            await pilot.press(key)
            await settle(app, pilot)
            await pilot.pause(0.2)
            _clean(app, key)
            await pilot.press("escape")
        await pilot.press("s")  # the stop dialog names the run: text, never markup
        await pilot.pause()
        _clean(app, "stop dialog")


async def test_a_moving_marker_leaves_one_notice(tmp_path):
    """About seven transition notices piled up over the charts while a live marker moved: each
    change of a run's marker replaces the notice before it."""
    home = tmp_path / "home"
    rd = SyntheticRun("moving-1", name="moving", steps=60, stop_at_step=200, transition=None,
                      state="finished").write(home)
    app = make_app(home, run=rd.run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        for i, (status, step) in enumerate([("tentative", 20), ("rejected", 20), ("tentative", 31),
                                            ("confirmed", 31), ("rejected", 31), ("tentative", 44),
                                            ("confirmed", 45)]):
            rd.event(Kind.TRANSITION, status=status, step=step, signal="rewards/format_reward/mean",
                     detected_at=step + 5)
            if i % 2:  # some moves land in one refresh, some in the next
                await refreshed(app, pilot)
        await refreshed(app, pilot)
        said = [m for m in notes(app) if "phase transition" in m]
        assert said == ["moving: phase transition confirmed at step 45 (rewards/format_reward/mean)"]
