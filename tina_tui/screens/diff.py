"""What differs between the marked runs (``D``): the resolved-recipe keys whose values are not the
same in all of them, one row each, one column per run (tina_core.recipe.diff, as `tina diff`)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.widgets import DataTable, Static

from tina_core.recipe import diff
from tina_core.rundir import RunDir, TinaError, runs_root
from tina_core.terminal import printable
from tina_tui.screens.compare import CompareScreen, run_column


class DiffScreen(CompareScreen):
    def __init__(self, home: Path, run_ids: list[str], marks: dict[str, int]) -> None:
        super().__init__()
        self.home, self.run_ids, self.marks = home, run_ids, marks

    def title_text(self) -> str:
        return f"what differs between {len(self.run_ids)} runs"

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self._load()

    @work(thread=True, exit_on_error=False)
    def _load(self) -> None:
        try:
            sides = [diff.run_side(RunDir(runs_root(self.home) / rid)) for rid in self.run_ids]
            found: list[diff.KeyDiff] | str = diff.differing([s.recipe for s in sides])
        except (TinaError, OSError) as e:
            sides, found = [], str(e)
        self.app.call_from_thread(self._show, sides, found)

    def _show(self, sides: list[diff.Side], found: list[diff.KeyDiff] | str) -> None:
        note = self.query_one("#compare-note", Static)
        if isinstance(found, str):
            note.update(Text(printable(found), style="red"))
            return
        # keys, values and names from the runs' recipe snapshots, written out (tina_core.terminal)
        table = self.query_one(DataTable)
        table.add_column("key")
        for side, label in zip(sides, diff.labels(sides)):
            table.add_column(run_column(printable(label), self.marks.get(side.run_id or "")))
        for d in found:
            table.add_row(Text(printable(d.key), style="bold"),
                          *[Text(printable(diff.show_value(v)), style="dim" if v is diff.ABSENT else "")
                            for v in d.values])
        note.update(Text(f"{len(found)} key(s) differ, nothing else shown (names and descriptions left out); "
                         "tina diff RUN RUN... prints the same" if found else
                         "the recipes are the same apart from their names and descriptions", style="dim"))
