"""Online detection of the format phase transition, and the checkpoint it recommends.

Tina's finding: format reward and completion length turn sharply at some step, and the checkpoint
with the best held-out accuracy sits at or just before that turn. This module watches those
signals as they are logged: completion length and every format reward that the run's recipe scores
with (``params_for_run``; all known ones for a run without a recipe):

1. live: a two-sided CUSUM on the raw per-step values, standardised against a reference window that
   lags behind the current step (and stops moving while a change is building up, so a slow ramp
   cannot drag the reference along with it). An alarm drops a *tentative* marker at the step where
   the evidence started to accumulate.
2. confirm: once enough points follow the marker, ruptures (PELT, l2 cost, ``jump=1``) re-segments
   the neighbourhood. A breakpoint near the marker with a large enough shift *confirms* it and fixes
   its position; none rejects the alarm and the watch goes on after it.

Everything runs on the whole series each time (results are cached by the store), and each decision
uses only points up to the step it is made at, so what is reported is what an online detector would
have said. Parameters live in PhaseParams; bench/detector.py is what justifies their defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import yaml

from tina_core.analysis.metric_keys import COMPLETION_LENGTH
from tina_core.caches import Cache
from tina_core.rundir import FileStamp
from tina_core.recipe.rewards import FORMAT_REWARD_KEYS, FORMAT_REWARD_METRICS


def watched_signals(format_reward_keys: Iterable[str] = FORMAT_REWARD_KEYS) -> tuple[str, ...]:
    """The metrics to watch: the logged mean of each of these format rewards, then completion length."""
    keys = set(format_reward_keys)
    return (*(m for k, m in zip(FORMAT_REWARD_KEYS, FORMAT_REWARD_METRICS) if k in keys), COMPLETION_LENGTH)


@dataclass(frozen=True)
class PhaseParams:
    signals: tuple[str, ...] = watched_signals()  # every known format reward: a run without a recipe
    window: int = 50          # reference window, in logged points
    lag: int = 5              # gap between the reference window and the point being tested
    min_ref: int = 6          # points the reference needs before watching starts
    k: float = 1.0            # CUSUM slack (reference sigmas): a smaller shift never accumulates
    h: float = 8.0            # CUSUM alarm threshold (reference sigmas)
    abs_floor: float = 0.02   # sigma floor: a reward flat at exactly 0 still has a scale
    rel_floor: float = 0.02   # sigma floor relative to |reference mean| (lengths in tokens)
    confirm_points: int = 12  # points after the marker before ruptures may confirm it
    confirm_span: int = 40    # at most this many points after the marker go into the check
    min_size: int = 3         # ruptures: shortest segment
    penalty: float = 4.0      # ruptures: breakpoint penalty, x sigma^2 x log(points)
    min_shift: float = 1.5    # confirmed only if the level moved by this many reference sigmas
    min_part: float = 0.15    # ...and the marker's own breakpoint carries this much of the move
    join_within: int = 50     # other signals turning within this many steps are listed too


DEFAULT = PhaseParams()
# The parameters for a run's recipe snapshot, while the file stays the same (parsing it costs about
# a millisecond, and the cockpit asks for a live run every second).
_RUN_PARAMS: Cache[tuple[Path, PhaseParams], PhaseParams] = Cache("phase.params_for_run", 256)


def params_for_run(run_path: str | os.PathLike, base: PhaseParams = DEFAULT) -> PhaseParams:
    """``base`` watching the format rewards that the run's recipe snapshot (``recipe.yaml``) scores
    with; ``base`` itself for a run without one (imported) or with an unreadable one.
    Remembered per snapshot file state: the cockpit asks for every run on every refresh."""
    from tina_core.recipe.loader import Recipe, parse_yaml

    path = Path(run_path) / "recipe.yaml"
    stamp = FileStamp.of(path)
    if stamp is None:
        return base

    def read() -> PhaseParams:
        try:
            data = parse_yaml(path.read_text())
            keys = Recipe(source=path, data=data).format_reward_keys if isinstance(data, dict) else None
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):  # a damaged snapshot
            keys = None
        return base if keys is None else dataclasses.replace(base, signals=watched_signals(keys))
    return _RUN_PARAMS.fetch((path, base), stamp, read)


@dataclass(frozen=True)
class Change:
    signal: str
    step: int            # first step of the new regime (the marker)
    detected_at: int     # step at which the live alarm fired
    status: str          # tentative | confirmed | rejected
    size: float          # the move, in the signal's units
    direction: str       # up | down


def _clean(series: Iterable[tuple[int, float]]) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for s, v in series:
        if v is not None and math.isfinite(v):
            steps.append(int(s))
            values.append(float(v))
    return steps, values


def _ref_stats(c1: list[float], c2: list[float], a: int, b: int, p: PhaseParams) -> tuple[float, float]:
    n = b - a
    mean = (c1[b] - c1[a]) / n
    var = max((c2[b] - c2[a]) / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, max(math.sqrt(var), p.abs_floor, p.rel_floor * abs(mean))


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


def _confirm(x: list[float], onset: int, ref: tuple[float, float], p: PhaseParams, direction: str
             ) -> tuple[str, int, float]:
    """('confirmed'|'rejected'|'tentative', index of the new regime's first point, size)."""
    n = len(x)
    mean0, sigma = ref
    post = x[onset: min(n, onset + p.confirm_span)]
    tail = post[-p.confirm_points:]
    size = sum(tail) / len(tail) - mean0
    if n - onset < p.confirm_points:
        return "tentative", onset, size
    if abs(size) < p.min_shift * sigma or (size > 0) != (direction == "up"):
        return "rejected", onset, size  # too small to pass below: spare the segmentation
    import numpy as np
    import ruptures

    lo = max(0, onset - p.window - p.lag)
    hi = min(n, onset + p.confirm_span)
    seg = np.asarray(x[lo:hi], dtype=float).reshape(-1, 1)
    pen = p.penalty * sigma * sigma * math.log(len(seg))
    pelt = ruptures.Pelt(custom_cost=_l2_cost(), min_size=p.min_size, jump=1)
    bkps = pelt.fit(seg).predict(pen=pen)[:-1]
    near = [b for b in bkps if onset - lo - p.window <= b <= onset - lo + p.confirm_points]
    if not near:
        return "rejected", onset, size
    # The new regime starts at the first breakpoint that carries a real part of the move: a ramp
    # is cut into several steps, and a low reward may flicker a little before it turns.
    edges = [0, *bkps, len(seg)]
    sign = 1.0 if direction == "up" else -1.0
    total = float(seg[-p.confirm_points:, 0].mean() - seg[: max(near[0], 1), 0].mean())
    best = None
    for b in near:
        i = edges.index(b)
        step_shift = sign * float(seg[b:edges[i + 1], 0].mean() - seg[edges[i - 1]:b, 0].mean())
        if step_shift >= max(p.min_shift * sigma, p.min_part * abs(total)):
            best = b
            break
    if best is None or sign * total < p.min_shift * sigma:
        return "rejected", onset, size
    return "confirmed", lo + best, float(seg[best:, 0][-p.confirm_points:].mean() - mean0)


def alarms(signal: str, series: Iterable[tuple[int, float]], params: PhaseParams = DEFAULT
           ) -> Iterator[Change]:
    """Every live alarm in order, each with its verdict (``rejected`` ones included), stopping
    after the first that is not rejected."""
    p = params
    steps, x = _clean(series)
    n = len(x)
    c1, c2 = [0.0], [0.0]
    for v in x:
        c1.append(c1[-1] + v)
        c2.append(c2[-1] + v * v)
    s_up = s_down = 0.0
    start_up = start_down = None  # where the current accumulation began
    for t in range(p.min_ref + p.lag, n):
        ref_end = t - p.lag
        building = [s for s in (start_up, start_down) if s is not None]
        if building:
            ref_end = min(ref_end, min(building))
        ref_start = max(0, ref_end - p.window)
        if ref_end - ref_start < p.min_ref:
            continue
        mean, sigma = _ref_stats(c1, c2, ref_start, ref_end, p)
        z = (x[t] - mean) / sigma
        s_up = max(0.0, s_up + z - p.k)
        s_down = max(0.0, s_down - z - p.k)
        start_up = (t if start_up is None else start_up) if s_up > 0 else None
        start_down = (t if start_down is None else start_down) if s_down > 0 else None
        if s_up > p.h or s_down > p.h:
            direction = "up" if s_up > p.h else "down"
            onset = start_up if direction == "up" else start_down
            # Judged with what is known now: the alarm's own points, then up to confirm_span
            # points past the marker as they arrive.
            upto = x[: max(t + 1, min(n, onset + p.confirm_span))]
            status, idx, size = _confirm(upto, onset, (mean, sigma), p, direction)
            yield Change(signal, steps[idx], steps[t], status, size, direction)
            if status != "rejected":
                return
            s_up = s_down = 0.0
            start_up = start_down = None


def detect_signal(signal: str, series: Iterable[tuple[int, float]], params: PhaseParams = DEFAULT
                  ) -> Change | None | bool:
    """The first change of one signal that is not rejected; None when there is none; False when
    there are too few points to say anything."""
    series = list(series)
    if len(_clean(series)[0]) < params.min_ref + params.lag + 1:
        return False
    for c in alarms(signal, series, params):
        if c.status != "rejected":
            return c
    return None


def detect(series: dict[str, Iterable[tuple[int, float]]], params: PhaseParams = DEFAULT) -> dict | None:
    """The phase object: the earliest change among the signals, or status 'none'; None while no
    signal has enough points."""
    changes, enough = [], False
    for signal in params.signals:
        if signal not in series:
            continue
        c = detect_signal(signal, series[signal], params)
        if c is False:
            continue
        enough = True
        if c is not None:
            changes.append(c)
    if not enough:
        return None
    if not changes:
        return {"step": None, "signal": None, "signals": [], "status": "none", "size": None,
                "direction": None, "detected_at": None}
    first = min(changes, key=lambda c: (c.step, params.signals.index(c.signal)))
    joined = [c.signal for c in sorted(changes, key=lambda c: c.step)
              if c.step - first.step <= params.join_within]
    return {"step": first.step, "signal": first.signal, "signals": joined, "status": first.status,
            "size": first.size, "direction": first.direction, "detected_at": first.detected_at}


def recommend(phase: dict | None, checkpoints: Sequence[dict]) -> dict:
    """Tina's rule: the latest complete checkpoint at or before the transition. Also the best
    evaluated checkpoint (mean over its tasks) when evaluations exist, and whether they differ."""
    steps = sorted(c["step"] for c in checkpoints)
    scored = [c for c in checkpoints if c.get("avg") is not None]
    best = max(scored, key=lambda c: (c["avg"], -c["step"]))["step"] if scored else None
    rec = None
    if phase is None:
        reason = "not enough metrics yet to look for a phase transition"
    elif phase["status"] == "none":
        reason = "no phase transition in format reward or completion length yet"
    else:
        before = [s for s in steps if s <= phase["step"]]
        where = f"{phase['status']} phase transition at step {phase['step']} ({phase['signal']})"
        if before:
            rec = before[-1]
            reason = f"latest complete checkpoint at or before the {where}"
        else:
            reason = f"no complete checkpoint at or before the {where}"
    if best is not None:
        reason += f"; best evaluated: checkpoint-{best}"
    return {"recommended": rec, "best_evaluated": best,
            "disagree": rec is not None and best is not None and rec != best, "reason": reason}
