"""The log tab: the trainer's output, following the end until the user scrolls up."""

from __future__ import annotations


from textual.reactive import reactive
from textual.widgets import Log



class LogView(Log):
    """train.log, following the end until the user scrolls up (toolong's tail behaviour)."""

    follow: reactive[bool] = reactive(True)
    pending: reactive[int] = reactive(0)

    def add(self, lines: list[str], reset: bool) -> None:
        if reset:
            self.clear()
        if not lines:
            return
        if not self.follow:
            self.pending += len(lines)
        self.write_lines(lines, scroll_end=self.follow)

    def cursor(self, delta: int) -> None:
        if delta < 0:
            self.action_scroll_up()
        else:
            self.action_scroll_down()

    def _stop_following(self) -> None:
        self.follow = False

    def action_scroll_up(self) -> None:
        self._stop_following()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._stop_following()
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self._stop_following()
        super().action_scroll_home()

    def _on_mouse_scroll_up(self, event) -> None:
        self._stop_following()
        super()._on_mouse_scroll_up(event)

    def action_scroll_end(self) -> None:
        self.follow = True
        super().action_scroll_end()

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self.pending = 0
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self._retitle()

    def watch_pending(self) -> None:
        self._retitle()

    def _retitle(self) -> None:
        self.border_title = "train.log  follow " + ("on" if self.follow else "off (f / end to follow)")
        self.border_subtitle = f"{self.pending} new lines" if self.pending else ""


