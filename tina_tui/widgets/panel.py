"""A one-text panel that repaints only when its text changes."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from tina_tui.widgets.text import looks


class Panel(Widget):
    """Text that repaints only when it changes, and has the screen laid out again only when its
    number of lines does: a Static lays out the whole screen on every update, and the cost line
    changes every second."""

    DEFAULT_CSS = "Panel { height: auto; }"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._text = Text()
        self._shown: tuple | None = None

    def render(self) -> Text:
        return self._text

    def set_text(self, text: Text) -> None:
        seen = looks(text)
        if seen == self._shown:
            return
        layout = text.plain.count("\n") != self._text.plain.count("\n") or self._shown is None
        self._shown, self._text = seen, text
        self.refresh(layout=layout)


