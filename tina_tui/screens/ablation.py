"""The ablation table (``T``): per marked run (every run when none is marked) the recipe keys that
differ, the transition and its % of an epoch, the recommended checkpoint, the dollars to it, its
evaluation average and gain over the base model, beside the paper's figures (tina_core.report.table,
as `tina report`)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import DataTable, Static

from tina_core.report.table import ablation_cells
from tina_tui.screens.compare import CompareScreen, run_column


class AblationScreen(CompareScreen):
    def __init__(self, collector: Any, run_ids: list[str], marks: dict[str, int], sweep: str | None = None) -> None:
        super().__init__()
        self.collector, self.run_ids, self.marks, self.sweep = collector, run_ids, marks, sweep

    def title_text(self) -> str:
        if self.sweep:
            return f"ablation table: sweep {self.sweep} ({len(self.run_ids)} runs; mark runs to choose others)"
        return "ablation table: " + (f"{len(self.run_ids)} marked runs" if self.run_ids else "every run (none is marked)")

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.query_one("#compare-note", Static).update(Text("reading the runs ...", style="dim"))
        self._load()

    @work(thread=True, exit_on_error=False)
    def _load(self) -> None:
        try:
            report: dict[str, Any] | str = self.collector.report(self.run_ids)
        except Exception as e:  # shown, the cockpit goes on
            report = f"{type(e).__name__}: {e}"
        self.app.call_from_thread(self._show, report)

    def _show(self, report: dict[str, Any] | str) -> None:
        note = self.query_one("#compare-note", Static)
        if isinstance(report, str):
            note.update(Text(report, style="red"))
            return
        abl = report["ablation"]
        head, rows = ablation_cells(abl)
        # one column per run (six fit at 80 columns), one row per figure: the axis keys first
        table = self.query_one(DataTable)
        table.add_column("")
        for row, r in zip(rows, abl["rows"]):
            table.add_column(run_column(row[0], self.marks.get(r["run_id"])))
        for i, label in enumerate(head[1:], 1):
            table.add_row(Text(label, style="bold"), *[Text(row[i]) for row in rows])  # text, never markup
        axis = abl["axis"]
        what = (", ".join(axis[:3]) + (f" and {len(axis) - 3} more" if len(axis) > 3 else "")) if axis else \
            "nothing (the recipes are the same)"
        note.update(Text(f"differs: {what}. avg, vs base: points, of the recommended checkpoint; paper: "
                         "Tina's row for the recipe (tina report prints it too)", style="dim"))
