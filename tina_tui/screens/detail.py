"""The full-screen metric view: every logged step, debiased EMA on top, a step cursor."""

from __future__ import annotations

from typing import cast

from rich.text import Text
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from tina_core.analysis.transition import PhaseTransition
from tina_core.events import CONFIRMED, MARKED
from tina_tui.actions import bindings
from tina_tui.view import CHARTS, Cockpit, Overlay, RunView
from tina_tui.plot import MARK_CONFIRMED, MARK_TENTATIVE, braille_plot, ema, fmt_value, value_at
from tina_tui.widgets.cost_bar import CostBar
from tina_tui.widgets.overlay import drawn_series, overlay_lines, x_range


class PlotView(Widget):
    """A braille plot of raw (dim) and smoothed values, a step cursor and the phase marker."""

    cursor: reactive[int] = reactive(-1)
    AXIS = 9

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[float, float]] = []
        self.smoothed: list[tuple[float, float]] | None = None
        self.phase: PhaseTransition | None = None
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
        if self.phase and status in MARKED:
            marker[_col(self.phase["step"], x0, x1, w)] = MARK_CONFIRMED if status == CONFIRMED else MARK_TENTATIVE
        out.append(" " * self.AXIS)
        out.append("".join(marker), style="bold magenta" if status == CONFIRMED else "magenta")
        out.append("\n")
        left, right = f"{int(x0)}", f"{int(x1)}"
        out.append(" " * self.AXIS + left + " " * max(1, w - len(left) - len(right)) + right, style="dim")
        return out


def _col(step: float, x0: float, x1: float, width: int) -> int:
    # the braille plot maps x onto 2*width dots; the cell is dot // 2
    dots = width * 2
    return max(0, min(width - 1, int(round((step - x0) / ((x1 - x0) or 1) * (dots - 1))) // 2))


class OverlayPlot(Widget):
    """The marked runs' metric, every logged step of each, on one axis (tina_tui.widgets.overlay),
    a cursor column whose values the legend gives."""

    def __init__(self) -> None:
        super().__init__()
        self.overlay: Overlay | None = None
        self.key, self.label, self.align = CHARTS[0][0], CHARTS[0][1], "step"
        self.cursor: float | None = None

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        if self.overlay is None:
            return out
        lines = overlay_lines(self.overlay, self.key, self.label, self.align, self.size.width, self.size.height,
                              detail=True, cursor=self.cursor)
        for i, parts in enumerate(lines):
            for text, style in parts:
                out.append(text, style=style or None)
            if i < len(lines) - 1:
                out.append("\n")
        return out


class DetailScreen(Screen[None]):
    """One metric, full screen: raw always drawn, debiased EMA on top, a step cursor. With two runs
    or more marked, that metric of each, overlaid."""

    BINDINGS = bindings("detail")
    smoothing: reactive[bool] = reactive(True)
    weight: reactive[float] = reactive(0.6)

    def __init__(self, view: RunView, metric: int) -> None:
        super().__init__()
        self.view = view
        self.overlay: Overlay | None = None
        self.metric = metric
        self.follow_cursor = True   # cursor stays on the newest step until moved

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        yield CostBar(id="detail-cost")
        yield PlotView()
        yield OverlayPlot()
        yield Static(id="detail-status")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_plot()

    def update_view(self, view: RunView, overlay: Overlay | None = None) -> None:
        if view.run_id == self.view.run_id:
            self.view, self.overlay = view, overlay
            self.refresh_plot()

    @property
    def key(self) -> str:
        return CHARTS[self.metric][0]

    def refresh_plot(self) -> None:
        plot, over = self.query_one(PlotView), self.query_one(OverlayPlot)
        if self.overlay is None:
            snap = getattr(self.app, "snapshot", None)
            self.overlay = snap.overlay if snap else None
        plot.display, over.display = self.overlay is None, self.overlay is not None
        if self.overlay is not None:
            self._refresh_overlay(over)
            return
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
            (f" {CHARTS[self.metric][1]} ", "bold reverse"), f"  {self.view.chart_keys.get(self.key, self.key)}  ",
            (f"{self.view.run.get('name', self.view.run_id)}", "bold"),
            ("   smoothing " + (f"EMA {self.weight:.2f}" if self.smoothing else "off (raw)"), "cyan")))
        self.query_one(CostBar).show(self.view.run, self.view.checkpoints)
        self._status()
        plot.refresh()

    def _refresh_overlay(self, over: OverlayPlot) -> None:
        assert self.overlay is not None  # only while runs are overlaid
        over.overlay, over.align = self.overlay, getattr(self.app, "align", "step")
        over.key, over.label = CHARTS[self.metric]
        drawn = drawn_series(self.overlay, over.key, over.align, detail=True)
        if self.follow_cursor or over.cursor is None:
            over.cursor = x_range(drawn, over.align)[1] if drawn else None
        self.query_one("#detail-title", Static).update(Text.assemble(
            (f" {over.label} ", "bold reverse"), f"  {over.key}  ",
            (f"{len(self.overlay.runs)} runs overlaid, by {over.align}", "bold"), ("  (a switches)", "dim")))
        self.query_one(CostBar).show(self.view.run, self.view.checkpoints)
        where = "" if over.cursor is None else (f"step {over.cursor:.0f}" if over.align == "step"
                                                 else f"{over.cursor:+.0f} steps from each transition")
        self.query_one("#detail-status", Static).update(Text(f" cursor: {where}; the legend gives each run's "
                                                             "value there", style="dim"))
        over.refresh()

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
        if p.get("status") in MARKED:
            t.append(f"   transition {p['status']} @ {p.get('step')}", style="magenta")
            near = value_at(pts, p["step"])
            if near:
                t.append(f" ({fmt_value(near[1])})", style="magenta")
        self.query_one("#detail-status", Static).update(t)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_align(self) -> None:
        cast(Cockpit, self.app).toggle_align()

    def action_move(self, delta: int) -> None:
        if self.overlay is not None:
            over = self.query_one(OverlayPlot)
            drawn = drawn_series(self.overlay, over.key, over.align, detail=True)
            if drawn and over.cursor is not None:
                lo, hi = x_range(drawn, over.align)
                over.cursor = max(lo, min(hi, over.cursor + delta))
                self.follow_cursor = over.cursor >= hi
                self._refresh_overlay(over)
            return
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
        cast(Cockpit, self.app).refresh_data()  # every step of the new metric


