"""The cockpit driven through Textual's Pilot on a synthetic workspace: every binding and flow."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from textual.widgets import OptionList, SelectionList, TabbedContent

from tina_core.evaluate import queue as ev_queue
from tina_core.rundir import find_run
from tina_tui.actions import ACTIONS, key_label
from tina_tui.app import Refreshed, main
from tina_tui.view import CHARTS
from tina_tui.demo import SyntheticRun
from tina_tui.screens.confirm import ConfirmScreen
from tina_tui.screens.detail import DetailScreen, PlotView
from tina_tui.screens.help import HelpScreen
from tina_tui.screens.main import MainScreen
from tina_tui.screens.recipe_picker import RecipePicker
from tina_tui.screens.task_chooser import TaskChooser
from tina_tui.widgets.charts import ChartsPanel
from tina_tui.widgets.checkpoints import CheckpointsTable
from tina_tui.widgets.cost_bar import CostBar
from tina_tui.widgets.log_view import LogView
from tina_tui.widgets.runs_list import RunsTable

from test_tui_support import FROZEN, make_app, refreshed, screen_text, settle, workspace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def home(tmp_path):
    return workspace(tmp_path / "home")


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


async def test_opens_on_the_workspace_and_shows_what_happened_while_closed(home):
    messages = []
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
        await settle(app, pilot)
        snaps = [m.snapshot for m in messages if isinstance(m, Refreshed)]
        assert snaps and snaps[-1].error is None
        runs = app.query_one(RunsTable)
        assert runs.row_count == 3
        text = screen_text(app)
        # states, restarts and costs derive from the run directories alone
        assert "finished r1" in text and "stopped" in text and "failed" in text
        rs2 = next(r for r in snaps[-1].runs if r["name"] == "open-rs2")
        assert rs2["restarts"] == 1 and rs2["cost_usd"]["total"] > 0
        # the newest run is selected; its charts have data and the cost line shows its money
        view = app.view
        assert view.run["name"] == "tiny"
        assert view.series[CHARTS[0][0]], "format reward series is empty"
        assert "total $" in str(app.query_one(CostBar).render())


async def test_run_selection_by_keys(home):
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        order = [r["run_id"] for r in app.snapshot.runs]
        assert app.selected == order[-1]
        await pilot.press("left_square_bracket")
        await settle(app, pilot)
        assert app.selected == order[-2] and app.view.run_id == order[-2]
        await pilot.press("k")                      # runs table focused: k moves up
        await settle(app, pilot)
        assert app.view.run_id == order[0]
        await pilot.press("j", "right_square_bracket")
        await settle(app, pilot)
        assert app.view.run_id == order[2]
        await pilot.press("up")
        await settle(app, pilot)
        assert app.view.run_id == order[1]


async def test_open_on_a_given_run(home):
    rid = find_run(home, "open-rs2").run_id
    app = make_app(home, run=rid, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert app.view.run_id == rid
        assert app.query_one(RunsTable).selected_id == rid


def test_main_rejects_an_unknown_run(home, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--home", str(home), "--run", "no-such-run"])
    assert e.value.code == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


async def test_tab_keys_switch_and_focus(home):
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        tabs = app.query_one(TabbedContent)
        for key, name, widget in (("2", "checkpoints", CheckpointsTable), ("3", "log", LogView),
                                  ("4", "system", None), ("1", "charts", ChartsPanel)):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == name
            if widget is not None:
                assert isinstance(app.focused, widget)
        assert "GPU0" not in screen_text(app)
        await pilot.press("4")
        await pilot.pause()
        assert "CPU" in screen_text(app)           # the tiny run trains on the CPU


async def test_gpu_panel_shows_each_gpu(home):
    rid = find_run(home, "open-rs2").run_id
    app = make_app(home, run=rid, clock=lambda: FROZEN)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("4")
        await pilot.pause()
        text = screen_text(app)
        assert "GPU0" in text and "GPU1" in text and "util" in text and "mem" in text


async def test_charts_cursor_detail_view_and_its_keys(home):
    rid = find_run(home, "open-rs2").run_id
    app = make_app(home, run=rid, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        charts = app.query_one(ChartsPanel)
        await pilot.press("1", "j", "j", "k")
        assert charts.selected == 1
        await pilot.press("d")
        await pilot.pause()
        detail = app.screen
        assert isinstance(detail, DetailScreen) and detail.key == CHARTS[1][0]
        plot = detail.query_one(PlotView)
        n = len(plot.points)
        assert n > 10 and plot.cursor == n - 1      # cursor starts on the newest step
        await pilot.press("left", "left")
        assert plot.cursor == n - 3
        status = str(detail.query_one("#detail-status").render())
        assert f"step {int(plot.points[n - 3][0])}" in status and "raw" in status and "smoothed" in status
        await pilot.press("shift+left")
        assert plot.cursor == n - 13
        await pilot.press("right", "shift+right")
        assert plot.cursor == n - 2
        await pilot.press("home")
        assert plot.cursor == 0
        await pilot.press("end")
        assert plot.cursor == n - 1
        # smoothing: on by default, toggled, weight keys re-enable and change it
        assert plot.smoothed is not None
        await pilot.press("s")
        assert plot.smoothed is None and "raw" in str(detail.query_one("#detail-title").render())
        w = detail.weight
        await pilot.press("plus")
        assert detail.smoothing and detail.weight == pytest.approx(w + 0.05)
        await pilot.press("minus", "minus")
        assert detail.weight == pytest.approx(w - 0.05)
        # raw values are the store's; smoothing never changes them
        raw_before = list(plot.points)
        await pilot.press("s", "s")
        assert plot.points == raw_before
        await pilot.press("right_square_bracket")
        assert detail.key == CHARTS[2][0]
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert detail.key == CHARTS[0][0]
        # it stays live: a refresh while open updates it
        await refreshed(app, pilot)
        assert app.screen is detail
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        await pilot.press("enter")                  # enter on the charts opens the detail too
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("q")                      # q closes the detail, not the app
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


async def test_phase_marker_lines_up_under_every_sparkline(home):
    rid = find_run(home, "open-rs2").run_id
    app = make_app(home, run=rid, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        phase = app.view.phase
        assert phase and phase["status"] in ("tentative", "confirmed")
        mark = "│" if phase["status"] == "confirmed" else "┆"
        lines = screen_text(app).splitlines()
        cols = {ln.index(mark) for ln in lines if ln.strip() == mark}
        rows = [ln for ln in lines if ln.strip() == mark]
        assert len(rows) == len(CHARTS) and len(cols) == 1
        assert "tentative" in screen_text(app) and "confirmed" in screen_text(app)  # the legend


async def test_checkpoints_table_and_evaluation_keys(home):
    rd = find_run(home, "open-rs2")
    app = make_app(home, run=rd.run_id, clock=lambda: FROZEN)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("2")
        await pilot.pause()
        table = app.query_one(CheckpointsTable)
        assert table.row_count == 1 + len(rd.checkpoint_steps())     # the base model's row first
        text = screen_text(app)
        assert "aime24" in text and "avg" in text and "$ at" in text
        rec = app.view.pick["recommended"]
        best = app.view.pick["best_evaluated"]
        assert rec is not None and best is not None and rec != best
        # the note over the table says what * and + mean, and that they disagree
        assert f"* {rec} recommended" in text and f"+ {best} best evaluated" in text and "disagree" in text
        assert table.selected_step == rec           # the table opens on the recommended checkpoint
        await pilot.press("k", "k", "k")           # the top row is the base model's
        assert table.selected_step == "base"
        await pilot.press("e")
        await settle(app, pilot)
        assert isinstance(app.screen, TaskChooser) and app.screen.what == "the base model"
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("j", "j")
        assert table.selected_step == rd.checkpoint_steps()[1]
        # e: the selected checkpoint, through the task chooser
        await pilot.press("e")
        await settle(app, pilot)
        chooser = app.screen
        assert isinstance(chooser, TaskChooser)
        sel = chooser.query_one(SelectionList)
        assert set(sel.selected) == {"aime24", "aime25", "amc23", "math_500", "minerva", "gpqa:diamond"}
        await pilot.press("escape")                 # cancel queues nothing
        await pilot.pause()
        n_events = len(rd.read_events())
        await pilot.press("e")
        await settle(app, pilot)
        sel = app.screen.query_one(SelectionList)
        sel.deselect_all()
        sel.select("aime24")
        await pilot.press("enter")
        await settle(app, pilot)
        queued = [e for e in rd.read_events()[n_events:] if e["event"] == "eval_queued"]
        assert [(e["checkpoint"], e["task"]) for e in queued] == [(rd.checkpoint_steps()[1], "aime24")]
        assert any("queued 1 evaluation" in m for m in notes(app))
        # E: the recommended checkpoint; A: all of them
        await pilot.press("E")
        await settle(app, pilot)
        assert isinstance(app.screen, TaskChooser) and "recommended" in str(app.screen.what)
        app.screen.query_one(SelectionList).deselect_all()
        app.screen.query_one(SelectionList).select("amc23")
        await pilot.press("enter")
        await settle(app, pilot)
        await pilot.press("A")
        await settle(app, pilot)
        assert "all" in app.screen.what
        app.screen.query_one(SelectionList).deselect_all()
        await pilot.press("enter")                  # nothing chosen: it says so and stays open
        await pilot.pause()
        assert isinstance(app.screen, TaskChooser)
        app.screen.query_one(SelectionList).select("minerva")
        await pilot.press("enter")
        await settle(app, pilot)
        queued = [e for e in rd.read_events()[n_events:] if e["event"] == "eval_queued"]
        assert {e["task"] for e in queued} == {"aime24", "amc23", "minerva"}, "\n".join(notes(app))
        assert {e["checkpoint"] for e in queued if e["task"] == "minerva"} == set(rd.checkpoint_steps())

    ev_queue.cancel_eval(home, rd.run_id)


async def test_e_away_from_the_checkpoints_shows_them_first(home):
    rd = find_run(home, "open-rs2")
    app = make_app(home, run=rd.run_id, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("1", "e")                 # on the charts: no hidden row gets evaluated
        await settle(app, pilot)
        assert isinstance(app.screen, MainScreen)
        assert app.query_one(TabbedContent).active == "checkpoints"
        assert app.query_one(CheckpointsTable).selected_step == app.view.pick["recommended"]
        assert any("choose a checkpoint" in m for m in notes(app))
        await pilot.press("enter")                  # enter on a checkpoint row evaluates it
        await settle(app, pilot)
        assert isinstance(app.screen, TaskChooser) and str(app.view.pick["recommended"]) in app.screen.what


async def test_detail_view_has_every_step_and_the_money(tmp_path):
    home = tmp_path / "h"
    SyntheticRun("long-run", name="long", steps=1000, stop_at_step=1000, max_steps=2000, save_steps=250,
                 transition=400).write(home)
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert len(app.view.series[CHARTS[0][0]]) < 1000     # the charts get a summary
        await pilot.press("enter")                  # enter on the runs list opens the plot
        await settle(app, pilot)
        detail = app.screen
        assert isinstance(detail, DetailScreen)
        plot = detail.query_one(PlotView)
        assert [int(s) for s, _ in plot.points] == list(range(1, 1001))
        await pilot.press("left")
        assert "step 999" in str(detail.query_one("#detail-status").render())
        assert "total $" in str(detail.query_one(CostBar).render())


async def test_eval_of_a_run_without_checkpoints_says_so(tmp_path):
    home = tmp_path / "h"
    SyntheticRun("young-run", steps=10, save_steps=50, state="stopped").write(home)
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("E")
        await settle(app, pilot)
        assert isinstance(app.screen, MainScreen)
        assert any("no complete checkpoint" in m for m in notes(app))
        await pilot.press("2", "e")
        await pilot.pause()
        assert any("no complete checkpoint yet" in m for m in notes(app))


async def test_stop_asks_first_then_signals_the_supervisor(tmp_path):
    home = tmp_path / "h"
    # A real process stands in for the supervisor: it records the SIGTERM the cockpit sends.
    flag = tmp_path / "got-term"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(flag)!r}).write_text('x'), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        run = SyntheticRun("live-run", name="live", steps=40, state="running", start_ts=time.time() - 100,
                           step_s=1.0)
        rd = run.write(home)
        SyntheticRun.heartbeat(rd, pid=child.pid)
        app = make_app(home)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert app.view.run["state"] == "running"
            await pilot.press("s")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen) and child.poll() is None
            await pilot.press("s")
            await pilot.pause()
            await pilot.press("enter")              # a stray enter is a no
            await pilot.pause()
            assert isinstance(app.screen, MainScreen) and child.poll() is None
            await pilot.press("s")
            await pilot.pause()
            await pilot.press("y")
            await settle(app, pilot)
            assert child.wait(timeout=10) == 0 and flag.exists()
            assert any("live-run" in m for m in notes(app))
    finally:
        if child.poll() is None:
            child.kill()


async def test_stop_and_resume_refuse_clearly(home):
    rid = find_run(home, "open-rs2").run_id
    app = make_app(home, run=rid, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert any("finished: nothing to stop" in m for m in notes(app))
        await pilot.press("r")
        await settle(app, pilot)
        assert any("is finished" in m for m in notes(app))


async def test_recipe_picker_lists_recipes_and_reports_a_bad_one(tmp_path, home):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "broken.yaml").write_text("description: a recipe with a typo\nlearning_rat: 1.0e-6\n")
    app = make_app(home, recipes_root=recipes)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("n")
        await settle(app, pilot)
        assert isinstance(app.screen, RecipePicker)
        assert app.screen.query_one(OptionList).option_count == 1
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        await pilot.press("n")
        await settle(app, pilot)
        await pilot.press("tab")
        await pilot.press(*"bad")
        await pilot.press("enter")                  # enter in the name field starts it
        await settle(app, pilot)
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "learning_rat" in errors[-1].message
        assert len(app.snapshot.runs) == 3          # nothing was created


async def test_repo_recipes_are_offered_with_descriptions(home):
    app = make_app(home)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("n")
        await settle(app, pilot)
        assert isinstance(app.screen, RecipePicker)
        ol = app.screen.query_one(OptionList)
        prompts = [str(ol.get_option_at_index(i).prompt) for i in range(ol.option_count)]
        assert prompts[0].startswith("recipes/tiny.yaml  Tiny")       # runs anywhere: listed first
        assert any(p.startswith("recipes/tina/open_rs2.yaml  ") for p in prompts)


async def test_help_lists_every_binding_and_scrolls_in_a_small_terminal(home):
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        for a in ACTIONS:                           # straight from the registry
            assert a.description in text and key_label(a.keys) in text
        box = app.screen.query_one("#help-box")
        assert box.max_scroll_y > 0 and box.scroll_y == 0
        await pilot.press("j", "j", "pagedown")
        await pilot.pause()
        assert box.scroll_y > 2
        await pilot.press("end")
        await pilot.pause()
        assert box.scroll_y == box.max_scroll_y  # the last binding can be read without a mouse
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


async def test_command_palette_offers_what_fits_here(home):
    rid = find_run(home, "open-rs2").run_id
    app = make_app(home, run=rid, clock=lambda: FROZEN)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        from tina_tui.commands import CockpitCommands

        provider = CockpitCommands(app.screen)
        titles = [t for t, _, _ in provider._commands()]
        assert "Plot length" in titles and any(t.startswith("Evaluate checkpoint") for t in titles)
        assert not any(t.startswith("Stop") for t in titles)        # finished: nothing to stop
        assert not any(t.startswith("Resume") for t in titles)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"plot length")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen) and app.screen.key == CHARTS[1][0]
        titles = [t for t, _, _ in CockpitCommands(app.screen)._commands()]
        assert "Toggle smoothing" in titles and not any(t.startswith("Evaluate") for t in titles)


async def test_notifications_for_events_while_watching(home):
    rd = find_run(home, "open-rs3")
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert notes(app) == []                     # history is shown, not re-announced
        rd.event("restarted", attempt=2, delay_s=10, reason="exit code -9")
        rd.event("eval_finished", eval_id="x", checkpoint=100, task="aime24", score=0.4)
        rd.event("write_failed", file="train.log", error="[Errno 28] No space left on device", attempt=2)
        await refreshed(app, pilot)
        got = notes(app)
        assert any("cannot write train.log: [Errno 28] No space left on device" in m for m in got)
        assert any("crashed, restarting (attempt 2)" in m for m in got)
        assert any("aime24 of checkpoint 100 = 40.0" in m for m in got)


async def test_a_supervisor_that_dies_is_announced(tmp_path):
    home = tmp_path / "h"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rd = SyntheticRun("doomed", name="doomed", steps=40, state="running", start_ts=time.time() - 100,
                          step_s=1.0).write(home)
        SyntheticRun.heartbeat(rd, pid=child.pid)
        app = make_app(home)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert app.view.run["state"] == "running"
            child.kill()                            # kill -9: it writes no event
            child.wait()
            await refreshed(app, pilot)
            assert app.view.run["state"] == "crashed"
            assert any("doomed: its supervisor is gone" in m for m in notes(app))
    finally:
        child.kill()


async def test_a_dead_evaluation_worker_is_noticed_and_restarted(tmp_path):
    """Attack 6 in the cockpit: an evaluation queued while no worker is alive (it was killed) is
    not "queued" forever: the cockpit says so and starts a worker, which takes it up."""
    from tina_core import runstate

    home = tmp_path / "h"
    rd = SyntheticRun("waiting", name="waiting", steps=40, state="finished").write(home)
    rd.event("eval_queued", eval_id="ckpt999-arith-dead", checkpoint=999, task="arith", tasks=["arith"], gpus=[])
    app = make_app(home)
    messages = []
    async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
        await settle(app, pilot)
        # the first snapshot saw it: by the last one the new worker may have taken it up already
        first = next(m.snapshot for m in messages if isinstance(m, Refreshed) and m.snapshot.view)
        assert first.view.run["eval_worker"] == "gone"
        assert any("no evaluation worker was alive for 1 unfinished evaluation" in m for m in notes(app))
    deadline = time.monotonic() + 120
    while runstate.evaluations(rd)["ckpt999-arith-dead"]["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the restarted worker never took the evaluation up"
        time.sleep(0.2)
    assert "checkpoint-999 is missing" in runstate.evaluations(rd)["ckpt999-arith-dead"]["reason"]


async def test_an_orphaned_trainer_is_running_and_announced(tmp_path):
    """Attack 4 in the cockpit: kill -9 of the supervisor while its trainer trains on shows the run
    still running (its money ticking), and says that no supervisor watches it."""
    from tina_core.rundir import write_json_atomic

    home = tmp_path / "h"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor, trainer = subprocess.Popen(sleep), subprocess.Popen(sleep)
    try:
        rd = SyntheticRun("lonely", name="lonely", steps=40, state="running", start_ts=time.time() - 100,
                          step_s=1.0).write(home)
        now = time.time()
        write_json_atomic(rd.supervisor, {"pid": supervisor.pid, "pgid": supervisor.pid, "started": now - 100,
                                          "heartbeat": now, "trainer_pid": trainer.pid, "attempt": 1})
        app = make_app(home)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert app.view.run["state"] == "running" and app.view.run["supervisor"] == "alive"
            supervisor.kill()                            # kill -9: it writes no event
            supervisor.wait()
            await refreshed(app, pilot)
            run = app.view.run
            assert (run["state"], run["supervisor"], run["orphan_trainer_pid"]) == ("running", "gone", trainer.pid)
            assert any("lonely: its supervisor is gone; the trainer trains on" in m for m in notes(app))
            assert run["usd_per_hour_now"] > 0
    finally:
        supervisor.kill()
        trainer.kill()


async def test_phase_notification_when_the_transition_appears(tmp_path):
    home = tmp_path / "h"
    run = SyntheticRun("growing", name="growing", steps=60, stop_at_step=400, max_steps=800, transition=150,
                       state="stopped", seed=5)
    rd = run.write(home)
    # the run being watched is another one: the marker of any run is announced
    SyntheticRun("other", name="other", steps=30, transition=None, state="stopped", seed=6).write(home)
    app = make_app(home, run="other")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert app.view.run_id == "other"
        growing = next(r for r in app.snapshot.runs if r["run_id"] == "growing")
        assert (growing["phase_transition"] or {}).get("status", "none") == "none"
        # more steps arrive, through the transition
        full = SyntheticRun("growing-full", steps=300, stop_at_step=400, max_steps=800, transition=150,
                            state="stopped", seed=5).write(tmp_path / "other")
        lines = full.metrics.read_text().splitlines(keepends=True)[60:]
        with rd.metrics.open("a") as f:
            f.writelines(lines)
        await refreshed(app, pilot)
        growing = next(r for r in app.snapshot.runs if r["run_id"] == "growing")
        assert growing["phase_transition"]["status"] in ("tentative", "confirmed")
        assert any("growing: phase transition" in m for m in notes(app))


async def test_log_follow_switches_off_on_scroll_up(home):
    rd = find_run(home, "open-rs2")
    app = make_app(home, run=rd.run_id, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("3")
        await pilot.pause()
        log = app.query_one(LogView)
        assert log.follow and log.line_count > 20
        last = rd.train_log.read_text().splitlines()[-1]
        assert log.lines[-1] == last and log.is_vertical_scroll_end
        with rd.train_log.open("a") as f:
            f.write("fresh line 1\n")
        await refreshed(app, pilot)
        assert log.lines[-1] == "fresh line 1" and log.is_vertical_scroll_end
        await pilot.press("k")                      # scrolling up stops following
        await pilot.pause()
        assert not log.follow
        y = log.scroll_y
        with rd.train_log.open("a") as f:
            f.write("fresh line 2\nfresh line 3\n")
        await refreshed(app, pilot)
        assert log.scroll_y == y and log.pending == 2
        assert "2 new lines" in screen_text(app)
        await pilot.press("f")                      # follow again: jumps to the end
        await pilot.pause()
        assert log.follow and log.pending == 0 and log.is_vertical_scroll_end
        await pilot.press("up", "end")
        await pilot.pause()
        assert log.follow
        await pilot.press("f")
        assert not log.follow


async def test_switching_runs_replaces_the_log(home):
    a, b = find_run(home, "open-rs2"), find_run(home, "tiny")
    app = make_app(home, run=a.run_id, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        log = app.query_one(LogView)
        assert log.lines[-1] == a.train_log.read_text().splitlines()[-1]
        app.selected = b.run_id
        await refreshed(app, pilot)
        assert log.lines[-1] == b.train_log.read_text().splitlines()[-1]
        assert not any(ln in log.lines for ln in a.train_log.read_text().splitlines()[-3:]
                       if ln not in b.train_log.read_text())


async def test_resizing_keeps_it_usable(home):
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        for size in ((60, 20), (160, 48), (80, 24)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            text = screen_text(app).splitlines()
            assert len(text) == size[1] and all(len(ln) == size[0] for ln in text)
            assert "format" in "\n".join(text)


async def test_quit_leaves_runs_alone(home):
    before = {rd.name: (rd / "events.jsonl").read_bytes() for rd in (home / "runs").iterdir()}
    app = make_app(home, clock=lambda: FROZEN)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    after = {rd.name: (rd / "events.jsonl").read_bytes() for rd in (home / "runs").iterdir()}
    assert before == after


def test_every_registry_action_has_a_handler():
    from tina_tui.app import TinaApp
    from tina_tui.screens.ablation import AblationScreen
    from tina_tui.screens.detail import DetailScreen
    from tina_tui.screens.diff import DiffScreen

    owners = {"global": [TinaApp], "main": [MainScreen], "detail": [DetailScreen],
              "compare": [DiffScreen, AblationScreen]}
    for a in ACTIONS:
        name = a.action.split("(")[0]
        assert all(hasattr(cls, f"action_{name}") for cls in owners[a.context]), a


async def test_the_palette_offers_what_the_keys_do(tmp_path):
    """Stop, Resume and the stop policy: the command palette offers each exactly where its key
    acts, for every kind of run, a live one whose supervisor died (its trainer trains on) too."""
    import os

    import psutil

    from tina_core.rundir import write_json_atomic
    from tina_core.runstate import HOST
    from tina_tui.commands import CockpitCommands
    from tina_tui.view import Allowed

    home = workspace(tmp_path / "home")
    orphan = SyntheticRun("orphan-20260104-000000-a9b8", name="orphan", steps=40, stop_at_step=100,
                          state="running", step_s=1.0).write(home)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = psutil.Process()  # the "trainer": alive, started when its heartbeat says
    write_json_atomic(orphan.supervisor, {"pid": int(gone.stdout), "pgid": int(gone.stdout), "started": time.time(),
                                          "heartbeat": time.time() - 60, "trainer_pid": os.getpid(),
                                          "trainer_started": me.create_time(), "attempt": 1, "host": HOST})
    app = make_app(home, run=orphan.run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        seen = {}
        for run in app.snapshot.runs:
            app.selected = run["run_id"]
            await refreshed(app, pilot)
            titles = [t for t, _, _ in CockpitCommands(app.screen)._commands()]
            allowed = Allowed.of(app.view.run)
            offered = (any(t.startswith(("Stop", "Cancel")) for t in titles), any(t.startswith("Resume") for t in titles),
                       any(t.startswith("Set the stop policy") for t in titles))
            assert offered == (allowed.stop, allowed.resume, allowed.policy), run["name"]
            seen[run["name"]] = (run["state"], run.get("supervisor"), offered)
            if not allowed.resume:  # the key refuses where the palette offers nothing
                before = len(app._notifications)
                await pilot.press("r")
                await settle(app, pilot)
                assert len(app._notifications) > before and "nothing to resume" in notes(app)[-1]
        assert seen["orphan"] == ("running", "gone", (True, True, True))  # r takes it over, and so does Resume
        assert seen["open-rs2"][2] == (False, False, True)                # finished
        assert seen["open-rs3"][2] == (False, True, True)                 # stopped
