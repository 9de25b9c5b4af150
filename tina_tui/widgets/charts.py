"""The charts tab: format reward, completion length and the others on one step axis, the marker under each."""

from __future__ import annotations

from typing import Any

from rich.segment import Segment
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from tina_core.events import CONFIRMED, MARKED
from tina_tui.view import CHARTS, Overlay, RunView, described
from tina_tui.plot import (MARK_CONFIRMED, MARK_TENTATIVE, bucket_mean, column_of, fmt_value, marker_line,
                           spark_rows)
from tina_tui.widgets.overlay import chooser, overlay_lines
from tina_tui.widgets.text import eta_text, marker_words, style_of


class ChartsPanel(Widget, can_focus=True):
    """Sparklines of the run's key metrics over one shared step axis, with the phase marker in the
    same column under each. Taller panels get taller sparklines. With two runs or more marked, the
    marked runs' selected metric instead, overlaid (tina_tui.widgets.overlay).

    Drawn with Textual's line API from strips built once per snapshot: going through a rich Text
    for every line cost more than the rest of a refresh put together."""

    selected: reactive[int] = reactive(0)
    LABEL = 16  # label (8) + last value (8)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.view: RunView | None = None
        self.overlay: Overlay | None = None
        self.align = "step"
        self._drawn: tuple | None = None
        self._strips: list[Strip] | None = None

    def show(self, view: RunView | None, overlay: Overlay | None = None, align: str = "step") -> None:
        """Draw a new snapshot's run, only if what the panel shows changed: a live run between
        its steps brings the same view version every second."""
        self.view, self.overlay, self.align = view, overlay, align
        if overlay is not None:
            drawn: tuple | None = ("overlay", overlay.version, align)
        else:
            run = view.run if view is not None and described(view.run) else None
            drawn = None if view is None else (
                view.run_id, view.version, view.step_range,
                run and run["seconds_per_step"], eta_text(run["eta_s"] if run else None))
        if drawn != self._drawn:
            self._drawn = drawn
            self._strips = None
            self.refresh()

    def cursor(self, delta: int) -> None:
        self.selected = (self.selected + delta) % len(CHARTS)

    @property
    def selected_key(self) -> str:
        return CHARTS[self.selected][0]

    def watch_selected(self) -> None:
        self._strips = None

    def on_resize(self) -> None:
        self._strips = None

    def render_line(self, y: int) -> Strip:
        if self._strips is None:
            base, width = self.rich_style, self.size.width
            self._strips = [Strip([Segment(text, base + style_of(style)) for text, style in parts if text])
                            .crop_extend(0, width, base) for parts in self.lines()]
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)

    def lines(self) -> list[list[tuple[str, str]]]:
        """The panel as lines of (text, style) parts, top to bottom."""
        view, width, height = self.view, self.size.width, self.size.height
        if self.overlay is not None:
            key, label = CHARTS[self.selected]
            return overlay_lines(self.overlay, key, label, self.align, width, height,
                                 header=chooser([lb for _, lb in CHARTS], self.selected, self.align))
        if view is None:
            return [[("no data yet", "dim")]]
        sw = max(4, width - self.LABEL - 1)
        pad = " " * (self.LABEL + 1)
        x0, x1 = view.step_range
        phase = view.phase or {}
        status = phase.get("status")
        mcol = column_of(phase["step"], x0, x1, sw) if status in MARKED else None
        rows = max(1, (height - 3) // len(CHARTS) - 1)
        mstyle = "bold magenta" if status == CONFIRMED else "magenta"
        out: list[list[tuple[str, str]]] = []
        for i, (key, label) in enumerate(CHARTS):
            pts = view.series.get(key) or []
            spark = spark_rows(bucket_mean(pts, x0, x1, sw), rows)
            last = pts[-1][1] if pts else None
            sel = i == self.selected
            for r, line in enumerate(spark):
                head = (f"{label:<8}{fmt_value(last):>8} ", "reverse" if sel else "bold") if r == 0 else (pad, "")
                out.append([head, (line, "cyan" if sel else "green")])
            out.append([(pad, ""), (marker_line(sw, mcol, status), mstyle)])
        axis, end = f"step {int(x0)}", f"{int(x1)}"
        run = view.run if described(view.run) else None
        per_step, eta = (run["seconds_per_step"], run["eta_s"]) if run else (None, None)
        pace = " ".join(p for p in (f"{per_step:.2f} s/step" if per_step else "",
                                    f"eta {eta_text(eta)}" if eta is not None else "") if p)
        gap = sw - len(axis) - len(end)
        if pace and gap >= len(pace) + 2:
            left = (gap - len(pace)) // 2
            axis += " " * left + pace
            gap -= left + len(pace)
        out.append([(pad + axis + " " * max(1, gap) + end, "dim")])
        marked = status in MARKED
        out.append([(pad, ""), (marker_words(phase)[:sw], mstyle if marked else "dim")])
        out.append([(pad, ""), (f"{MARK_TENTATIVE} tentative {MARK_CONFIRMED} confirmed   w: what is watched, and why"[:sw],
                                "dim")])
        return out


