"""The layout the compare views share (``D``, ``T``): a title, a table with one column per run
(headed by its mark's glyph and colour), a note under it, the footer."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tina_tui.actions import bindings
from tina_tui.plot import MARK_GLYPHS
from tina_tui.widgets.text import MARK_STYLES


def run_column(label: str, mark: int | None) -> Text:
    """A run's column head: its label, after its glyph when it is marked."""
    if mark is None:
        return Text(label)
    return Text.assemble((MARK_GLYPHS[mark] + " ", f"bold {MARK_STYLES[mark]}"), label)


class CompareScreen(Screen[None]):
    BINDINGS = bindings("compare")

    def title_text(self) -> str:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        yield Static(Text(f" {self.title_text()} ", style="bold reverse"), id="compare-title")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="compare-note")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
