"""One signal's lasting changes, judged one logged point at a time.

The contract (README, "Phase transition"): every verdict is a pure function of the signal's logged
points so far, in order. ``SignalWatch.push`` takes the next point and returns the verdicts it
caused; feeding the same points one at a time, in batches or all at once gives the same verdicts
at the same steps, because each is made at a fixed point of the series and never revised:

1. **Alarm (tentative).** A two-sided CUSUM on the raw values, standardised against a reference
   window that lags behind the point tested (and stops moving while a change builds up, so a slow
   ramp cannot drag it along). Its scale never falls below the signal's *noise floor*: the
   smallest gap between the values it has logged, once it has logged three (a reward that is the
   mean over G completions moves by 1/G of its range at a time: one completion is one sigma, never
   many), besides small absolute and relative floors. The marker sits where the evidence began to
   accumulate. A change among the first points, before a reference exists, is looked for at each
   point of the watch's first ``2 * head`` points, until one is found.
2. **Verdict, once.** When ``confirm_points`` points have followed the marker, the move is judged
   on them: confirmed when its new level lasts (the mean of the last ``confirm_points``), moved by
   at least ``min_shift`` reference sigmas and at least ``min_rel`` of the signal's range so far
   (the span of its ``confirm_points``-point running mean: a small wobble of a signal that already
   swung widely is no marker), and a change-point fit (ruptures, PELT) over the window before it and
   the points since finds a breakpoint that carries a real part of the move (the first such fixes
   the step: the alarm may have fired on a drift before the real turn). A move that is going the alarm's way
   but is not there yet (a ramp) is judged again at each point until it is, or until
   ``confirm_span`` points have followed the marker; otherwise it is rejected, and the watch goes on
   after it. A verdict, once made, is never recomputed with later points.
3. **Withdrawn only when it falls back.** A confirmed move holds until the mean of the signal's
   last ``confirm_points`` points keeps less than ``fallback`` of it (it went most of the way back);
   then it is withdrawn (status ``rejected``, ``withdrawn_at``) and the watch starts again from the
   level it fell back to. After a confirmed move the watch goes on against the new level, so a
   later move of the same signal is found too: a move in the same direction that starts within
   ``window`` points of it is the same move going on (a ramp), a later one a move of its own.

Light: numpy and ruptures, imported at the first verdict (``load_segmentation`` ahead of time).
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Iterable


@dataclass(frozen=True)
class PhaseParams:
    # What is watched: the chosen marker signals (canonical keys) and who chose them (recipe | user,
    # and through what); with watch_source "auto" they are chosen from the run's own keys
    # (signals.choose) and ``signals`` is empty.
    signals: tuple[str, ...] = ()
    watch_source: str = "auto"
    watch_by: str | None = None
    ended: bool = False       # the run has ended: an alarm its log ended before judging is a note
    window: int = 50          # reference window, in logged points
    lag: int = 5              # gap between the reference window and the point being tested
    min_ref: int = 6          # points the reference needs before watching starts
    k: float = 1.0            # CUSUM slack (reference sigmas): a smaller shift never accumulates
    h: float = 8.0            # CUSUM alarm threshold (reference sigmas)
    abs_floor: float = 0.02   # sigma floor: a reward flat at exactly 0 still has a scale
    rel_floor: float = 0.02   # sigma floor relative to |reference mean| (lengths in tokens)
    confirm_points: int = 12  # points after the marker before its verdict...
    confirm_span: int = 60    # ...and at most this many while the move is still building (a ramp)
    min_size: int = 3         # ruptures: shortest segment
    penalty: float = 4.0      # ruptures: breakpoint penalty, x sigma^2 x log(points)
    min_shift: float = 2.0    # confirmed only if the level moved by this many reference sigmas
    min_part: float = 0.15    # ...and the marker's own breakpoint carries this much of the move
    min_rel: float = 0.25     # ...and the move is this share of the signal's range so far
    fallback: float = 0.5     # withdrawn once the last confirm_points points keep less than this of it
    join_within: int = 50     # other signals turning within this many steps are listed too
    ramp_points: int = 10     # a move taking this many logged points to reach 80% of itself...
    ramp_share: float = 0.15  # ...and this share of the log is a ramp
    pinned_ratio: float = 0.9  # clipped ratio at or above this on both sides: length is at the cap
    pinned_points: int = 10   # ...over this many points either side of the step
    sure_sigmas: float = 3.0  # a confirmed move smaller than this (reference sigmas) has low confidence
    high_sigmas: float = 6.0  # a sharp confirmed move this large is sure even without length

    @property
    def head(self) -> int:
        """Points the live CUSUM cannot test at the start: its reference needs them."""
        return self.min_ref + self.lag


DEFAULT = PhaseParams()

TENTATIVE, CONFIRMED, REJECTED = "tentative", "confirmed", "rejected"


@dataclass(frozen=True)
class Change:
    signal: str
    step: int            # first step of the new level (the marker)
    detected_at: int     # step at which the live alarm fired
    status: str          # tentative | confirmed | rejected
    size: float          # the move, in the signal's units (new level - before)
    direction: str       # up | down
    before: float = 0.0  # the reference level it moved from
    sigma: float = 0.0   # the reference's scale (size / sigma: the move in sigmas)
    decided_at: int | None = None    # step of the verdict (confirmed, or rejected as it came)
    withdrawn_at: int | None = None  # step at which a confirmed move was found to have fallen back
    rel: float = 1.0     # the move as a share of the signal's range when it was judged

    @property
    def sigmas(self) -> float:
        return abs(self.size) / self.sigma if self.sigma else 0.0

    @property
    def holds(self) -> bool:
        return self.status != REJECTED


def load_segmentation() -> None:
    """Import what a verdict needs (numpy and ruptures, about a second with scipy) ahead of time.
    A live watch calls it as it starts: imported at the first alarm instead, the second would fall
    just when the run's recent snapshots are about to be pinned."""
    import numpy  # noqa: F401
    import ruptures  # noqa: F401


def _l2_cost():
    """ruptures' l2 cost (sum of squared deviations from the segment mean) from prefix sums: the
    same segmentation as ``model="l2"``, without a numpy var() per candidate segment."""
    from ruptures.base import BaseCost

    class CostL2Prefix(BaseCost):
        model = "l2"
        min_size = 1

        def fit(self, signal):
            self.signal = signal
            v = [float(a) for a in signal.reshape(-1)]
            self.c1, self.c2 = [0.0], [0.0]
            for a in v:
                self.c1.append(self.c1[-1] + a)
                self.c2.append(self.c2[-1] + a * a)
            return self

        def error(self, start, end):
            s1 = self.c1[end] - self.c1[start]
            return self.c2[end] - self.c2[start] - s1 * s1 / (end - start)

    return CostL2Prefix()


@dataclass
class _Alarm:
    onset: int       # index of the marker's point
    at: int          # index of the point the alarm fired at
    direction: str
    before: float
    sigma: float
    head: bool = False  # found among the first points (judged on its level alone)


@dataclass
class _Held:
    change: Change
    index: int       # index of its first point (the new level starts there)


@dataclass
class SignalWatch:
    """The online judge of one signal (see the module's contract)."""

    signal: str
    p: PhaseParams = DEFAULT
    steps: list[int] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    verdicts: list[Change] = field(default_factory=list)  # every verdict, in the order made
    held: list[_Held] = field(default_factory=list)       # confirmed moves that still hold, in order

    def __post_init__(self) -> None:
        self._c1, self._c2 = [0.0], [0.0]
        self._distinct: list[float] = []
        self.quantum = math.inf      # the smallest gap between logged values, once three are seen
        self._span = (math.inf, -math.inf)  # lowest and highest running mean of confirm_points
        self._base = 0               # the reference never reaches before this index
        self._alarm: _Alarm | None = None
        self._reset_cusum()

    # --- feeding -----------------------------------------------------------------------------
    def extend(self, points: Iterable[tuple[int, float]]) -> list[Change]:
        out: list[Change] = []
        for step, value in points:
            out += self.push(step, value)
        return out

    def push(self, step: int, value: float) -> list[Change]:
        """The next logged point; returns the verdicts it caused. Non-finite values are skipped."""
        if value is None or not math.isfinite(value):
            return []
        t = len(self.x)
        self.steps.append(int(step))
        self.x.append(float(value))
        self._c1.append(self._c1[-1] + value)
        self._c2.append(self._c2[-1] + value * value)
        self._note_value(float(value))
        out = self._fall_back(t)
        if self._alarm is None:
            # the head is looked for over the first 2 x head points (a CUSUM reference spanning
            # both levels is too wide to see the move), until the first alarm (it is recorded)
            head = self.p.head <= t < 2 * self.p.head and not self.verdicts
            alarm = self._head(t) if head else None
            if alarm is None:
                alarm = self._cusum(t)
            if alarm is not None:
                self._alarm = alarm
                out.append(self._record(self._change(alarm, TENTATIVE, self.x[alarm.onset] - alarm.before)))
        if self._alarm is not None and t - self._alarm.onset + 1 >= self.p.confirm_points:
            out += self._verdict(t)
        return out

    # --- state ---------------------------------------------------------------------------------
    def holding(self) -> list[Change]:
        """The confirmed moves that hold, each as far as it went: its size to the level it reached,
        its share of the signal's range now."""
        out = []
        for h in self.held:
            size = self.level_after(h) - h.change.before
            out.append(replace(h.change, size=size, rel=min(1.0, abs(size) / max(self.span, abs(size), 1e-300))))
        return out

    @property
    def pending(self) -> Change | None:
        """The tentative change awaiting its verdict."""
        a = self._alarm
        return None if a is None else self._change(a, TENTATIVE, self._mean(a.onset, len(self.x)) - a.before)

    def level_after(self, h: _Held) -> float:
        """The level a held move reached: the mean of its points (up to the next held move), the
        newest ``confirm_points`` of them, so a ramp counts as far as it went."""
        i = self.held.index(h)
        end = self.held[i + 1].index if i + 1 < len(self.held) else len(self.x)
        return self._mean(max(h.index, end - self.p.confirm_points), end)

    @property
    def span(self) -> float:
        """The signal's range so far: the span of its running mean over ``confirm_points``."""
        lo, hi = self._span
        return hi - lo if hi >= lo else 0.0

    # --- internals -----------------------------------------------------------------------------
    def _mean(self, a: int, b: int) -> float:
        return (self._c1[b] - self._c1[a]) / max(b - a, 1)

    def _note_value(self, v: float) -> None:
        v = round(v, 12)  # 0.1 + 0.2 and 0.3 are one value
        i = bisect.bisect_left(self._distinct, v)
        if i == len(self._distinct) or self._distinct[i] != v:
            self._distinct.insert(i, v)
            if len(self._distinct) >= 3:  # two values say nothing of a step: 0.1 and 0.8 may be the move itself
                d = self._distinct
                gaps = (d[j + 1] - d[j] for j in range(max(0, i - 1), min(len(d) - 1, i + 1))) \
                    if math.isfinite(self.quantum) else (b - a for a, b in zip(d, d[1:]))
                self.quantum = min(self.quantum, *gaps)
        n, k = len(self.x), self.p.confirm_points
        if n >= k:
            m = self._mean(n - k, n)
            self._span = (min(self._span[0], m), max(self._span[1], m))

    def _floor(self, mean: float) -> float:
        q = self.quantum if math.isfinite(self.quantum) else 0.0
        return max(self.p.abs_floor, self.p.rel_floor * abs(mean), q)

    def _ref(self, a: int, b: int) -> tuple[float, float]:
        n = b - a
        mean = (self._c1[b] - self._c1[a]) / n
        var = max((self._c2[b] - self._c2[a]) / n - mean * mean, 0.0) * n / max(n - 1, 1)
        return mean, max(math.sqrt(var), self._floor(mean))

    def _reset_cusum(self) -> None:
        self._up = self._down = 0.0
        self._start_up: int | None = None
        self._start_down: int | None = None

    def _change(self, a: _Alarm, status: str, size: float, onset: int | None = None, **kw) -> Change:
        span = max(self.span, abs(size), 1e-300)
        return Change(self.signal, self.steps[a.onset if onset is None else onset], self.steps[a.at], status,
                      size, a.direction, a.before, a.sigma, rel=min(1.0, abs(size) / span), **kw)

    def _record(self, c: Change) -> Change:
        self.verdicts.append(c)
        return c

    def _cusum(self, t: int) -> _Alarm | None:
        p = self.p
        ref_end = t - p.lag
        building = [s for s in (self._start_up, self._start_down) if s is not None]
        if building:
            ref_end = min(ref_end, min(building))
        ref_start = max(self._base, ref_end - p.window)
        if ref_end - ref_start < p.min_ref:
            return None
        mean, sigma = self._ref(ref_start, ref_end)
        z = (self.x[t] - mean) / sigma
        self._up = max(0.0, self._up + z - p.k)
        self._down = max(0.0, self._down - z - p.k)
        self._start_up = (t if self._start_up is None else self._start_up) if self._up > 0 else None
        self._start_down = (t if self._start_down is None else self._start_down) if self._down > 0 else None
        if self._up <= p.h and self._down <= p.h:
            return None
        direction = "up" if self._up > p.h else "down"
        onset = self._start_up if direction == "up" else self._start_down
        assert onset is not None
        return _Alarm(onset, t, direction, mean, sigma)

    def _head(self, t: int) -> _Alarm | None:
        """A change among the first points, which the CUSUM never tests (its reference needs
        them; a log every 10 steps spends 110 steps there). Looked for at each point from the first
        testable one: the level of the last ``min_ref`` points is the new regime, and the head's points
        before it that sit outside its band (3 of its sigmas; at least ``min_size`` in a row) the
        old one, if the level moved by ``h / 2`` sigmas; the marker where the points on the way up
        (each nearer the new level) left the first ones' level."""
        p = self.p
        new = self.x[t - p.min_ref + 1: t + 1]
        level = sum(new) / len(new)
        sd = max(statistics.stdev(new), self._floor(level))
        b = t - p.min_ref + 1
        while b > 0 and abs(self.x[b - 1] - level) <= 3 * sd:
            b -= 1
        if b < p.min_size or any(abs(v - level) <= 3 * sd for v in self.x[b - p.min_size: b]):
            prefix = self._head_prefix(t, level, sd)
            if prefix is None:
                return None
            b = prefix
        before = sum(self.x[:b]) / b
        if abs(level - before) < max(p.h / 2, p.min_shift) * sd:
            return None
        # a ramp into the new level starts where the points on the way there left the first ones'
        # level (a log every 10 steps sees a fast turn as a few points, each nearer the new level)
        first = sum(self.x[:p.min_size]) / p.min_size
        sign = 1.0 if level > first else -1.0
        onset, away = b, 0.2 * abs(level - first)
        while (onset - 1 >= p.min_size and sign * (self.x[onset - 1] - self.x[onset]) < 0
               and sign * (self.x[onset - 1] - first) >= away):
            onset -= 1
        if sign * (self.x[onset - 1] - first) >= away:
            onset = b  # not a ramp from the first level: a level of its own before the move
        before = sum(self.x[:onset]) / onset
        return _Alarm(onset, t, "up" if level > before else "down", before, sd, head=True)

    def _head_prefix(self, t: int, level: float, sd: float) -> int | None:
        """The first level as the head's opening points, when the points between it and the new
        level wander (a fast turn logged every 10 steps dips once on its way up): at least
        ``min_size`` first points all outside the new level's band on one side, and no point after
        them beyond the band on the other side. Returns where the first level ends."""
        p = self.p
        side = 1.0 if self.x[0] > level else -1.0
        m = 0
        while m < t - p.min_ref + 1 and side * (self.x[m] - level) > 3 * sd:
            m += 1
        if m < p.min_size or any(-side * (v - level) > 3 * sd for v in self.x[m: t + 1]):
            return None
        return m

    def _verdict(self, t: int) -> list[Change]:
        """Judge the pending alarm on the points up to ``t`` (its onset + confirm_points), once."""
        a = self._alarm
        assert a is not None
        self._alarm = None
        self._reset_cusum()
        status, idx, size = self._judge(a, t)
        decided = self.steps[t]
        building = 0 < (1.0 if a.direction == "up" else -1.0) * size and t - a.onset + 1 < self.p.confirm_span
        if status != CONFIRMED and building:
            self._alarm = a  # going its way, not there yet: judged again at the next point
            return []
        if status != CONFIRMED:
            return [self._record(self._change(a, REJECTED, size, decided_at=decided))]
        self._base = idx
        last = self.held[-1] if self.held else None
        if last is not None and last.change.direction == a.direction and idx - last.index < self.p.window:
            return []  # the move it follows goes on (a ramp the watch cut in two): one move, larger
        c = self._record(self._change(a, CONFIRMED, size, onset=idx, decided_at=decided))
        self.held.append(_Held(c, idx))
        return [c]

    def _judge(self, a: _Alarm, t: int) -> tuple[str, int, float]:
        p = self.p
        n = t + 1
        size = self._mean(n - p.confirm_points, n) - a.before
        sign = 1.0 if a.direction == "up" else -1.0
        span = max(self.span, abs(size))
        # the move against the noise of both levels (pooled), when the new level is quieter than
        # the old: a format learned makes a noisy reward steady
        new_mean, new_sd = self._ref(n - p.confirm_points, n)
        scale = min(a.sigma, math.sqrt((a.sigma ** 2 + new_sd ** 2) / 2))
        if sign * size < p.min_shift * scale or abs(size) < p.min_rel * span:
            return REJECTED, a.onset, size  # too small to pass below: spare the segmentation
        if a.head:  # no reference before it to segment against: the level it reached decides
            return (CONFIRMED if sign * size >= max(p.h / 2, p.min_shift) * a.sigma else REJECTED), a.onset, size
        import numpy as np
        import ruptures

        lo = max(0, a.onset - p.window - p.lag)
        seg = np.asarray(self.x[lo:n], dtype=float).reshape(-1, 1)
        pen = p.penalty * a.sigma * a.sigma * math.log(len(seg))
        bkps = ruptures.Pelt(custom_cost=_l2_cost(), min_size=p.min_size, jump=1).fit(seg).predict(pen=pen)[:-1]
        near = [b for b in bkps if a.onset - lo - p.window <= b <= len(seg) - p.min_size]
        if not near:
            return REJECTED, a.onset, size
        # The new level starts at the first breakpoint that carries a real part of the move: a ramp
        # is cut into several steps, and a low reward may flicker a little before it turns.
        edges = [0, *bkps, len(seg)]
        total = float(seg[-p.confirm_points:, 0].mean() - seg[: max(near[0], 1), 0].mean())
        for b in near:
            i = edges.index(b)
            step_shift = sign * float(seg[b:edges[i + 1], 0].mean() - seg[edges[i - 1]:b, 0].mean())
            if step_shift >= max(p.min_shift * scale, p.min_part * abs(total)):
                if sign * total < p.min_shift * scale:
                    break
                return CONFIRMED, lo + b, float(seg[b:, 0][-p.confirm_points:].mean() - a.before)
        return REJECTED, a.onset, size

    def _fall_back(self, t: int) -> list[Change]:
        """Withdraw the held moves the signal has gone most of the way back from (newest first)."""
        out: list[Change] = []
        k = self.p.confirm_points
        while self.held:
            h = self.held[-1]
            if t - h.index + 1 < k:
                break
            c = h.change
            sign = 1.0 if c.direction == "up" else -1.0
            kept = sign * (self._mean(t + 1 - k, t + 1) - c.before)
            if kept >= self.p.fallback * abs(c.size):
                break
            self.held.pop()
            out.append(self._record(replace(c, status=REJECTED, withdrawn_at=self.steps[t])))
            # start again after it: the reference is the level it fell back to
            self._base = t + 1
            self._alarm = None
            self._reset_cusum()
        return out
