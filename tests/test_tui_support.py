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


def ablation_workspace(home: Path) -> Path:
    """Three Open-RS2 runs of a small ablation (learning rate; LoRA rank and alpha) with their real
    recipe snapshots, turning at different steps, each recommended checkpoint and the base model
    evaluated."""
    from tina_tui.demo import SyntheticRun

    base = {"aime24": 0.3, "math_500": 0.78}
    for run_id, name, turn, seed, sets, gain in [
        ("rs2-20260101-000000-aaaa", "rs2", 60, 11, (), 0.05),
        ("rs2-lr-20260102-000000-bbbb", "rs2-lr2e-6", 45, 12, ("grpo.learning_rate=2e-6",), 0.03),
        ("rs2-r16-20260103-000000-cccc", "rs2-r16", 85, 13, ("lora.r=16", "lora.lora_alpha=64"), 0.07),
    ]:
        SyntheticRun(run_id, name=name, steps=150, stop_at_step=150, max_steps=300, save_steps=25,
                     dataset_size=7000, transition=turn, seed=seed, overrides=sets, base_evals=base,
                     evals={s: {t: round(v + gain * s / 50, 3) for t, v in base.items()} for s in (25, 50, 75)},
                     start_ts=EPOCH_START + seed * 3600).write(home)
    return home
