"""Online detection of the format phase transition, and the checkpoint it recommends.

Tina's finding: format reward and completion length turn sharply at some step, and the checkpoint
with the best held-out accuracy sits at or just before that turn. What counts (README, "Phase
transition"):

- the format transition is a sharp, lasting change in a *format* reward (which rewards those are,
  and why: tina_core.analysis.signals);
- a completion-length turn nearby corroborates it; a length change alone, while format rewards
  exist and stay flat, is not the transition (it is reported as a note);
- length pinned at the cap (clipped ratio near 1, or sitting at its maximum) is no evidence either
  way;
- a run that logs no format reward gets a marker from its total reward only, with low confidence;
- a gradual ramp is reported as one, from where it starts.

Each signal is judged in two stages:

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
``params_for_run`` is the one place that says what a run watches: every reader asks it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import yaml

from tina_core.analysis import signals as sig
from tina_core.caches import Cache
from tina_core.events import Kind, is_kind
from tina_core.rundir import FileStamp


@dataclass(frozen=True)
class PhaseParams:
    # What is watched: the chosen marker signals (canonical keys) and who chose them (recipe | user,
    # and through what); with watch_source "auto" they are chosen from the run's own keys
    # (signals.choose) and ``signals`` is empty.
    signals: tuple[str, ...] = ()
    watch_source: str = "auto"
    watch_by: str | None = None
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
    ramp_points: int = 10     # a move taking this many logged points to reach 80% of itself...
    ramp_share: float = 0.15  # ...and this share of the log is a ramp
    pinned_ratio: float = 0.9  # clipped ratio at or above this on both sides: length is at the cap
    pinned_points: int = 10   # ...over this many points either side of the step
    sure_sigmas: float = 3.0  # a confirmed move smaller than this (reference sigmas) has low confidence
    high_sigmas: float = 6.0  # a sharp confirmed move this large is sure even without length


DEFAULT = PhaseParams()
# The parameters for a run's recipe snapshot and watch_changed events, while those files stay the
# same (parsing costs about a millisecond, and the cockpit asks for a live run every second).
_RUN_PARAMS: Cache[tuple[Path, PhaseParams], PhaseParams] = Cache("phase.params_for_run", 256)


def _recipe_watch(path: Path) -> tuple[tuple[str, ...] | None, str]:
    """(chosen signals or None for automatic, source) from a recipe snapshot: its ``watch:`` list
    (``auto`` or absent: the format rewards it scores with; none of those: automatic)."""
    from tina_core.recipe.loader import Recipe, parse_yaml
    from tina_core.recipe.rewards import FORMAT_REWARD_KEYS, FORMAT_REWARD_METRICS

    try:
        data = parse_yaml(path.read_text())
        if not isinstance(data, dict):
            return None, "auto"
        watch = data.get("watch")
        if isinstance(watch, list) and watch:
            return tuple(dict.fromkeys(sig.canonical(str(w)) for w in watch)), "recipe"
        if watch == "auto":
            return None, "auto"
        keys = Recipe(source=path, data=data).format_reward_keys
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):  # a damaged snapshot
        return None, "auto"
    metrics = tuple(m for k, m in zip(FORMAT_REWARD_KEYS, FORMAT_REWARD_METRICS) if k in keys)
    return (metrics, "recipe") if metrics else (None, "auto")


def _latest_watch_event(path: Path) -> dict | None:
    """The last ``watch_changed`` event of an events file, or None."""
    from tina_core.rundir import iter_jsonl

    try:
        if f'"{Kind.WATCH_CHANGED}"'.encode() not in path.read_bytes():
            return None
    except OSError:
        return None
    found = None
    for ev in iter_jsonl(path):
        if is_kind(ev, Kind.WATCH_CHANGED):
            found = ev
    return found


def params_for_run(run_path: str | os.PathLike, base: PhaseParams = DEFAULT) -> PhaseParams:
    """``base`` watching what the run says: its recipe snapshot (``recipe.yaml``: a ``watch:`` list,
    else the format rewards it scores with), then its latest ``watch_changed`` event (``signals``: a
    list, or null for the automatic choice; ``by``). A run with neither (imported) is watched
    automatically. Remembered while those two files stay the same: the cockpit asks for every run on
    every refresh."""
    run_path = Path(run_path)
    recipe, events = run_path / "recipe.yaml", run_path / "events.jsonl"
    stamps = (FileStamp.of(recipe), FileStamp.of(events))

    def read() -> PhaseParams:
        chosen, source, by = (*_recipe_watch(recipe), "recipe") if stamps[0] else (None, "auto", None)
        ev = _latest_watch_event(events) if stamps[1] else None
        if ev is not None:
            picked = ev.get("signals")
            by = str(ev.get("by") or "user")
            if isinstance(picked, list) and picked:
                chosen, source = tuple(dict.fromkeys(str(s) for s in picked)), "user"
            else:
                chosen, source = None, "auto"
        if source == "auto" and ev is None:
            by = None
        return dataclasses.replace(base, signals=chosen or (), watch_source=source, watch_by=by)
    return _RUN_PARAMS.fetch((run_path, base), stamps, read)


def wanted(params: PhaseParams, key: str) -> bool:
    """Whether ``detect`` reads this metric (canonical key): the chosen signals, every candidate
    (the watch is chosen, and explained, from them) and the clipped ratio. For readers that stream
    metrics lines (the supervisor's watch)."""
    return key in params.signals or sig.is_candidate(key) or key == sig.CLIPPED_RATIO


def series_keys(params: PhaseParams, available: Iterable[str]) -> list[str]:
    """The metrics ``detect`` needs of a run that logs ``available``."""
    return list(dict.fromkeys([*params.signals, *(k for k in available if wanted(params, k))]))


@dataclass(frozen=True)
class Change:
    signal: str
    step: int            # first step of the new regime (the marker)
    detected_at: int     # step at which the live alarm fired
    status: str          # tentative | confirmed | rejected
    size: float          # the move, in the signal's units
    direction: str       # up | down
    before: float = 0.0  # the reference level it moved from
    sigma: float = 0.0   # the reference's scale (size / sigma: the move in sigmas)


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


def load_segmentation() -> None:
    """Import what confirmation needs (numpy and ruptures, about a second with scipy) ahead of time.
    A live watch calls it as it starts: imported at the first alarm instead, the second would fall
    just when the run's recent snapshots are about to be pinned, and a fast run would train on
    past them meanwhile."""
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
    head = p.min_ref + p.lag      # points the live watch cannot test: the reference needs them
    early = _head_change(signal, steps, x, p) if n > head else None
    if early is not None:
        yield early
        if early.status != "rejected":
            return
    for t in range(head, n):
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
            yield Change(signal, steps[idx], steps[t], status, size, direction, mean, sigma)
            if status != "rejected":
                return
            s_up = s_down = 0.0
            start_up = start_down = None


def _head_change(signal: str, steps: list[int], x: list[float], p: PhaseParams) -> Change | None:
    """A change among the first points, which the live watch never tests (its reference needs
    them; a log every 10 steps spends 110 steps there). Looked for once, when the watch starts:
    the level of the last ``min_ref`` points is the new regime, and the head's points before it
    that sit outside its band (3 of its sigmas; at least ``min_size`` of them in a row) the old
    one, if the level moved by ``h / 2`` sigmas. Confirmed once ``confirm_points`` follow it and
    the move holds, as a live alarm is."""
    t = p.min_ref + p.lag
    new = x[t - p.min_ref + 1: t + 1]
    level = sum(new) / len(new)
    sd = max(statistics.stdev(new), p.abs_floor, p.rel_floor * abs(level))
    b = t - p.min_ref + 1
    while b > 0 and abs(x[b - 1] - level) <= 3 * sd:
        b -= 1
    if b < p.min_size or any(abs(v - level) <= 3 * sd for v in x[b - p.min_size: b]):
        return None
    before = sum(x[:b]) / b
    need = max(p.h / 2, p.min_shift) * sd
    if abs(level - before) < need:
        return None
    direction = "up" if level > before else "down"
    if len(x) - b < p.confirm_points:
        return Change(signal, steps[b], steps[t], "tentative", level - before, direction, before, sd)
    tail = x[b: b + p.confirm_span][-p.confirm_points:]
    size = sum(tail) / len(tail) - before
    status = "confirmed" if abs(size) >= need and (size > 0) == (direction == "up") else "rejected"
    return Change(signal, steps[b], steps[t], status, size, direction, before, sd)


def detect_signal(signal: str, series: Iterable[tuple[int, float]], params: PhaseParams = DEFAULT
                  ) -> Change | None | bool:
    """The first change of one signal that is not rejected; None when there is none; False when
    there are too few points to say anything."""
    return _judge_signal(signal, list(series), params)[0]


def _judge_signal(signal: str, series: list, p: PhaseParams) -> tuple[Change | None | bool, list[Change]]:
    """``detect_signal``'s answer and the alarms rejected on the way (moves that did not last)."""
    if len(_clean(series)[0]) < p.min_ref + p.lag + 1:
        return False, []
    rejected = []
    for c in alarms(signal, series, p):
        if c.status != "rejected":
            return c, rejected
        rejected.append(c)
    return None, rejected


def _shape(series: Sequence[tuple[int, float]], c: Change, p: PhaseParams) -> tuple[str, int | None]:
    """('sharp'|'ramp', the step where a ramp reaches 80% of its move): a move whose 5-point mean
    takes ``ramp_points`` logged points, and ``ramp_share`` of the log, or more to get there is a
    ramp (Tina's turns take 10-20 steps of ~850; a tiny run's, 13 of 100)."""
    steps, x = _clean(series)
    i = steps.index(c.step)
    slow = max(p.ramp_points, p.ramp_share * len(x))
    sign = 1.0 if c.size >= 0 else -1.0
    # the move as far as it goes on (a ramp is still climbing when it is confirmed)
    later = x[i: i + 4 * p.confirm_span][-p.confirm_points:]
    move = max(sign * c.size, sign * (sum(later) / len(later) - c.before)) * sign
    target = c.before + 0.8 * move
    for j in range(i, len(x)):
        w = x[max(i, j - 4): j + 1]
        if sign * (sum(w) / len(w) - target) >= 0:
            return ("ramp", steps[j]) if j - i >= slow else ("sharp", None)
    return ("ramp", None) if len(x) - i > slow else ("sharp", None)


def _pinned(series: Mapping[str, Sequence[tuple[int, float]]], length: str, step: int, p: PhaseParams
            ) -> str | None:
    """Why completion length is no evidence around ``step`` (it sits at the cap on both sides of
    it), or None. The clipped ratio says so when logged; otherwise length sitting within 1% of its
    largest value most of the time."""
    clipped = _clean(series.get(sig.CLIPPED_RATIO) or [])
    steps, x = clipped if clipped[0] else _clean(series.get(length) or [])
    if not steps:
        return None
    i = next((j for j, s in enumerate(steps) if s >= step), len(steps))
    before, after = x[max(0, i - p.pinned_points): i], x[i: i + p.pinned_points]
    if len(before) < 3 or len(after) < 3:
        return None
    if clipped[0]:
        lo = min(statistics.median(before), statistics.median(after))
        if lo >= p.pinned_ratio:
            return (f"completion length sits at the cap around step {step} (clipped ratio {lo:.2f}): "
                    "no evidence either way")
        return None
    cap = max(x)
    at_cap = [sum(v >= 0.99 * cap for v in side) / len(side) for side in (before, after)]
    if min(at_cap) >= 0.5:
        return (f"completion length sits at its maximum ({cap:g}, the cap) around step {step}: "
                "no evidence either way")
    return None


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _moved(c: Change) -> str:
    verb = "rose" if c.direction == "up" else "fell"
    sig_text = f", {abs(c.size) / c.sigma:.1f} sigma" if c.sigma else ""
    return (f"{sig.short(c.signal)} {verb} {_fmt(c.before)} -> {_fmt(c.before + c.size)} "
            f"({c.size:+.3g}{sig_text}) at step {c.step}")


def _evidence(key: str, role: str, found: Change | None | bool) -> dict:
    if not isinstance(found, Change):
        return {"signal": key, "role": role, "moved": False,
                "status": "too few points" if found is False else "flat"}
    return {"signal": key, "role": role, "moved": True, "step": found.step, "detected_at": found.detected_at,
            "status": found.status, "direction": found.direction, "size": found.size, "before": found.before,
            "after": found.before + found.size,
            "sigmas": abs(found.size) / found.sigma if found.sigma else None}


def detect(series: Mapping[str, Iterable[tuple[int, float]]], params: PhaseParams = DEFAULT) -> dict | None:
    """The phase object (design.md): ``step, signal, signals, status`` (``none`` when nothing moved
    yet), ``size, direction, detected_at``, and why: ``confidence`` (high | medium | low),
    ``shape`` (sharp | ramp, with ``ramp_end``), ``evidence`` (each watched signal: moved or not,
    from what to what, how many reference sigmas), ``ignored`` (what the watch left out, and why),
    ``notes`` (a length turn that is not the transition), ``reasons`` (sentences) and ``watch``.
    None while no watched signal has enough points."""
    p = params
    series = {k: list(v) for k, v in series.items()}
    watch = sig.choose(series, p.signals if p.watch_source != "auto" else None, p.watch_source, p.watch_by)
    primary = [k for k in watch.primary if k in series]
    length = watch.length
    if not primary and length:  # nothing else to go by: length stands in
        primary, length = [length], None
    judged = {k: _judge_signal(k, series[k], p) for k in primary + ([length] if length else [])}
    if all(found is False for found, _ in judged.values()):
        return None
    ignored = [{"signal": s.key, "why": s.reason} for s in watch.signals if not s.watched]
    ignored += [{"signal": s.key, "why": s.reason} for s in watch.signals if s.watched and s.key not in series]
    for k, (_, rejected) in judged.items():
        for c in rejected[:3]:
            ignored.append({"signal": k, "why": f"a move at step {c.step} (alarm at {c.detected_at}) did not last"})
    evidence = [_evidence(k, watch.role(k), found) for k, (found, _) in judged.items()]
    # earliest first; of two at one step, the one that stands out more from its noise
    changes = sorted((found for k, (found, _) in judged.items() if k in primary and isinstance(found, Change)),
                     key=lambda c: (c.step, -abs(c.size) / c.sigma if c.sigma else 0.0, c.signal))
    length_change = judged[length][0] if length else None
    out = {"step": None, "signal": None, "signals": [], "status": "none", "size": None, "direction": None,
           "detected_at": None, "confidence": None, "shape": None, "ramp_end": None, "evidence": evidence,
           "ignored": ignored, "notes": [], "reasons": [], "watch": watch.as_dict()}
    stand_in = watch.total_only
    names = ", ".join(sig.short(k) for k in primary)
    if not changes:
        if isinstance(length_change, Change):
            pinned = _pinned(series, length, length_change.step, p)
            if pinned:
                ignored.append({"signal": length, "why": pinned})
            else:
                out["notes"].append({"kind": "length_only", "step": length_change.step,
                                     "direction": length_change.direction, "size": length_change.size,
                                     "text": f"{_moved(length_change)} while {names} stayed flat: "
                                             "not the format transition"})
        out["reasons"].append(f"no sharp, lasting change in {names or 'any watched signal'} so far")
        return out
    first = changes[0]
    shape, ramp_end = _shape(series[first.signal], first, p)
    reasons = [f"{_moved(first)}, {first.status}"
               + (f": a ramp that starts there and reaches 80% of its move at step {ramp_end}" if shape == "ramp"
                  and ramp_end else ": a ramp that starts there" if shape == "ramp" else ": a sharp, lasting change")]
    joined = [c.signal for c in changes if c.step - first.step <= p.join_within]
    reasons += [_moved(c) for c in changes[1:] if c.signal in joined]
    corroborated = False
    if length:
        pinned = _pinned(series, length, first.step, p)
        if pinned:
            ignored.append({"signal": length, "why": pinned})
            reasons.append(pinned)
        elif isinstance(length_change, Change) and abs(length_change.step - first.step) <= p.join_within:
            corroborated = True
            joined.append(length)
            reasons.append(f"{_moved(length_change)}: a length turn nearby corroborates it")
        else:
            reasons.append("completion length did not turn nearby: no corroboration")
    sigmas = abs(first.size) / first.sigma if first.sigma else 0.0
    if stand_in:
        confidence = "low"
        reasons.append("the run logs no format reward, so the marker comes from "
                       f"{sig.short(first.signal)} and is not sure")
    elif first.status == "tentative":
        confidence = "low"
        reasons.append("not confirmed yet: too few points after it")
    elif sigmas < p.sure_sigmas:
        confidence = "low"
        reasons.append(f"a small move against the step-to-step noise ({sigmas:.1f} sigma)")
    elif shape == "ramp":
        confidence = "medium"
    elif corroborated or sigmas >= p.high_sigmas:
        confidence = "high"
    else:
        confidence = "medium"
    out.update({"step": first.step, "signal": first.signal, "signals": joined, "status": first.status,
                "size": first.size, "direction": first.direction, "detected_at": first.detected_at,
                "confidence": confidence, "shape": shape, "ramp_end": ramp_end, "reasons": reasons})
    return out


def watch_summary(watch: Mapping | None) -> str:
    """One line: what is watched and who chose it."""
    watch = watch or {}
    src = {"auto": "chosen from the run's reward names and behaviour", "recipe": "from the run's recipe",
           "user": f"chosen by the user ({watch.get('by') or 'tina watch'})"}.get(watch.get("source"), "")
    signals = ", ".join(sig.short(k) for k in watch.get("signals") or []) or "nothing yet"
    corr = f"; {sig.short(watch['corroborating'])} corroborates" if watch.get("corroborating") else ""
    return f"watching {signals}{corr}" + (f" ({src})" if src else "")


def explain(phase: Mapping | None, watch: Mapping | None = None) -> list[str]:
    """The marker's why as lines (the CLI and the cockpit show these): what is watched, the
    reasons, a length-only note, and what the watch ignored."""
    out = [watch_summary(watch if watch is not None else (phase or {}).get("watch"))]
    if phase is None:
        return out + ["not enough metrics yet to judge"]
    reasons = list(phase.get("reasons") or [])
    out += [f"  - {r}" for r in reasons]
    out += [f"  note: {n['text']}" for n in phase.get("notes") or []]
    out += [f"  ignored {sig.short(i['signal'])}: {i['why']}" for i in phase.get("ignored") or []
            if i["why"] not in reasons]
    return out


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
        reason = "no phase transition in the watched signals yet"
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
