"""The task chooser of an evaluation."""

from __future__ import annotations


from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, SelectionList



class TaskChooser(ModalScreen["list[str] | None"]):
    """Which evaluation tasks to run; the recipe's defaults are ticked."""

    BINDINGS = [Binding("enter", "confirm", "Queue", priority=True), Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, what: str, tasks: dict[str, str], defaults: list[str]) -> None:
        super().__init__()
        self.what, self.tasks, self.defaults = what, tasks, defaults

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="task-box"):
            yield Label(f"Evaluate {self.what}: space toggles, enter queues", classes="dialog-title")
            yield SelectionList[str](*[(f"{name:<12} {desc}", name, name in self.defaults)
                                       for name, desc in self.tasks.items()], id="tasks")

    def action_confirm(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        if not chosen:
            self.notify("choose at least one task (space)", severity="warning")
            return
        self.dismiss(chosen)


