"""Comparing runs in the cockpit: marks (space, x), the overlay of the marked runs on the charts and
in the detail view aligned by step or by transition (a), what differs (D) and the ablation table (T),
through the real app with Pilot and as SVG snapshots at 80x24 and 160x48."""

from __future__ import annotations

import pytest

import tina_tui.collector
from tina_core.recipe.diff import differing, run_side
from tina_core.report.table import ablation_cells, build_report
from tina_core.rundir import find_run
from tina_tui.demo import SyntheticRun
from tina_tui.plot import MARK_GLYPHS, MAX_OVERLAY
from tina_tui.screens.ablation import AblationScreen
from tina_tui.screens.detail import DetailScreen, OverlayPlot
from tina_tui.screens.diff import DiffScreen
from tina_tui.widgets.charts import ChartsPanel
from tina_tui.widgets.runs_list import RunsTable

from test_tui_support import FROZEN, ablation_workspace, make_app, screen_text, settle

pytestmark = pytest.mark.anyio
SIZES = [(80, 24), (160, 48)]
AXIS = ["lora.r", "lora.lora_alpha", "grpo.learning_rate"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def _whole_frames(monkeypatch):
    # every refresh describes every run, whatever the machine's speed (as in test_tui_snapshots)
    monkeypatch.setattr(tina_tui.collector, "REFRESH_BUDGET_S", float("inf"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three Open-RS2 runs of an ablation (lr; LoRA rank): rs2, rs2-lr2e-6, rs2-r16."""
    return ablation_workspace(tmp_path_factory.mktemp("study") / "home")


def _app(home, run="rs2-r16"):
    return make_app(home, run=find_run(home, run).run_id, clock=lambda: FROZEN)


async def _mark_three(pilot) -> None:
    """space on rs2-r16 (the newest, in view), k, space on rs2-lr2e-6, k, space on rs2."""
    await settle(pilot.app, pilot)
    for key in ("space", "k", "space", "k", "space"):
        await pilot.press(key)
        await settle(pilot.app, pilot)


def _chart_text(app) -> str:
    return "\n".join("".join(t for t, _ in parts) for parts in app.screen.query_one(ChartsPanel).lines())


async def test_marked_runs_are_overlaid_in_their_own_glyphs_and_aligned_both_ways(study):
    app = _app(study)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert app.snapshot.overlay is None and "format" in _chart_text(app)  # one run: its sparklines
        await pilot.press("space")
        await settle(app, pilot)
        assert app.snapshot.overlay is None  # one mark is no overlay yet
        await pilot.press("x")
        await _mark_three(pilot)
        ids = {n: find_run(study, n).run_id for n in ("rs2", "rs2-lr2e-6", "rs2-r16")}
        assert app.marks == {ids["rs2-r16"]: 0, ids["rs2-lr2e-6"]: 1, ids["rs2"]: 2}
        overlay = app.snapshot.overlay
        assert [r.name for r in overlay.runs] == ["rs2-r16", "rs2-lr2e-6", "rs2"]
        phase = {r["run_id"]: r["phase_transition"] for r in app.snapshot.runs}
        for run in overlay.runs:  # the run's own series and transition
            assert len(run.series["rewards/format_reward/mean"]) == 150
            assert run.transition == phase[run.run_id]["step"] and phase[run.run_id]["status"] == "confirmed"
        # the runs list shows each mark's glyph before the name
        table = app.screen.query_one(RunsTable)
        rows = {ln.split()[1]: ln.split()[0] for ln in screen_text(app).splitlines()[1:4]}
        assert rows == {"rs2-r16": MARK_GLYPHS[0], "rs2-lr2e-6": MARK_GLYPHS[1], "rs2": MARK_GLYPHS[2]}
        assert table.row_count == 3
        text = _chart_text(app)
        plot = text.splitlines()[1:-4]
        for i, run in enumerate(overlay.runs):  # every run drawn in its own glyph, legend beside it
            assert any(MARK_GLYPHS[i] in ln for ln in plot), run.name
            assert f"{MARK_GLYPHS[i]} {run.name} @{run.transition}" in text
        assert "by step" in text and "step 0" in text
        # the marker row has each run's glyph in the column of its transition
        marker_row = text.splitlines()[-3]
        assert sorted(c for c in marker_row if c != " ") == sorted(MARK_GLYPHS[:3])
        await pilot.press("a")
        await pilot.pause()
        text = _chart_text(app)
        assert app.align == "transition" and "by transition" in text and "0 = each run's transition" in text
        # aligned on their transitions: each run's steps 1..150 sit at step - its transition
        lo, hi = min(1 - r.transition for r in overlay.runs), max(150 - r.transition for r in overlay.runs)
        assert text.splitlines()[-2].split()[0] == f"{lo:+d}" and text.splitlines()[-2].split()[-1] == f"{hi:+d}"
        await pilot.press("a")
        await pilot.pause()
        assert app.align == "step"
        await pilot.press("x")
        await settle(app, pilot)
        assert app.marks == {} and app.snapshot.overlay is None and "by step" not in _chart_text(app)


async def test_an_overlay_holds_six_runs_at_most(tmp_path):
    home = tmp_path / "h"
    for i in range(MAX_OVERLAY + 1):
        SyntheticRun(f"run{i}-20260101-000000-000{i}", name=f"run{i}", steps=40, stop_at_step=40, save_steps=20,
                     transition=20, seed=i).write(home)
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        for _ in range(MAX_OVERLAY + 1):
            await pilot.press("space", "k")
            await settle(app, pilot)
        assert len(app.marks) == MAX_OVERLAY and sorted(app.marks.values()) == list(range(MAX_OVERLAY))
        assert any("6 runs at most" in n.message for n in app._notifications)
        # six at 80x24: every one drawn and named, the legend on two lines
        text = _chart_text(app)
        assert all(f"{g} run" in text for g in MARK_GLYPHS)
        # unmarking one frees its glyph for the next run marked; the others keep theirs
        first = next(iter(app.marks))
        app.toggle_mark(first)
        kept = dict(app.marks)
        app.toggle_mark(app.selected if app.selected not in app.marks else first)
        assert {k: v for k, v in app.marks.items() if k in kept} == kept


async def test_d_shows_exactly_the_keys_that_differ(study):
    app = _app(study)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("D")
        await pilot.pause()
        assert not isinstance(app.screen, DiffScreen)
        assert any("mark two runs" in n.message for n in app._notifications)
        await _mark_three(pilot)
        await pilot.press("D")
        await _until(pilot, lambda: _loaded(app), "diff table")
        assert isinstance(app.screen, DiffScreen)
        table = app.screen.query_one("#compare-table")
        keys = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        sides = [run_side(find_run(study, rid)) for rid in app.marks]
        assert keys == [d.key for d in differing([s.recipe for s in sides])] and sorted(keys) == sorted(AXIS)
        assert [str(c.label) for c in table.columns.values()][1:] == [
            f"{MARK_GLYPHS[i]} {n}" for i, n in enumerate(["rs2-r16", "rs2-lr2e-6", "rs2"])]
        rank = table.get_row_at(keys.index("lora.r"))
        assert [str(c) for c in rank[1:]] == ["16", "32", "32"]
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DiffScreen)


async def test_t_shows_the_ablation_table_of_the_marked_runs_or_of_all(study):
    app = _app(study)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("T")
        await _until(pilot, lambda: _loaded(app), "ablation table")
        assert isinstance(app.screen, AblationScreen)
        table = app.screen.query_one("#compare-table")
        assert table.row_count == len(AXIS) + 7 and len(table.columns) == 4  # every run, none marked
        await pilot.press("escape")
        await _mark_three(pilot)
        await pilot.press("T")
        await _until(pilot, lambda: _loaded(app), "ablation table")
        table = app.screen.query_one("#compare-table")
        # the same cells as `tina report` prints, one column per run
        head, rows = ablation_cells(build_report(study, list(app.marks))["ablation"])
        got = {str(table.get_row_at(i)[0]): [str(c) for c in table.get_row_at(i)[1:]] for i in range(table.row_count)}
        assert list(got) == head[1:]
        assert got == {h: [r[i] for r in rows] for i, h in enumerate(head) if i}
        assert got["lora.r"] == ["16", "32", "32"] and all(v.startswith("+") for v in got["vs base"])
        assert got["paper avg"] == ["50.60"] * 3
        assert "lora.r" in screen_text(app) and "transition" in screen_text(app)


async def test_the_detail_view_overlays_every_step_of_the_marked_runs(study):
    app = _app(study)
    async with app.run_test(size=(80, 24)) as pilot:
        await _mark_three(pilot)
        await pilot.press("d")
        await _until(pilot, lambda: _loaded(app), "every step of the marked runs")
        assert isinstance(app.screen, DetailScreen)
        plot = app.screen.query_one(OverlayPlot)
        assert plot.display and plot.overlay is app.snapshot.overlay
        assert all(len(r.detail) == 150 for r in plot.overlay.runs)  # every logged step
        assert "3 runs overlaid, by step" in screen_text(app)
        assert plot.cursor == 150
        await pilot.press("left", "left", "H")
        assert plot.cursor == 138
        values = {r.name: dict(r.detail)[138.0] for r in plot.overlay.runs}
        text = screen_text(app)
        for i, run in enumerate(plot.overlay.runs):  # the legend gives each run's value at the cursor
            assert f"{MARK_GLYPHS[i]} {run.name} {values[run.name]:.3f}" in text
        await pilot.press("a")
        await pilot.pause()
        assert "by transition" in screen_text(app) and "0 = each run's transition" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DetailScreen) and app.align == "transition"


# --- snapshots ----------------------------------------------------------------------------------------
async def _until(pilot, ready, what: str) -> None:
    """Pause until ``ready()`` (a screen's data comes from a worker, then a message), for 60 s at most."""
    for _ in range(600):
        await settle(pilot.app, pilot)
        if ready():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"no {what}")


def _loaded(app) -> bool:
    """The screen in view has all it will show: a table filled, a detail overlay with every step."""
    screen = app.screen
    if isinstance(screen, (DiffScreen, AblationScreen)):
        return screen.query_one("#compare-table").row_count > 0
    if isinstance(screen, DetailScreen):
        return screen.overlay is not None and all(r.detail for r in screen.overlay.runs)
    return app.snapshot is not None and app.snapshot.overlay is not None


async def _then(pilot, *keys):
    await _mark_three(pilot)
    for key in keys:
        await pilot.press(key)
        await settle(pilot.app, pilot)
    await _until(pilot, lambda: _loaded(pilot.app), "data on screen")
    pilot.app.clear_notifications()  # a toast's life depends on the machine's speed, the view does not
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("view,keys", [
    ("overlay_by_step", []),
    ("overlay_by_transition", ["a"]),
    ("diff", ["D"]),
    ("ablation", ["T"]),
    ("detail_overlay", ["d"]),
])
def test_compare_snapshots(snap_compare, study, size, view, keys):
    assert snap_compare(_app(study), terminal_size=size, run_before=lambda p: _then(p, *keys))
