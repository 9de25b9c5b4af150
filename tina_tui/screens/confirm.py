"""A yes/no question (only y says yes)."""

from __future__ import annotations


from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label



class ConfirmScreen(ModalScreen[bool]):
    # Only y says yes: a stray enter must not stop a run that has been going for hours.
    BINDINGS = [Binding("y", "dismiss(True)", "Yes"), Binding("n,escape,enter", "dismiss(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, id="confirm-question", markup=False)  # it names a run: text
            yield Label("y: yes    n / esc / enter: no", classes="dim")


