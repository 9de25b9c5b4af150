"""The full-screen metric view: every logged step, debiased EMA on top, a step cursor."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from tina_tui.actions import bindings
from tina_tui.collector import CHARTS, RunView
from tina_tui.plot import MARK_CONFIRMED, MARK_TENTATIVE, braille_plot, ema, fmt_value, value_at
from tina_tui.widgets.cost_bar import CostBar


class PlotView(Widget):
    """A braille plot of raw (dim) and smoothed values, a step cursor and the phase marker."""

    cursor: reactive[int] = reactive(-1)
    AXIS = 9

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, float]] = []
        self.smoothed: list[tuple[float, float]] | None = None
        self.phase: dict[str, Any] | None = None
        self.x_range = (0.0, 1.0)

    def render(self) -> Text:
        w, h = max(4, self.size.width - self.AXIS), max(2, self.size.height - 2)
        pts = self.points
        out = Text(no_wrap=True, overflow="crop")
        if not pts:
            return Text("no data for this metric yet", style="dim")
        x0, x1 = self.x_range
        ys = [v for _, v in pts]
        lo, hi = min(ys), max(ys)
        raw = braille_plot(pts, w, h, x0=x0, x1=x1, lo=lo, hi=hi)
        smooth = braille_plot(self.smoothed, w, h, x0=x0, x1=x1, lo=lo, hi=hi) if self.smoothed else None
        cur = pts[self.cursor][0] if -len(pts) <= self.cursor < len(pts) else None
        ccol = _col(cur, x0, x1, w) if cur is not None else None
        for r in range(h):
            label = fmt_value(hi) if r == 0 else fmt_value(lo) if r == h - 1 else ""
            out.append(f"{label:>{self.AXIS - 1}} ", style="dim")
            row = Text(no_wrap=True)
            for c in range(w):
                ch_s = smooth[r][c] if smooth else " "
                ch_r = raw[r][c]
                if smooth and ch_s != " ":
                    row.append(ch_s, style="bold cyan")
                else:
                    row.append(ch_r, style="dim" if smooth else "green")
            if ccol is not None:
                row.stylize("reverse", ccol, ccol + 1)
            out.append_text(row)
            out.append("\n")
        marker = [" "] * w
        status = (self.phase or {}).get("status")
        if status in ("tentative", "confirmed"):
            marker[_col(self.phase["step"], x0, x1, w)] = MARK_CONFIRMED if status == "confirmed" else MARK_TENTATIVE
        out.append(" " * self.AXIS)
        out.append("".join(marker), style="bold magenta" if status == "confirmed" else "magenta")
        out.append("\n")
        left, right = f"{int(x0)}", f"{int(x1)}"
        out.append(" " * self.AXIS + left + " " * max(1, w - len(left) - len(right)) + right, style="dim")
        return out


def _col(step: float, x0: float, x1: float, width: int) -> int:
    # the braille plot maps x onto 2*width dots; the cell is dot // 2
    dots = width * 2
    return max(0, min(width - 1, int(round((step - x0) / ((x1 - x0) or 1) * (dots - 1))) // 2))


class DetailScreen(Screen[None]):
    """One metric, full screen: raw always drawn, debiased EMA on top, a step cursor."""

    BINDINGS = bindings("detail")
    smoothing: reactive[bool] = reactive(True)
    weight: reactive[float] = reactive(0.6)

    def __init__(self, view: RunView, metric: int) -> None:
        super().__init__()
        self.view = view
        self.metric = metric
        self.follow_cursor = True   # cursor stays on the newest step until moved

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        yield CostBar(id="detail-cost")
        yield PlotView()
        yield Static(id="detail-status")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_plot()

    def update_view(self, view: RunView) -> None:
        if view.run_id == self.view.run_id:
            self.view = view
            self.refresh_plot()

    @property
    def key(self) -> str:
        return CHARTS[self.metric][0]

    def refresh_plot(self) -> None:
        plot = self.query_one(PlotView)
        # every logged step once the refresh has brought them; the charts' summary until then
        pts = self.view.detail.get(self.key) or self.view.series.get(self.key) or []
        plot.points = pts
        plot.phase = self.view.phase
        plot.x_range = self.view.step_range
        plot.smoothed = list(zip([s for s, _ in pts], ema([v for _, v in pts], self.weight))) \
            if self.smoothing and pts else None
        if self.follow_cursor or plot.cursor >= len(pts):
            plot.cursor = len(pts) - 1
        self.query_one("#detail-title", Static).update(Text.assemble(
            (f" {CHARTS[self.metric][1]} ", "bold reverse"), f"  {self.key}  ",
            (f"{self.view.run.get('name', self.view.run_id)}", "bold"),
            ("   smoothing " + (f"EMA {self.weight:.2f}" if self.smoothing else "off (raw)"), "cyan")))
        self.query_one(CostBar).show(self.view.run, self.view.recommendation, self.view.checkpoints)
        self._status()
        plot.refresh()

    def _status(self) -> None:
        plot = self.query_one(PlotView)
        pts = plot.points
        t = Text()
        if pts and 0 <= plot.cursor < len(pts):
            step, raw = pts[plot.cursor]
            t.append(f" step {int(step)}", style="bold")
            t.append(f"   raw {fmt_value(raw)}")
            if plot.smoothed:
                t.append(f"   smoothed {fmt_value(plot.smoothed[plot.cursor][1])}", style="cyan")
        p = self.view.phase or {}
        if p.get("status") in ("tentative", "confirmed"):
            t.append(f"   transition {p['status']} @ {p.get('step')}", style="magenta")
            near = value_at(pts, p["step"])
            if near:
                t.append(f" ({fmt_value(near[1])})", style="magenta")
        self.query_one("#detail-status", Static).update(t)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_move(self, delta: int) -> None:
        plot = self.query_one(PlotView)
        if plot.points:
            plot.cursor = max(0, min(len(plot.points) - 1, plot.cursor + delta))
            self.follow_cursor = plot.cursor == len(plot.points) - 1
            self._status()

    def action_jump(self, end: int) -> None:
        self.action_move(10 ** 9 if end else -10 ** 9)

    def action_smooth(self) -> None:
        self.smoothing = not self.smoothing
        self.refresh_plot()

    def action_weight(self, delta: float) -> None:
        self.weight = round(max(0.0, min(0.99, self.weight + delta)), 2)
        self.smoothing = True
        self.refresh_plot()

    def action_metric(self, delta: int) -> None:
        self.show_metric((self.metric + delta) % len(CHARTS))

    def show_metric(self, index: int) -> None:
        self.metric = index
        self.refresh_plot()
        self.app.refresh_data()  # every step of the new metric


