"""The runs list: one line per run (state, step of stop_at_step, ETA, dollars, marker), a strip per row."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from tina_tui.plot import MARK_GLYPHS
from tina_tui.view import described
from tina_tui.widgets.text import (MARK_STYLES, STATE_STYLE, countdown_cell, usd, eta_text, marker_text, state_cell,
                                   looks)

if TYPE_CHECKING:
    from rich.align import AlignMethod

    from tina_tui.view import RunRow


class RunsTable(Widget, can_focus=True):
    """Every run in the workspace, one line each under a header; the highlighted row is the
    selected run (enter: its plot). Drawn with the line API from a strip kept per row: a live
    run's row changes every second, and a DataTable renders every visible cell again whenever any
    one changes, which cost more than the rest of the refresh's drawing."""

    # (label, justify) of each column; the header and the cells below it align alike. The first is
    # a marked run's glyph in the overlay (space marks, x clears).
    COLUMNS: tuple[tuple[str, AlignMethod], ...] = (
        ("", "left"), ("run", "left"), ("state", "left"), ("step/stop", "right"), ("eta", "right"), ("$", "right"),
        ("marker", "left"), ("rec", "right"), ("stop", "right"))
    # once a run belongs to a sweep, its sweep's name shows after the run's
    SWEEP_COLUMN: tuple[str, AlignMethod] = ("sweep", "left")
    BINDINGS = [Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
                Binding("pageup", "move(-5)", show=False), Binding("pagedown", "move(5)", show=False),
                Binding("home", "move(-1000000)", show=False), Binding("end", "move(1000000)", show=False),
                Binding("enter", "choose", show=False)]
    COMPONENT_CLASSES = {"runs-table--header", "runs-table--cursor"}
    DEFAULT_CSS = """
    RunsTable { height: auto; }
    RunsTable > .runs-table--header { text-style: bold; }
    RunsTable > .runs-table--cursor { background: $block-cursor-blurred-background; }
    RunsTable:focus > .runs-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    """

    class Highlighted(Message):
        """The cursor is on another run."""

        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    class Chosen(Message):
        """Enter (or a click) on a run."""

        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    cursor_row: reactive[int] = reactive(0)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._ids: list[str] = []
        self._rows: list[tuple[Text, ...]] = []
        self._widths: tuple[int, ...] = ()
        self._top = 0                                  # first run row on screen
        self._strips: dict[tuple, Strip] = {}          # (row, looks, cursor, focus, width) -> strip
        self._columns = self.COLUMNS

    @staticmethod
    def cells(run: RunRow, mark: int | None = None, sweeps: bool = False) -> tuple[Text, ...]:
        state = run["state"]
        d = run if described(run) else None  # not described yet: its name and state
        restarts = (d["restarts"] if d else 0) or 0
        step = f"{(d['step'] if d else 0) or 0}/{(d and (d['stop_at_step'] or d['max_steps'])) or '?'}"
        rec = d["checkpoint_pick"]["recommended"] if d else None
        return (
            Text(" ") if mark is None else Text(MARK_GLYPHS[mark], style=f"bold {MARK_STYLES[mark]}"),
            Text(str(run["name"] or run["run_id"])[:20]),
            *((Text(str((d["sweep"] if d else None) or "-")[:14]),) if sweeps else ()),
            # "r2": restarted twice after crashes; a sweep's run: why it waits, where it runs
            Text(state_cell(run) + (f" r{restarts}" if restarts else ""), style=STATE_STYLE.get(state, "")),
            Text(step),
            # no step for far longer than its pace (a trainer stopped or hung): no ETA to give
            Text("stalled?", style="yellow") if d and d["stalled_s"] else Text(eta_text(d["eta_s"] if d else None)),
            Text(usd(d["cost_usd"]["total"] if d else None)),
            marker_text(d["phase_transition"] if d else None),
            Text("-" if rec is None else str(rec)),
            countdown_cell(run),  # what is left before the stop policy stops it
        )

    @property
    def row_count(self) -> int:
        return len(self._ids)

    @property
    def selected_id(self) -> str | None:
        return self._ids[self.cursor_row] if self._ids else None

    def update_runs(self, runs: list[RunRow], selected: str | None, marks: dict[str, int] | None = None) -> None:
        """New rows; only the lines that changed are drawn again (a column grows to fit).
        ``marks``: the marked runs' glyph indices."""
        marks = marks or {}
        sweeps = any(described(r) and r["sweep"] for r in runs)
        columns = (*self.COLUMNS[:2], self.SWEEP_COLUMN, *self.COLUMNS[2:]) if sweeps else self.COLUMNS
        rows = [self.cells(r, marks.get(r["run_id"]), sweeps) for r in runs]
        widths = tuple(max([len(label)] + [cells[i].cell_len for cells in rows])
                       for i, (label, _) in enumerate(columns))
        changed = [i for i, cells in enumerate(rows)
                   if i >= len(self._rows) or list(map(looks, cells)) != list(map(looks, self._rows[i]))]
        relayout = len(rows) != len(self._rows)
        whole = relayout or widths != self._widths or [r["run_id"] for r in runs] != self._ids \
            or columns != self._columns
        self._columns = columns
        self._ids, self._rows, self._widths = [r["run_id"] for r in runs], rows, widths
        if selected in self._ids:
            self.cursor_row = self._ids.index(selected)
        self.cursor_row = min(self.cursor_row, max(0, len(rows) - 1))
        if relayout:
            self.refresh(layout=True)
        elif whole:
            self.refresh()
        else:
            for i in changed:
                self._refresh_line(1 + i - self._top)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return 1 + len(self._rows)

    def _scroll_to_cursor(self) -> bool:
        """Keep the cursor's row on screen and the screen full; True if the window moved."""
        visible = max(1, self.size.height - 1)
        top = min(max(self._top, self.cursor_row - visible + 1), self.cursor_row,
                  max(0, len(self._rows) - visible))
        moved, self._top = top != self._top, max(0, top)
        return moved

    def watch_cursor_row(self, old: int, new: int) -> None:
        if self._scroll_to_cursor():
            self.refresh()
        else:
            self._refresh_line(1 + old - self._top)
            self._refresh_line(1 + new - self._top)
        if self._ids:
            self.post_message(self.Highlighted(self._ids[new]))

    def on_resize(self) -> None:
        self._scroll_to_cursor()
        self.refresh()

    def action_move(self, delta: int) -> None:
        if self._ids:
            self.cursor_row = max(0, min(len(self._ids) - 1, self.cursor_row + delta))

    def action_choose(self) -> None:
        if self._ids:
            self.post_message(self.Chosen(self._ids[self.cursor_row]))

    def on_click(self, event: events.Click) -> None:
        row = self._top + event.y - 1
        if event.y >= 1 and 0 <= row < len(self._ids):
            if row == self.cursor_row and event.chain > 1:
                self.action_choose()
            self.cursor_row = row

    def _refresh_line(self, y: int) -> None:
        if 0 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def _line(self, cells: tuple[Text, ...], style: Style) -> Strip:
        line = Text(no_wrap=True)
        for i, (cell, width, (_, justify)) in enumerate(zip(cells, self._widths, self._columns)):
            cell = cell.copy()
            cell.align(justify, width)
            line.append(" ")
            line.append_text(cell)
            line.append(" " if i else "")  # the mark sits right before the name
        segments = list(line.render(self.app.console))
        return Strip(segments).apply_style(style).crop_extend(0, self.size.width, style)

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        if y == 0:
            header = self.get_component_rich_style("runs-table--header")
            return self._line(tuple(Text(label) for label, _ in self._columns), base + header)
        row = self._top + y - 1
        if not 0 <= row < len(self._rows):
            return Strip.blank(self.size.width, base)
        cursor = row == self.cursor_row
        key = (row, tuple(map(looks, self._rows[row])), cursor, self.has_focus, self.size.width, self._widths)
        strip = self._strips.get(key)
        if strip is None:
            style = base + self.get_component_rich_style("runs-table--cursor") if cursor else base
            strip = self._line(self._rows[row], style)
            if len(self._strips) > 4 * (len(self._rows) + 8):
                self._strips.clear()
            self._strips[key] = strip
        return strip


