"""The chooser of the signals a run's phase marker watches (`w`): every candidate the run logs with
its role and why, the marker's reasons above them."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, SelectionList, Static

from tina_core.analysis.signals import LENGTH, short

AUTO = "auto"  # what the chooser returns to go back to the automatic choice


class WatchChooser(ModalScreen["list[str] | str | None"]):
    """Ticked: the signals a marker comes from now. Length is read to corroborate whether ticked or
    not; ticking it makes a length turn alone a marker."""

    BINDINGS = [Binding("enter", "confirm", "Watch these", priority=True),
                Binding("a", "auto", "Automatic choice"),
                Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, run_name: str, watch: dict[str, Any], why: list[str]) -> None:
        super().__init__()
        self.run_name, self.watched, self.why = run_name, watch, why

    def compose(self) -> ComposeResult:
        cands = self.watched.get("candidates") or []
        primary = set(self.watched.get("signals") or [])
        width = max([len(short(c["signal"])) for c in cands] + [10])
        with Vertical(classes="dialog", id="watch-box"):
            # names and reasons come from the run's files: text, never markup
            yield Label(f"Watch {self.run_name}: space toggles, enter applies, a automatic, esc cancels",
                        classes="dialog-title", markup=False)
            yield Static(Text("\n".join(self.why)), id="watch-why")
            yield SelectionList[str](*[
                (Text(f"{short(c['signal']):<{width}}  {c['role']:<11} "
                      f"{'corroborates; tick to make it a marker signal' if c['role'] == LENGTH and c['signal'] not in primary else c['reason']}"),
                 c["signal"], c["signal"] in primary) for c in cands], id="watch-list")

    def action_confirm(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        if not chosen:
            self.notify("tick at least one signal (space), or a for the automatic choice", severity="warning")
            return
        self.dismiss(chosen)

    def action_auto(self) -> None:
        self.dismiss(AUTO)
