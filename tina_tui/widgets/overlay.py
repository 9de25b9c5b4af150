"""The marked runs' chosen metric on one axis (the charts tab and the detail view once two runs or
more are marked): each run in its own glyph and colour, aligned by step or by each run's transition
(``a``), its transition marked in its own glyph under the plot, a legend that reads without colour.

Pure: lines of (text, style) parts from an ``Overlay``, so the charts tab and the detail view draw
the same thing at any size.
"""

from __future__ import annotations

from typing import Sequence

from tina_core.events import CONFIRMED
from tina_tui.view import Overlay, OverlayRun
from tina_tui.plot import MARK_CONFIRMED, MARK_GLYPHS, column_of, fmt_value, overlay_grid, shifted, value_at
from tina_tui.widgets.text import MARK_STYLES

Parts = list[tuple[str, str]]
AXIS = 9          # the value labels' column
ALIGNS = ("step", "transition")


def mark_of(run: OverlayRun) -> tuple[str, str]:
    """(glyph, style) of a marked run."""
    return MARK_GLYPHS[run.mark], MARK_STYLES[run.mark]


def drawn_series(overlay: Overlay, key: str, align: str, detail: bool = False
                 ) -> list[tuple[OverlayRun, list[tuple[float, float]]]]:
    """Each run's points of ``key`` on the overlay's x axis: steps, or steps from the run's own
    transition (a run without one is left out of that alignment)."""
    out = []
    for run in overlay.runs:
        pts = (run.detail if detail and run.detail else None) or run.series.get(key) or []
        if align == "transition":
            if run.transition is None:
                continue
            pts = shifted(pts, run.transition)
        out.append((run, list(pts)))
    return out


def x_range(drawn: Sequence[tuple[OverlayRun, list[tuple[float, float]]]], align: str) -> tuple[float, float]:
    xs = [0.0] + [s for _, pts in drawn for s, _ in pts]  # step 0 (by step), the transitions (by transition)
    lo, hi = min(xs), max(xs)
    return lo, hi if hi > lo else lo + 1


def legend(overlay: Overlay, align: str, width: int, at: float | None = None,
           drawn: Sequence[tuple[OverlayRun, list[tuple[float, float]]]] = ()) -> list[Parts]:
    """One entry per run, ``glyph name @transition`` (``?`` tentative), as many a line as fit; with
    ``at``, each run's value nearest that x instead of its transition."""
    pts_of = {r.run_id: pts for r, pts in drawn}
    entries: list[Parts] = []
    for run in overlay.runs:
        glyph, style = mark_of(run)
        p = run.phase or {}
        if at is not None:
            near = value_at(pts_of.get(run.run_id, []), at)
            tail = fmt_value(near[1]) if near else "-"
        elif run.transition is not None:
            tail = f"@{run.transition}" + ("" if p.get("status") == CONFIRMED else "?")
        else:
            tail = "no transition" + (" (not drawn)" if align == "transition" else "")
        entries.append([(glyph, style + " bold"), (f" {run.name}", ""), (f" {tail}", "dim")])
    full = sum(sum(len(t) for t, _ in e) + 2 for e in entries)
    budget = width if full <= width else max(12, width // max(1, min(len(entries), 3)) - 2)
    lines: list[Parts] = [[]]
    used = 0
    for e in entries:  # names shrink only when the entries do not fit on one line
        name = e[1][0]
        room = budget - len(e[0][0]) - len(e[2][0])
        if len(name) > room:
            e = [e[0], (name[:max(3, room - 1)] + "~", e[1][1]), e[2]]
        w = sum(len(t) for t, _ in e) + 2
        if used and used + w > width:
            lines.append([])
            used = 0
        lines[-1] += [*e, ("  ", "")]
        used += w
    return lines


def overlay_lines(overlay: Overlay, key: str, label: str, align: str, width: int, height: int, *,
                  detail: bool = False, cursor: float | None = None, header: Parts | None = None) -> list[Parts]:
    """The overlay as lines: an optional header, the plot with its value labels, the marker row, the
    step axis and the legend (values at ``cursor`` when one is given)."""
    drawn = drawn_series(overlay, key, align, detail)
    pw = max(8, width - AXIS)
    lines: list[Parts] = [header] if header else []
    x0, x1 = x_range(drawn, align) if drawn else (0.0, 1.0)
    leg = legend(overlay, align, width, at=cursor, drawn=drawn)
    rows = max(2, height - len(lines) - 2 - len(leg))
    values = [v for _, pts in drawn for _, v in pts]
    if not values:
        lines.append([(f"{'':>{AXIS}}", ""), (f"no {label} logged by the marked runs yet"
                                               + (" (none has a transition)" if align == "transition" and not drawn
                                                  else ""), "dim")])
        return lines + leg
    lo, hi = min(values), max(values)
    grid = overlay_grid([pts for _, pts in drawn], x0, x1, pw, rows, lo, hi)
    ccol = column_of(cursor, x0, x1, pw) if cursor is not None else None
    for r, cells in enumerate(grid):
        tag = fmt_value(hi) if r == 0 else fmt_value(lo) if r == rows - 1 else ""
        parts: Parts = [(f"{tag:>{AXIS - 1}} ", "dim")]
        for c, i in enumerate(cells):
            ch, style = (" ", "") if i is None else (mark_of(drawn[i][0])[0], mark_of(drawn[i][0])[1] + " bold")
            if c == ccol:
                style = (style + " reverse").strip()
            parts.append((ch, style))
        lines.append(parts)
    lines.append([(" " * AXIS, ""), *_marker_row(drawn, align, x0, x1, pw)])
    lines.append([(" " * AXIS, ""), (_axis(x0, x1, pw, align), "dim")])
    return lines + leg


def _marker_row(drawn: Sequence[tuple[OverlayRun, list]], align: str, x0: float, x1: float, width: int) -> Parts:
    """Each run's transition in its own glyph (bold when confirmed); aligned on transitions they
    are all at 0, one line."""
    cells: list[tuple[str, str]] = [(" ", "")] * width
    if align == "transition":
        if drawn:
            cells[column_of(0, x0, x1, width)] = (MARK_CONFIRMED, "bold magenta")
        return cells
    for run, _ in reversed(drawn):  # the first marked on top where two meet
        if run.transition is not None:
            glyph, style = mark_of(run)
            confirmed = (run.phase or {}).get("status") == CONFIRMED
            cells[column_of(run.transition, x0, x1, width)] = (glyph, style + (" bold" if confirmed else " dim"))
    return cells


def _axis(x0: float, x1: float, width: int, align: str) -> str:
    if align == "transition":
        left, mid, right = f"{int(x0):+d}", "0 = each run's transition", f"{int(x1):+d}"
        zero = column_of(0, x0, x1, width)
        line = [" "] * width
        line[:len(left)] = left
        line[width - len(right):] = right
        start = max(len(left) + 1, min(zero - len(mid) // 2, width - len(right) - len(mid) - 1))
        if start + len(mid) < width - len(right):
            line[start:start + len(mid)] = mid
        return "".join(line)[:width]
    left, right = f"step {int(x0)}", f"{int(x1)}"
    return left + " " * max(1, width - len(left) - len(right)) + right


def chooser(labels: Sequence[str], selected: int, align: str) -> Parts:
    """The metric in view among the charted ones, and the alignment (``a`` switches)."""
    parts: Parts = []
    for i, label in enumerate(labels):
        parts += [(f" {label} ", "reverse bold" if i == selected else "dim")]
    parts.append(("  by step" if align == "step" else "  by transition", "bold"))
    parts.append((" (a)", "dim"))
    return parts
