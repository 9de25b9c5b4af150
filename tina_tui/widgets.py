"""The cockpit's panels. Each one updates from a ``Snapshot``/``RunView`` handed to it by the app;
none of them reads files or the store."""

from __future__ import annotations

import functools
from typing import Any

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import DataTable, Log

from tina_tui.data import CHARTS, RunView
from tina_tui.plot import (MARK_CONFIRMED, MARK_TENTATIVE, bucket_mean, column_of, fmt_value, marker_line,
                           spark_rows)

STATE_STYLE = {"running": "bold green", "stopping": "yellow", "finished": "cyan", "stopped": "yellow",
               "failed": "bold red", "crashed": "bold red", "unreadable": "red"}


def amount(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if v < 1000 else f"{v:,.0f}"


def usd(v: float | None) -> str:
    return "-" if v is None else "$" + amount(v)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def eta_text(seconds: float | None) -> str:
    """An ETA to the minute (to ten seconds in its last ten minutes, to the second in its last
    minute): seconds that tick every refresh say nothing an hour out, and redrawing them costs
    every refresh."""
    if seconds is None:
        return "-"
    if seconds >= 600:
        return duration(round(seconds / 60) * 60).replace("m00s", "m")
    if seconds >= 60:
        return duration(round(seconds / 10) * 10)
    return f"{max(0, round(seconds))}s"


def marker_text(phase: dict[str, Any] | None) -> Text:
    status = (phase or {}).get("status") or "none"
    if status == "confirmed":
        return Text(f"{MARK_CONFIRMED} {phase.get('step')}", style="bold magenta")
    if status == "tentative":
        return Text(f"{MARK_TENTATIVE} {phase.get('step')}?", style="magenta")
    return Text("-", style="dim")


def _looks(text: Text) -> tuple:
    """What a Text shows: equal for two that draw the same."""
    return text.plain, str(text.style), tuple(text.spans)


class RunsTable(Widget, can_focus=True):
    """Every run in the workspace, one line each under a header; the highlighted row is the
    selected run (enter: its plot). Drawn with the line API from a strip kept per row: a live
    run's row changes every second, and a DataTable renders every visible cell again whenever any
    one changes, which cost more than the rest of the refresh's drawing."""

    # (label, justify) of each column; the header and the cells below it align alike
    COLUMNS = (("run", "left"), ("state", "left"), ("step/stop", "right"), ("eta", "right"), ("$", "right"),
               ("marker", "left"), ("rec", "right"))
    BINDINGS = [Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
                Binding("pageup", "move(-5)", show=False), Binding("pagedown", "move(5)", show=False),
                Binding("home", "move(-1000000)", show=False), Binding("end", "move(1000000)", show=False),
                Binding("enter", "choose", show=False)]
    COMPONENT_CLASSES = {"runs-table--header", "runs-table--cursor"}
    DEFAULT_CSS = """
    RunsTable { height: auto; }
    RunsTable > .runs-table--header { text-style: bold; }
    RunsTable > .runs-table--cursor { background: $block-cursor-blurred-background; }
    RunsTable:focus > .runs-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    """

    class Highlighted(Message):
        """The cursor is on another run."""

        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    class Chosen(Message):
        """Enter (or a click) on a run."""

        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    cursor_row: reactive[int] = reactive(0)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._ids: list[str] = []
        self._rows: list[tuple[Text, ...]] = []
        self._widths: tuple[int, ...] = ()
        self._top = 0                                  # first run row on screen
        self._strips: dict[tuple, Strip] = {}          # (row, looks, cursor, focus, width) -> strip

    @staticmethod
    def cells(run: dict[str, Any]) -> tuple[Text, ...]:
        state = run.get("state", "?")
        restarts = run.get("restarts") or 0
        step = f"{run.get('step') or 0}/{run.get('stop_at_step') or run.get('max_steps') or '?'}"
        rec = run.get("recommended_checkpoint")
        return (
            Text(str(run.get("name") or run["run_id"])[:20]),
            # "r2": restarted twice after crashes
            Text(state + (f" r{restarts}" if restarts else ""), style=STATE_STYLE.get(state, "")),
            Text(step),
            Text(eta_text(run.get("eta_s"))),
            Text(usd((run.get("cost_usd") or {}).get("total"))),
            marker_text(run.get("phase_transition")),
            Text("-" if rec is None else str(rec)),
        )

    @property
    def row_count(self) -> int:
        return len(self._ids)

    @property
    def selected_id(self) -> str | None:
        return self._ids[self.cursor_row] if self._ids else None

    def update_runs(self, runs: list[dict[str, Any]], selected: str | None) -> None:
        """New rows; only the lines that changed are drawn again (a column grows to fit)."""
        rows = [self.cells(r) for r in runs]
        widths = tuple(max([len(label)] + [cells[i].cell_len for cells in rows])
                       for i, (label, _) in enumerate(self.COLUMNS))
        changed = [i for i, cells in enumerate(rows)
                   if i >= len(self._rows) or list(map(_looks, cells)) != list(map(_looks, self._rows[i]))]
        relayout = len(rows) != len(self._rows)
        whole = relayout or widths != self._widths or [r["run_id"] for r in runs] != self._ids
        self._ids, self._rows, self._widths = [r["run_id"] for r in runs], rows, widths
        if selected in self._ids:
            self.cursor_row = self._ids.index(selected)
        self.cursor_row = min(self.cursor_row, max(0, len(rows) - 1))
        if relayout:
            self.refresh(layout=True)
        elif whole:
            self.refresh()
        else:
            for i in changed:
                self._refresh_line(1 + i - self._top)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return 1 + len(self._rows)

    def _scroll_to_cursor(self) -> bool:
        """Keep the cursor's row on screen and the screen full; True if the window moved."""
        visible = max(1, self.size.height - 1)
        top = min(max(self._top, self.cursor_row - visible + 1), self.cursor_row,
                  max(0, len(self._rows) - visible))
        moved, self._top = top != self._top, max(0, top)
        return moved

    def watch_cursor_row(self, old: int, new: int) -> None:
        if self._scroll_to_cursor():
            self.refresh()
        else:
            self._refresh_line(1 + old - self._top)
            self._refresh_line(1 + new - self._top)
        if self._ids:
            self.post_message(self.Highlighted(self._ids[new]))

    def on_resize(self) -> None:
        self._scroll_to_cursor()
        self.refresh()

    def action_move(self, delta: int) -> None:
        if self._ids:
            self.cursor_row = max(0, min(len(self._ids) - 1, self.cursor_row + delta))

    def action_choose(self) -> None:
        if self._ids:
            self.post_message(self.Chosen(self._ids[self.cursor_row]))

    def on_click(self, event: events.Click) -> None:
        row = self._top + event.y - 1
        if event.y >= 1 and 0 <= row < len(self._ids):
            if row == self.cursor_row and event.chain > 1:
                self.action_choose()
            self.cursor_row = row

    def _refresh_line(self, y: int) -> None:
        if 0 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def _line(self, cells: tuple[Text, ...], style: Style) -> Strip:
        line = Text(no_wrap=True)
        for cell, width, (_, justify) in zip(cells, self._widths, self.COLUMNS):
            cell = cell.copy()
            cell.align(justify, width)
            line.append(" ")
            line.append_text(cell)
            line.append(" ")
        segments = list(line.render(self.app.console))
        return Strip(segments).apply_style(style).crop_extend(0, self.size.width, style)

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        if y == 0:
            header = self.get_component_rich_style("runs-table--header")
            return self._line(tuple(Text(label) for label, _ in self.COLUMNS), base + header)
        row = self._top + y - 1
        if not 0 <= row < len(self._rows):
            return Strip.blank(self.size.width, base)
        cursor = row == self.cursor_row
        key = (row, tuple(map(_looks, self._rows[row])), cursor, self.has_focus, self.size.width, self._widths)
        strip = self._strips.get(key)
        if strip is None:
            style = base + self.get_component_rich_style("runs-table--cursor") if cursor else base
            strip = self._line(self._rows[row], style)
            if len(self._strips) > 4 * (len(self._rows) + 8):
                self._strips.clear()
            self._strips[key] = strip
        return strip


def cost_line(run: dict[str, Any] | None, recommended: int | None, checkpoints: list[dict[str, Any]]) -> Text:
    """The selected run's money in one line, most important first so a narrow terminal keeps it:
    spent so far (train / eval / total), the rate now, the projection to stop_at_step and the cost
    up to the recommended checkpoint (the paper's "$9" figure)."""
    if not run:
        return Text("no run selected: press n to start one", style="dim")
    cost = run.get("cost_usd") or {}
    per_hour = run.get("usd_per_hour_now")
    if per_hour is None:
        live = run.get("state") in ("running", "stopping")
        per_hour = (run.get("gpu_count") or 0) * (run.get("gpu_hour_usd") or 0) if live else 0.0
    rec_cost = next((c.get("cost_usd_at") for c in checkpoints if c["step"] == recommended), None)
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"total {usd(cost.get('total'))}", style="bold")
    t.append(f" (train {amount(cost.get('train'))} eval {amount(cost.get('eval'))})")
    t.append(f"  {usd(per_hour)}/h")
    t.append(f"  at stop {usd(run.get('projected_cost_usd'))}")
    t.append("  to rec: -" if recommended is None else f"  to rec {recommended}: {usd(rec_cost)}", style="green")
    t.append(f"  {duration(run.get('elapsed_s'))} on {run.get('device') or 'cpu'}", style="dim")
    return t


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
        looks = _looks(text)
        if looks == self._shown:
            return
        layout = text.plain.count("\n") != self._text.plain.count("\n") or self._shown is None
        self._shown, self._text = looks, text
        self.refresh(layout=layout)


class CostBar(Panel):
    """The money line: always visible, on the main screen and the detail view."""

    def show(self, run: dict[str, Any] | None, recommendation: dict[str, Any] | None,
             checkpoints: list[dict[str, Any]]) -> None:
        rec = (recommendation or {}).get("recommended", (run or {}).get("recommended_checkpoint"))
        self.set_text(cost_line(run, rec, checkpoints))


class ChartsPanel(Widget, can_focus=True):
    """Sparklines of the run's key metrics over one shared step axis, with the phase marker in the
    same column under each. Taller panels get taller sparklines.

    Drawn with Textual's line API from strips built once per snapshot: going through a rich Text
    for every line cost more than the rest of a refresh put together."""

    selected: reactive[int] = reactive(0)
    LABEL = 16  # label (8) + last value (8)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.view: RunView | None = None
        self._drawn: tuple | None = None
        self._strips: list[Strip] | None = None

    def show(self, view: RunView | None) -> None:
        """Draw a new snapshot's run, only if what the panel shows changed: a live run between
        its steps brings the same series (the same objects) every second."""
        self.view = view
        drawn = None if view is None else (
            view.run_id, id(view.series), repr(view.phase), view.step_range,
            view.run.get("seconds_per_step"), eta_text(view.run.get("eta_s")))
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
            self._strips = [Strip([Segment(text, base + _style(style)) for text, style in parts if text])
                            .crop_extend(0, width, base) for parts in self.lines()]
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)

    def lines(self) -> list[list[tuple[str, str]]]:
        """The panel as lines of (text, style) parts, top to bottom."""
        view, width, height = self.view, self.size.width, self.size.height
        if view is None:
            return [[("no data yet", "dim")]]
        sw = max(4, width - self.LABEL - 1)
        pad = " " * (self.LABEL + 1)
        x0, x1 = view.step_range
        phase = view.phase or {}
        status = phase.get("status")
        mcol = column_of(phase["step"], x0, x1, sw) if status in ("tentative", "confirmed") else None
        rows = max(1, (height - 2) // len(CHARTS) - 1)
        mstyle = "bold magenta" if status == "confirmed" else "magenta"
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
        pace = " ".join(p for p in (
            f"{view.run['seconds_per_step']:.2f} s/step" if view.run.get("seconds_per_step") else "",
            f"eta {eta_text(view.run['eta_s'])}" if view.run.get("eta_s") is not None else "") if p)
        gap = sw - len(axis) - len(end)
        if pace and gap >= len(pace) + 2:
            left = (gap - len(pace)) // 2
            axis += " " * left + pace
            gap -= left + len(pace)
        out.append([(pad + axis + " " * max(1, gap) + end, "dim")])
        if status in ("tentative", "confirmed"):
            label = dict(CHARTS).get(phase.get("signal"), phase.get("signal") or "")
            out.append([(pad, ""), (f"{MARK_TENTATIVE} tentative {MARK_CONFIRMED} confirmed  "[:sw], "dim"),
                        (f"{status} @ {phase.get('step')}: {label} {phase.get('direction') or ''}"[:max(0, sw - 33)],
                         mstyle)])
        else:
            out.append([(pad, ""), ("no phase transition yet"[:sw], "dim")])
        return out


@functools.lru_cache(maxsize=64)
def _style(spec: str) -> Style:
    return Style.parse(spec) if spec else Style()


class CheckpointsTable(DataTable):
    """Checkpoints of the selected run: where they sit on the curves, what they cost, how they scored."""

    BINDINGS = [Binding("j", "cursor_down", show=False), Binding("k", "cursor_up", show=False)]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self._shape: tuple = ()
        self._rows_data: tuple = ()
        self._run_id: str | None = None

    def update_rows(self, rows: list[dict[str, Any]], run_id: str | None = None) -> None:
        """The run's checkpoints; a run shown for the first time opens on its recommended one."""
        new_run, self._run_id = run_id != self._run_id, run_id
        tasks = sorted({t for r in rows for t in r["evals"]})
        data = tuple((r["step"], r["epoch_pct"], r["format"], r["length"], r["phase"], r["cost_usd_at"],
                      tuple(r["evals"].get(t) for t in tasks), r["avg"], r["recommended"], r.get("best"))
                     for r in rows)
        if data == self._rows_data:
            return
        self._rows_data = data
        shape = tuple(tasks)
        keep = self.cursor_row
        if shape != self._shape or not self.columns:
            self.clear(columns=True)
            self._shape = shape
            for label in ("  ", "step", "%ep", "format", "length", "phase", "$ at"):
                self.add_column(label)
            for t in tasks:
                self.add_column(t[:8])
            self.add_column("avg")
        else:
            self.clear()
        for r in rows:
            style = "bold green" if r["recommended"] else ""
            ep = "-" if r["epoch_pct"] is None else f"{r['epoch_pct']:.0f}%"
            mark = ("*" if r["recommended"] else " ") + ("+" if r.get("best") else " ")
            cells = [Text(mark, style=style), Text(str(r["step"]), style=style),
                     Text(ep), Text(fmt_value(r["format"])), Text(fmt_value(r["length"])),
                     Text(r["phase"] or "-", style="magenta" if r["phase"] == "after" else ""),
                     Text(usd(r["cost_usd_at"]))]
            cells += [Text("-" if r["evals"].get(t) is None else f"{100 * r['evals'][t]:.1f}", style=style)
                      for t in tasks]
            cells.append(Text("-" if r["avg"] is None else f"{100 * r['avg']:.1f}", style=style))
            self.add_row(*cells, key=str(r["step"]))
        if self.row_count:
            self.move_cursor(row=min(keep, self.row_count - 1), animate=False)
        if new_run:
            self.select_step(next((r["step"] for r in rows if r["recommended"]), None))

    def select_step(self, step: int | str | None) -> None:
        keys = [str(k.value) for k in self.rows]
        if step is not None and str(step) in keys:
            self.move_cursor(row=keys.index(str(step)), animate=False)

    @property
    def selected_step(self) -> int | str | None:
        """The highlighted checkpoint's step, or "base" for the base model's row."""
        if not self.row_count:
            return None
        key = str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        return key if key == "base" else int(key)


def recommendation_line(run: dict[str, Any] | None, rec: dict[str, Any] | None) -> Text:
    """What the checkpoint marks mean for this run: the recommended one (Tina's rule), the best
    evaluated one, and whether they disagree."""
    t = Text(no_wrap=True, overflow="ellipsis")
    if not run:
        return t
    rec = rec or {}
    recommended = rec.get("recommended", run.get("recommended_checkpoint"))
    best = rec.get("best_evaluated", run.get("best_evaluated_checkpoint"))
    phase = run.get("phase_transition") or {}
    if recommended is not None:
        t.append(f"* {recommended} recommended", style="bold green")
        t.append(f" (latest at or before the transition @ {phase.get('step', '?')})", style="dim")
    else:
        t.append("* none recommended yet: " + (rec.get("reason") or "no phase transition yet").split(";")[0],
                 style="dim")
    if best is not None:
        t.append(f"   + {best} best evaluated", style="bold")
        if best != recommended and recommended is not None:
            t.append("  (they disagree: evaluate both)", style="yellow")
    return t


def meter(frac: float, width: int) -> str:
    frac = max(0.0, min(1.0, frac))
    n = int(round(frac * width))
    return "[" + "|" * n + " " * (width - n) + "]"


class GpuPanel(Panel):
    """Utilisation and memory per GPU from the run's latest system sample (nvitop-style bars)."""

    def show(self, run: dict[str, Any] | None, system: list[dict[str, Any]]) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        if not run:
            self.set_text(t)
            return
        gpus = run.get("gpu_count") or 0
        if not system:
            device = run.get("device") or "cpu"
            what = "CPU" if not gpus or str(device).lower() == "cpu" else f"{gpus}x {device} (no sample yet)"
            t.append(f"{what}\n", style="bold")
            t.append(f"{usd(run.get('gpu_hour_usd'))}/GPU-hour", style="dim")
            self.set_text(t)
            return
        bar = max(10, min(40, (self.size.width or 80) // 2 - 20))
        for g in system:
            util = g.get("util") or 0
            used, total = g.get("mem_used") or 0, g.get("mem_total") or 0
            t.append(f"GPU{g.get('index', '?')} ", style="bold")
            t.append(f"util {meter(util / 100, bar)} {util:3.0f}%  ", style="green" if util >= 50 else "yellow")
            t.append(f"mem {meter(used / total if total else 0, bar)} {used / 1024:.1f}/{total / 1024:.1f}G")
            if g.get("power_w") is not None:
                t.append(f"  {g['power_w']:.0f}W", style="dim")
            t.append("\n")
        self.set_text(t)


class LogTail(Log):
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
