"""The help screen: every key, from the actions registry."""

from __future__ import annotations


from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tina_tui.actions import ACTIONS, CONTEXT_TITLES, key_label


class HelpScreen(ModalScreen[None]):
    """Every binding, straight from the actions registry."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "Close"),
                Binding("j", "scroll(1)", show=False), Binding("k", "scroll(-1)", show=False)]

    def compose(self) -> ComposeResult:
        t = Text()
        for ctx, title in CONTEXT_TITLES.items():
            t.append(f"{title}\n", style="bold underline")
            for a in ACTIONS:
                if a.context == ctx:
                    t.append(f"  {key_label(a.keys):<16}", style="bold cyan")
                    t.append(f"{a.description}\n")
            t.append("\n")
        t.append("tab / shift+tab move between the runs list and the tab below it; j/k and the arrows act\n"
                 "on whichever has focus. Dialogs: enter confirms (a stop needs y), escape cancels,\n"
                 "space toggles a task.", style="dim")
        with Vertical(classes="dialog", id="help-frame"):
            yield Label("tina-tui keys  (j/k, pgup/pgdn scroll; esc closes)", classes="dialog-title")
            with VerticalScroll(id="help-box"):
                yield Static(t, id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()

    def action_scroll(self, delta: int) -> None:
        self.query_one("#help-box", VerticalScroll).scroll_relative(y=delta, animate=False)


