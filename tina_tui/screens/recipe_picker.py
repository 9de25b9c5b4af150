"""The recipe picker: start a run from a recipe, each with its one-line description."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option



class RecipePicker(ModalScreen["tuple[Path, str | None] | None"]):
    """Pick a recipe (each with its one-line description and projected cost) and optionally name the run."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, recipes: list[tuple[Path, str]], relative_to: Path | None = None,
                 costs: dict[Path, str] | None = None) -> None:
        super().__init__()
        self.recipes = recipes
        self.relative_to = relative_to
        self.costs = costs or {}

    def _label(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.relative_to)) if self.relative_to else str(path)
        except ValueError:
            return str(path)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="recipe-box"):
            yield Label("Start a run: choose a recipe (enter), tab to name it", classes="dialog-title")
            yield OptionList(*[Option(Text.assemble((self._label(p), "bold"), "  ", (d or "", "dim"),
                                                    *([("  " + self.costs[p], "green")] if p in self.costs else [])),
                                      id=str(i))
                               for i, (p, d) in enumerate(self.recipes)], id="recipes")
            yield Input(placeholder="run name (optional)", id="run-name")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def _start(self) -> None:
        ol = self.query_one(OptionList)
        if ol.highlighted is None:
            return
        name = self.query_one(Input).value.strip() or None
        self.dismiss((self.recipes[ol.highlighted][0], name))

    def on_option_list_option_selected(self) -> None:
        self._start()

    def on_input_submitted(self) -> None:
        self._start()


