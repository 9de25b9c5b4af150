"""The main screen: the runs list, the money line and the four tabs of the run in view."""

from __future__ import annotations

from typing import cast

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from tina_tui.actions import bindings
from tina_tui.view import Cockpit, Snapshot
from tina_tui.widgets.charts import ChartsPanel
from tina_tui.widgets.checkpoints import CheckpointsTable
from tina_tui.widgets.cost_bar import CostBar
from tina_tui.widgets.gpu_panel import GpuPanel
from tina_tui.widgets.log_view import LogView
from tina_tui.widgets.panel import Panel
from tina_tui.widgets.runs_list import RunsTable
from tina_tui.widgets.text import recommendation_line

TABS: dict[str, type[Widget]] = {"charts": ChartsPanel, "checkpoints": CheckpointsTable, "log": LogView,
                                 "system": GpuPanel}


class MainScreen(Screen[None]):
    BINDINGS = bindings("main")

    def compose(self) -> ComposeResult:
        yield RunsTable(id="runs")
        yield CostBar(id="cost")
        with TabbedContent(id="tabs", initial="charts"):
            with TabPane("1 charts", id="charts"):
                yield ChartsPanel(id="charts-panel")
            with TabPane("2 checkpoints", id="checkpoints"):
                yield Panel(id="ckpt-note")
                yield CheckpointsTable(id="ckpts")
            with TabPane("3 log", id="log"):
                yield LogView(id="log-tail", max_lines=2000)
            with TabPane("4 gpu", id="system"):
                yield GpuPanel(id="gpu")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RunsTable).focus()
        # Every widget a snapshot goes to is mounted now (not yet when the app itself mounts).
        self.app_.start_refreshing()

    @property
    def app_(self) -> Cockpit:
        return cast(Cockpit, self.app)

    def apply(self, snap: Snapshot) -> None:
        view = snap.view
        self.query_one(RunsTable).update_runs(snap.runs, view.run_id if view else self.app_.selected, self.app_.marks)
        self.query_one(CostBar).show(view.run if view else None, view.checkpoints if view else [])
        self.query_one(ChartsPanel).show(view, snap.overlay, self.app_.align)
        self.query_one(CheckpointsTable).update_rows(view.checkpoints if view else [], view.run_id if view else None)
        self.query_one("#ckpt-note", Panel).set_text(
            recommendation_line(view.run if view else None))
        self.query_one(GpuPanel).show(view.run if view else None, view.system if view else [])
        if view is not None:
            self.query_one(LogView).add(view.log_lines, view.log_reset)
        self.sub_title = f"{len(snap.runs)} runs"

    @on(RunsTable.Highlighted)
    def _run_highlighted(self, event: RunsTable.Highlighted) -> None:
        if event.run_id != self.app_.selected:
            self.app_.selected = event.run_id
            self.app_.refresh_data()

    # enter on a table row: the tables take enter themselves, so their selection events answer it
    @on(RunsTable.Chosen)
    def _run_chosen(self) -> None:
        self.action_detail()

    @on(DataTable.RowSelected, "#ckpts")
    def _checkpoint_chosen(self) -> None:
        self.action_eval_selected()

    # --- actions (keys come from the registry) ---------------------------------------------
    def action_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        self.query_one(TABS[name]).focus()

    def action_cursor(self, delta: int) -> None:
        focused = self.focused
        if isinstance(focused, (ChartsPanel, LogView)):
            focused.cursor(delta)
        elif isinstance(focused, RunsTable):
            focused.action_move(delta)
        elif isinstance(focused, DataTable):
            focused.move_cursor(row=focused.cursor_row + delta)
        else:
            self.query_one(ChartsPanel).cursor(delta)

    def action_prev_run(self) -> None:
        self.query_one(RunsTable).action_move(-1)

    def action_next_run(self) -> None:
        self.query_one(RunsTable).action_move(1)

    def action_detail(self) -> None:
        self.app_.open_detail(self.query_one(ChartsPanel).selected)

    def action_follow(self) -> None:
        log = self.query_one(LogView)
        log.follow = not log.follow

    def action_mark(self) -> None:
        self.app_.toggle_mark(self.query_one(RunsTable).selected_id)

    def action_clear_marks(self) -> None:
        self.app_.clear_marks()

    def action_align(self) -> None:
        self.app_.toggle_align()

    def action_diff(self) -> None:
        self.app_.show_diff()

    def action_ablation(self) -> None:
        self.app_.show_ablation()

    def action_new_run(self) -> None:
        self.app_.pick_recipe()

    def action_stop_run(self) -> None:
        self.app_.confirm_stop()

    def action_resume_run(self) -> None:
        self.app_.resume()

    def action_policy(self) -> None:
        self.app_.choose_policy()

    def action_eval_selected(self) -> None:
        table = self.query_one(CheckpointsTable)
        if self.query_one(TabbedContent).active != "checkpoints":
            # The table is out of sight: show it, on the recommended row, rather than evaluate a
            # checkpoint the user cannot see.
            self.action_tab("checkpoints")
            view = self.app_.view
            pick = view.pick if view else None
            table.select_step(pick and pick["recommended"])
            self.notify("choose a checkpoint (j/k), then e or enter; E: the recommended one, A: all")
            return
        step = table.selected_step
        if step is None:
            self.notify("no complete checkpoint yet", severity="warning")
            return
        self.app_.choose_eval(step)

    def action_eval(self, which: str) -> None:
        self.app_.choose_eval(which)

    def action_choose_watch(self) -> None:
        self.app_.choose_watch()


