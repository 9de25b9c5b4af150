"""Shared helpers for the cockpit's tests: a synthetic workspace and a way to wait for the app's
refresh worker without sleeping."""

from __future__ import annotations

from pathlib import Path

from tina_tui.app import TinaApp
from tina_tui.demo import EPOCH_START, demo_runs, make_workspace

FROZEN = EPOCH_START + 10 * 86400  # a fixed "now" for anything time-dependent on screen


def workspace(home: Path, steps: int = 150) -> Path:
    make_workspace(home, demo_runs(steps))
    return home


def make_app(home: Path, **kw) -> TinaApp:
    kw.setdefault("refresh_s", 0)  # tests refresh explicitly
    return TinaApp(home, **kw)


async def settle(app: TinaApp, pilot, rounds: int = 200) -> None:
    """Wait until no worker runs and no refresh is pending (refreshes chain, so loop)."""
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not app.refreshing and not any(w.is_running for w in app.workers):
            return
    raise AssertionError("the app did not settle")


async def refreshed(app: TinaApp, pilot) -> None:
    """Ask for a refresh and wait for its snapshot to be applied."""
    before = app.refreshes
    app.refresh_data()
    await settle(app, pilot)
    assert app.refreshes > before


def screen_text(app: TinaApp) -> str:
    """The screen as plain text, one line per row."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)
