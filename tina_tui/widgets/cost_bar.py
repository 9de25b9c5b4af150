"""The money line of the run in view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text


from tina_tui.widgets.text import cost_line, policy_line
from tina_tui.widgets.panel import Panel

if TYPE_CHECKING:
    from tina_tui.view import RunRow


class CostBar(Panel):
    """The money line: always visible, on the main screen and the detail view; a second line for a
    run with a stop policy (its countdown, the stop, the dollars saved, the pick)."""

    def show(self, run: RunRow | None, checkpoints: list[dict[str, Any]]) -> None:
        text = cost_line(run, checkpoints)
        second = policy_line(run)
        lines = 1 if second is None else 2
        if second is not None:  # joined so that neither line wraps (Text + Text would)
            both = Text(no_wrap=True, overflow="ellipsis")
            both.append_text(text)
            both.append("\n")
            both.append_text(second)
            text = both
        # each line is cut at the terminal's width, never wrapped: the bar is exactly its lines tall
        if self.id == "cost" and self.styles.height != lines:
            self.styles.height = lines
        self.set_text(text)


