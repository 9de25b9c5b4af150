"""Text plotting for the cockpit: step-bucketed sparklines with a phase marker, a braille plot,
debiased EMA smoothing. Pure functions over ``[(step, value)]`` so they are easy to test.

Every sparkline of a run buckets by *step* over the same ``[x0, x1]`` range, so a given step falls
in the same column under every metric and the phase marker lines up across them.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from tina_core.events import CONFIRMED, MARKED

Points = Sequence[tuple[float, float]]

# Eight block heights; all single-width, present in every terminal font that draws box lines.
BARS = " ▁▂▃▄▅▆▇█"
MARK_TENTATIVE = "┆"
MARK_CONFIRMED = "│"


def _finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(float(s), float(v)) for s, v in points
            if v is not None and s is not None and math.isfinite(v) and math.isfinite(s)]


def column_of(step: float, x0: float, x1: float, width: int) -> int:
    """The column (0..width-1) that ``step`` falls in when [x0, x1] spans ``width`` columns."""
    if width <= 1 or x1 <= x0:
        return 0
    return max(0, min(width - 1, int((step - x0) / (x1 - x0) * width)))


def bucket_mean(points: Points, x0: float, x1: float, width: int) -> list[float | None]:
    """Mean of the values in each of ``width`` equal step ranges (None where a range is empty).

    The mean, not the max: noisy per-step rewards would otherwise read as their best outliers."""
    sums = [0.0] * width
    counts = [0] * width
    span, last, isfinite = x1 - x0, width - 1, math.isfinite
    whole = width <= 1 or span <= 0  # everything in column 0, as column_of says
    # column_of's arithmetic inlined, in its order (so a step's column is the marker's): this loop
    # runs for every point of every chart each time a live run logs a step
    for s, v in points:
        if v is None or s is None or not (isfinite(v) and isfinite(s)):
            continue
        c = 0 if whole else int((s - x0) / span * width)
        c = 0 if c < 0 else last if c > last else c
        sums[c] += v
        counts[c] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(width)]


def spark_rows(values: Sequence[float | None], rows: int = 1) -> list[str]:
    """A sparkline ``rows`` characters tall (8 levels per row), top row first. An empty bucket
    between two filled ones repeats the previous height so a sparse series reads as a line; empty
    buckets before the first value and after the last stay blank (steps not trained yet)."""
    given = {i: v for i, v in enumerate(values) if v is not None}
    known = list(given)
    if not known:
        return [" " * len(values)] * rows
    lo, hi = min(given.values()), max(given.values())
    span = hi - lo
    levels: list[int] = []
    last: float | None = None
    for i, value in enumerate(values):
        v = last if value is None and known[0] < i < known[-1] else value
        last = v
        if v is None:
            levels.append(0)
        else:
            levels.append(rows * 4 if span <= 0 else 1 + int(round((v - lo) / span * (rows * 8 - 1))))
    return ["".join(BARS[max(0, min(8, lv - (rows - 1 - r) * 8))] for lv in levels) for r in range(rows)]


def marker_line(width: int, column: int | None, status: str | None) -> str:
    """A row of spaces with the phase marker at ``column`` (dashed when tentative)."""
    if column is None or status not in MARKED or width <= 0:
        return " " * max(width, 0)
    ch = MARK_CONFIRMED if status == CONFIRMED else MARK_TENTATIVE
    column = max(0, min(width - 1, column))
    return " " * column + ch + " " * (width - column - 1)


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average: early points are not pulled toward 0."""
    out: list[float] = []
    last, num = 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        num += 1
        debias = 1 - weight ** num
        out.append(last / debias if debias > 0 else v)
    return out


# Braille: each cell is 2 dots wide and 4 high; bit for dot (col, row) from the top-left.
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def braille_plot(points: Points, width: int, height: int, *, x0: float | None = None,
                 x1: float | None = None, lo: float | None = None, hi: float | None = None) -> list[str]:
    """``height`` rows of ``width`` braille cells drawing the series as connected dots."""
    pts = _finite(points)
    cells = [[0] * width for _ in range(height)]
    if pts and width > 0 and height > 0:
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        x0 = min(xs) if x0 is None else x0
        x1 = max(xs) if x1 is None else x1
        lo = min(ys) if lo is None else lo
        hi = max(ys) if hi is None else hi
        dw, dh = width * 2, height * 4
        xspan = (x1 - x0) or 1.0
        yspan = (hi - lo) or 1.0

        def dot(px: int, py: int) -> None:
            if 0 <= px < dw and 0 <= py < dh:
                cells[py // 4][px // 2] |= _BRAILLE_BITS[py % 4][px % 2]

        prev = None
        for s, v in pts:
            px = int(round((s - x0) / xspan * (dw - 1)))
            py = int(round((1 - (min(max(v, lo), hi) - lo) / yspan) * (dh - 1)))
            if prev is not None:  # join to the previous dot so steep changes stay visible
                (qx, qy) = prev
                n = max(abs(px - qx), abs(py - qy))
                for i in range(1, n):
                    dot(qx + round((px - qx) * i / n), qy + round((py - qy) * i / n))
            dot(px, py)
            prev = (px, py)
    return ["".join(chr(0x2800 + b) if b else " " for b in row) for row in cells]


def value_at(points: Points, step: float) -> tuple[float, float] | None:
    """The point whose step is nearest to ``step``."""
    pts = _finite(points)
    if not pts:
        return None
    return min(pts, key=lambda p: abs(p[0] - step))


def fmt_value(v: float | None) -> str:
    """A short, fixed-ish width rendering of a metric value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


# --- overlays: several runs on one axis ---------------------------------------------------------
# Each marked run's glyph: told apart without colour (a monochrome terminal, a colour-blind reader,
# a screenshot); each also has a colour of the 8-colour palette (tina_tui.widgets.text.MARK_STYLES).
MARK_GLYPHS = ("*", "+", "o", "x", "#", "@")
MAX_OVERLAY = len(MARK_GLYPHS)


def shifted(points: Points, offset: float) -> list[tuple[float, float]]:
    """``points`` with ``offset`` taken off every step (aligned on a run's transition: step 0 is it)."""
    return [(s - offset, v) for s, v in _finite(points)]


def overlay_grid(series: Sequence[Points], x0: float, x1: float, width: int, height: int,
                 lo: float, hi: float) -> list[list[int | None]]:
    """``height`` rows of ``width`` cells, each the index of the series drawn there (or None): every
    series is bucketed by step like the sparklines (the mean per column) and each column's mean is
    put in the row of its value. Where two series meet in a cell the one listed first is drawn."""
    grid: list[list[int | None]] = [[None] * width for _ in range(height)]
    span = (hi - lo) or 1.0
    for i in reversed(range(len(series))):
        for c, v in enumerate(bucket_mean(series[i], x0, x1, width)):
            if v is not None:
                row = int(round((1 - (min(max(v, lo), hi) - lo) / span) * (height - 1)))
                grid[row][c] = i
    return grid
