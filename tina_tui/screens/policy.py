"""The stop-policy dialog: stop N steps after the transition, a budget in dollars, on a live run."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from tina_core.analysis.policy import POLICY_KEYS, parse_value
from tina_core.rundir import TinaError


def _shown(value: Any) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


class PolicyDialog(ModalScreen["dict[str, Any] | None"]):
    """Both settings at once (tab between them, ``off`` turns one off); enter applies, esc cancels.
    Dismissed with the settings that changed, or None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, run_name: str, policy: dict[str, Any]) -> None:
        super().__init__()
        self.run_name, self.policy = run_name, policy

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="policy-box"):
            yield Label(f"Stop policy of {self.run_name} (stop_at_step {self.policy.get('stop_at_step') or '-'})",
                        classes="dialog-title", markup=False)  # a run's name: text, never markup
            yield Label("stop N steps after the phase transition is confirmed:")
            yield Input(_shown(self.policy.get("after_transition")), id="after_transition")
            yield Label("stop before the run's cost passes (dollars):")
            yield Input(_shown(self.policy.get("budget_usd")), id="budget_usd")
            yield Label("enter applies, tab moves, esc cancels; off turns one off", classes="dim", id="policy-hint")

    def on_mount(self) -> None:
        self.query_one("#after_transition", Input).focus()

    def on_input_submitted(self) -> None:
        changes: dict[str, Any] = {}
        for key in POLICY_KEYS:
            raw = self.query_one(f"#{key}", Input).value
            try:
                value = parse_value(key, raw)
            except TinaError as e:
                self.query_one("#policy-hint", Label).update(str(e))
                self.query_one(f"#{key}", Input).focus()
                return
            if value != self.policy.get(key):
                changes[key] = value
        self.dismiss(changes)
