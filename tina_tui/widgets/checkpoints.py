"""The checkpoints tab: the base model, then each checkpoint with its place against the transition, dollars and scores."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from tina_tui.plot import (fmt_value)
from tina_tui.widgets.text import usd


class CheckpointsTable(DataTable):
    """Checkpoints of the selected run: where they sit on the curves, what they cost, how they scored."""

    BINDINGS = [Binding("j", "cursor_down", show=False), Binding("k", "cursor_up", show=False)]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self._shape: tuple = ()
        self._rows_data: tuple = ()
        self._run_id: str | None = None

    def update_rows(self, rows: list[dict[str, Any]], run_id: str | None = None) -> None:
        """The run's checkpoints; a run shown for the first time opens on its recommended one."""
        new_run, self._run_id = run_id != self._run_id, run_id
        tasks = sorted({t for r in rows for t in r["evals"]})
        data = tuple((r["step"], r["epoch_pct"], r["format"], r["length"], r["phase"], r["cost_usd_at"],
                      tuple(r["evals"].get(t) for t in tasks), r["avg"], r["recommended"], r.get("best"),
                      r.get("snapshot"))
                     for r in rows)
        if data == self._rows_data:
            return
        self._rows_data = data
        shape = tuple(tasks)
        keep = self.cursor_row
        if shape != self._shape or not self.columns:
            self.clear(columns=True)
            self._shape = shape
            for label in ("   ", "step", "%ep", "format", "length", "phase", "$ at"):
                self.add_column(label)
            for t in tasks:
                self.add_column(t[:8])
            self.add_column("avg")
        else:
            self.clear()
        for r in rows:
            style = "bold green" if r["recommended"] else ""
            ep = "-" if r["epoch_pct"] is None else f"{r['epoch_pct']:.0f}%"
            # * recommended, + best evaluated, s an adapter snapshot pinned at the transition (not resumable)
            mark = ("*" if r["recommended"] else " ") + ("+" if r.get("best") else " ") + ("s" if r.get("snapshot") else " ")
            cells = [Text(mark, style=style), Text(str(r["step"]), style=style),
                     Text(ep), Text(fmt_value(r["format"])), Text(fmt_value(r["length"])),
                     Text(r["phase"] or "-", style="magenta" if r["phase"] == "after" else ""),
                     Text(usd(r["cost_usd_at"]))]
            cells += [Text("-" if r["evals"].get(t) is None else f"{100 * r['evals'][t]:.1f}", style=style)
                      for t in tasks]
            cells.append(Text("-" if r["avg"] is None else f"{100 * r['avg']:.1f}", style=style))
            self.add_row(*cells, key=str(r["step"]))
        if self.row_count:
            self.move_cursor(row=min(keep, self.row_count - 1), animate=False)
        if new_run:
            self.select_step(next((r["step"] for r in rows if r["recommended"]), None))

    def select_step(self, step: int | str | None) -> None:
        keys = [str(k.value) for k in self.rows]
        if step is not None and str(step) in keys:
            self.move_cursor(row=keys.index(str(step)), animate=False)

    @property
    def selected_step(self) -> int | str | None:
        """The highlighted checkpoint's step, or "base" for the base model's row."""
        if not self.row_count:
            return None
        key = str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        return key if key == "base" else int(key)


