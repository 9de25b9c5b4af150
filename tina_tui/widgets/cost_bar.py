"""The money line of the run in view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


from tina_tui.widgets.text import cost_line
from tina_tui.widgets.panel import Panel

if TYPE_CHECKING:
    from tina_tui.collector import RunRow


class CostBar(Panel):
    """The money line: always visible, on the main screen and the detail view."""

    def show(self, run: RunRow | None, recommendation: dict[str, Any] | None,
             checkpoints: list[dict[str, Any]]) -> None:
        rec = (recommendation or {}).get("recommended", (run or {}).get("recommended_checkpoint"))
        self.set_text(cost_line(run, rec, checkpoints))


