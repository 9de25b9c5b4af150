"""The format phase transition of a run: one marker across its watched signals, judged one logged
step at a time, and what it means.

Tina's finding: format reward and completion length turn sharply at some step, and the checkpoint
with the best held-out accuracy sits at or just before that turn. What counts (README, "Phase
transition"):

- the format transition is a sharp, lasting change in a *format* reward (which rewards those are,
  and why: tina_core.analysis.signals); each signal's lasting changes are judged online by
  ``changes.SignalWatch`` (an alarm, one verdict, withdrawn only when the signal falls back);
- **the** transition is the largest lasting move: each confirmed move is weighed by its share of
  its signal's range, by how far it stands out of the noise (up to ``high_sigmas``), and a strict
  or exact reward over a lenient one (``soft``, ``approx``, ``xmlcount``, ``tag_count``...); the
  other confirmed moves are named beside it as notes;
- a completion-length turn nearby corroborates it; a length change alone, while format rewards
  exist and stay flat, is not the transition (it is reported as a note);
- length pinned at the cap (clipped ratio near 1, or sitting at its maximum) is no evidence either
  way;
- a run that logs no format reward gets a marker from its total reward only, with low confidence;
- a gradual ramp is reported as one, from where it starts.

Determinism: ``PhaseWatch.push`` takes the run's next logged step; the marker after it (and so
every ``transition`` event the supervisor writes, and every stop it schedules) is a pure function
of the steps so far, in order, whatever batches they were read in. ``detect`` is the same watch fed
a whole series at once: what every reader shows is what the live watch said at that step.
Parameters live in PhaseParams (tina_core.analysis.changes); bench/detector.py justifies them.
``params_for_run`` is the one place that says what a run watches: every reader asks it.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from tina_core.analysis import signals as sig
from tina_core.analysis.changes import (CONFIRMED, DEFAULT, REJECTED, TENTATIVE, Change, PhaseParams,
                                        SignalWatch, load_segmentation)
from tina_core.analysis.transition import PhaseTransition, Watch
from tina_core.caches import Cache
from tina_core.events import Kind, is_kind
from tina_core.rundir import FileStamp

__all__ = ["DEFAULT", "Change", "Marker", "PhaseParams", "PhaseTransition", "PhaseWatch", "Watch", "detect", "explain",
           "load_segmentation", "params_for_run", "series_keys", "too_few", "wanted", "watch_summary"]


# The parameters for a run's recipe snapshot and watch_changed events, while those files stay the
# same (parsing costs about a millisecond, and the cockpit asks for a live run every second).
# A ramp is followed this many points past its start to see how far it goes.
RAMP_SPAN = 40
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


def _event_facts(path: Path) -> tuple[dict | None, bool]:
    """(the last ``watch_changed`` event or None, whether the run has ended) of an events file:
    ended when its latest start or end is an end (``finished``, ``stopped``...) or it was imported."""
    from tina_core.events import RUN_ENDED, STARTS
    from tina_core.rundir import iter_jsonl

    found, ended = None, False
    for ev in iter_jsonl(path):
        if is_kind(ev, Kind.WATCH_CHANGED):
            found = ev
        elif is_kind(ev, *STARTS):
            ended = False
        elif is_kind(ev, *RUN_ENDED, Kind.IMPORTED):
            ended = True
    return found, ended


def params_for_run(run_path: str | os.PathLike, base: PhaseParams = DEFAULT) -> PhaseParams:
    """``base`` watching what the run says: its recipe snapshot (``recipe.yaml``: a ``watch:`` list,
    else the format rewards it scores with), then its latest ``watch_changed`` event (``signals``: a
    list, or null for the automatic choice; ``by``). A run with neither (imported) is watched
    automatically. ``ended`` once the run's events say it ended (a resume makes it live again).
    Remembered while those two files stay the same: the cockpit asks for every run on every refresh."""
    run_path = Path(run_path)
    recipe, events = run_path / "recipe.yaml", run_path / "events.jsonl"
    stamps = (FileStamp.of(recipe), FileStamp.of(events))

    def read() -> PhaseParams:
        chosen, source, by = (*_recipe_watch(recipe), "recipe") if stamps[0] else (None, "auto", None)
        ev, ended = _event_facts(events) if stamps[1] else (None, False)
        if ev is not None:
            picked = ev.get("signals")
            by = str(ev.get("by") or "user")
            if isinstance(picked, list) and picked:
                chosen, source = tuple(dict.fromkeys(str(s) for s in picked)), "user"
            else:
                chosen, source = None, "auto"
        if source == "auto" and ev is None:
            by = None
        return dataclasses.replace(base, signals=chosen or (), watch_source=source, watch_by=by, ended=ended)
    return _RUN_PARAMS.fetch((run_path, base), stamps, read)


def wanted(params: PhaseParams, key: str) -> bool:
    """Whether ``detect`` reads this metric (canonical key): the chosen signals, every candidate
    (the watch is chosen, and explained, from them) and the clipped ratio. For readers that stream
    metrics lines (the supervisor's watch)."""
    return key in params.signals or sig.is_candidate(key) or key == sig.CLIPPED_RATIO


def series_keys(params: PhaseParams, available: Iterable[str]) -> list[str]:
    """The metrics ``detect`` needs of a run that logs ``available``."""
    return list(dict.fromkeys([*params.signals, *(k for k in available if wanted(params, k))]))



@functools.cache
def detector_version() -> str:
    """A stamp of the detector's own code (this module, ``changes``, ``signals``): results kept
    across processes (the index's phase_cache) are judged again by an edited or upgraded detector."""
    from tina_core.analysis import changes

    digest = hashlib.sha256()
    for module in (changes, sig, sys.modules[__name__]):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


# --- which move is the transition ---------------------------------------------------------------
# A lenient reward gives partial credit (a tag counted, an approximate match); a strict or exact one
# scores the whole format. When both move, the strict one's move is the transition; a lenient
# move alone, while a stricter reward is watched and flat, may be an early partial one.
_LENIENT = re.compile(r"soft|approx|lenient|loose|partial|count|fuzzy", re.IGNORECASE)
LENIENT_WEIGHT = 0.6


def lenient(key: str) -> bool:
    return bool(_LENIENT.search(sig.reward_name(key) or ""))


def weight(c: Change, p: PhaseParams) -> float:
    """How much a confirmed move counts as *the* transition: its share of its signal's range, how far
    it stands out of the step-to-step noise (full weight from ``high_sigmas``), strict over lenient."""
    return c.rel * min(1.0, c.sigmas / p.high_sigmas) * (LENIENT_WEIGHT if lenient(c.signal) else 1.0)


@dataclass(frozen=True)
class Marker:
    """The marker in force after a step, as a ``transition`` event records it."""

    status: str                  # tentative | confirmed
    step: int
    signal: str
    at: int                      # the run's step when the watch reached this verdict
    alarm_at: int                # the step of the live alarm
    size: float
    direction: str
    sure: bool                   # confirmed, and not of low confidence: a stop policy may act on it
    signals: tuple[str, ...] = ()

    def same_place(self, other: "Marker | None") -> bool:
        return other is not None and (self.step, self.signal) == (other.step, other.signal)

    def same_place_as(self, c: Change) -> bool:
        return (self.step, self.signal) == (c.step, c.signal)

    def record(self) -> dict[str, Any]:
        """The fields of its ``transition`` event (``detected_at``: the step it was seen at)."""
        return {"status": self.status, "step": self.step, "signal": self.signal, "detected_at": self.at,
                "alarm_at": self.alarm_at, "size": self.size, "direction": self.direction,
                "signals": list(self.signals), "sure": self.sure}


class PhaseWatch:
    """The marker across a run's watched signals, judged one logged step at a time (the module's
    contract). ``push`` returns the changes of the marker that step caused, as ``transition``
    records (``status`` rejected when a marker is withdrawn); ``history`` keeps them all."""

    def __init__(self, params: PhaseParams = DEFAULT) -> None:
        self.p = params
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.signals: dict[str, SignalWatch] = {}
        self.watch: sig.Watch | None = None
        self.step: int | None = None
        self.points = 0              # steps pushed
        self.marker: Marker | None = None
        self.history: list[dict[str, Any]] = []
        self._keys: frozenset[str] = frozenset()
        self._next_choice = 1        # the point count at which the watch is chosen again
        self._sure_at: int | None = None

    # --- feeding ---------------------------------------------------------------------------------
    def push(self, step: int, values: Mapping[str, float]) -> list[dict[str, Any]]:
        """The run's next logged step (``values``: canonical key -> value; keys ``wanted`` reads)."""
        if self.step is not None and step <= self.step:
            raise ValueError(f"steps must increase: {step} after {self.step}")
        self.step, self.points = step, self.points + 1
        for key, v in values.items():
            if wanted(self.p, key) and v is not None and math.isfinite(v):
                self.series.setdefault(key, []).append((step, float(v)))
        self._choose()
        for key, w in self.signals.items():
            pts = self.series.get(key)
            if pts and pts[-1][0] == step:
                w.push(step, pts[-1][1])
        return self._update(step)

    def extend(self, rows: Iterable[tuple[int, Mapping[str, float]]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for step, values in rows:
            out += self.push(step, values)
        return out

    def _choose(self) -> None:
        """The watch, chosen again when the run logs a new key, and as its point count doubles
        (a reward watched by behaviour needs points to be judged, and re-reading them at every
        step would cost a long run its speed). A signal watched from now on is judged on its
        whole series so far, as if watched from the start."""
        keys = frozenset(self.series)
        if keys == self._keys and self.points < self._next_choice:
            return
        self._keys = keys
        while self._next_choice <= self.points:
            self._next_choice *= 2
        self.watch = sig.choose(self.series, self.p.signals if self.p.watch_source != "auto" else None,
                                self.p.watch_source, self.p.watch_by)
        for key in self.judged_keys:
            if key not in self.signals:
                w = self.signals[key] = SignalWatch(key, self.p)
                w.extend(self.series.get(key, [])[:-1] if self._logged_now(key) else self.series.get(key, []))

    def _logged_now(self, key: str) -> bool:
        pts = self.series.get(key) or []
        return bool(pts) and pts[-1][0] == self.step

    # --- what is watched ---------------------------------------------------------------------------
    @property
    def primary(self) -> list[str]:
        """The signals a marker comes from (completion length when nothing else is logged)."""
        if self.watch is None:
            return []
        keys = [k for k in self.watch.primary if k in self.series]
        return keys or ([self.watch.length] if self.watch.length in self.series else [])

    @property
    def length(self) -> str | None:
        """Completion length, read to corroborate (unless it is the marker's own signal)."""
        if self.watch is None or self.watch.length not in self.series or self.watch.length in self.primary:
            return None
        return self.watch.length

    @property
    def judged_keys(self) -> list[str]:
        return self.primary + ([self.length] if self.length else [])

    @property
    def stand_in(self) -> bool:
        return self.watch is not None and (self.watch.total_only or self.primary == [self.watch.length])

    # --- the marker --------------------------------------------------------------------------------
    def moves(self) -> list[Change]:
        """Every confirmed move of a primary signal that still holds, as far as it went."""
        return [c for key in self.primary for c in self.signals[key].holding()]

    def chosen(self) -> Change | None:
        """The transition: the weightiest confirmed move that holds (earliest on a tie); before any,
        the weightiest pending alarm."""
        moves = self.moves()
        if not moves:
            moves = [c for k in self.primary if (c := self.signals[k].pending) is not None]
        return max(moves, key=lambda c: (weight(c, self.p), -c.step), default=None)

    def _stricter_flat(self, c: Change) -> list[str]:
        """The watched non-lenient format rewards that never moved, beside a lenient marker."""
        if not lenient(c.signal):
            return []
        return [k for k in self.primary if not lenient(k) and k != c.signal and sig.reward_name(k)
                and not self.signals[k].held and self.signals[k].pending is None]

    def _sure(self, c: Change) -> bool:
        """Confirmed and not of low confidence (see ``confidence``): what a stop may act on."""
        return (c.status == CONFIRMED and not self.stand_in and c.sigmas >= self.p.sure_sigmas
                and not self._stricter_flat(c))

    def _update(self, step: int) -> list[dict[str, Any]]:
        c = self.chosen()
        old = self.marker
        new = None
        if c is not None:
            joined = tuple(m.signal for m in self.moves() if abs(m.step - c.step) <= self.p.join_within)
            sure = self._sure(c) or (old is not None and old.sure and old.same_place_as(c) and old.status == c.status)
            new = Marker(c.status, c.step, c.signal, step, c.detected_at, c.size, c.direction, sure,
                         tuple(dict.fromkeys((c.signal, *joined))))
        if old is None and new is None:
            return []
        if old is not None and new is not None and new.same_place(old) and (old.status, old.sure) == (new.status, new.sure):
            return []
        out = []
        # the old marker is withdrawn unless it still holds (the new one is then a larger move) or
        # the new one is its own verdict (a confirmation may move the step a little)
        verdict = old is not None and new is not None and (old.signal, old.alarm_at) == (new.signal, new.alarm_at)
        if old is not None and not verdict and (new is None or not new.same_place(old)) and not self._still_holds(old):
            out.append({"status": REJECTED, "step": old.step, "signal": old.signal, "detected_at": step,
                        "was": old.status})
        if new is not None:
            rec = new.record()
            if old is not None and not verdict and not new.same_place(old) and self._still_holds(old):
                rec["replaces"] = {"step": old.step, "signal": old.signal}
            out.append(rec)
        self.marker = new
        self.history += out
        return out

    def _still_holds(self, m: Marker) -> bool:
        w = self.signals.get(m.signal)
        if w is None:
            return False
        if m.status == TENTATIVE:
            p = w.pending
            return p is not None and p.step == m.step or any(h.change.step == m.step for h in w.held)
        return any(h.change.step == m.step for h in w.held)

    @property
    def flips(self) -> int:
        """Confirmed markers later withdrawn."""
        return sum(1 for h in self.history if h["status"] == REJECTED and h.get("was") == CONFIRMED)

    # --- the phase object ----------------------------------------------------------------------------
    def phase(self) -> dict[str, Any] | None:
        """The phase object (design.md) as of the last step pushed; see ``detect``."""
        p = self.p
        if self.watch is None:
            return None
        judged = {k: self.signals[k] for k in self.judged_keys}
        if not judged or all(len(w.x) <= p.head for w in judged.values()):
            return None
        watch = self.watch
        ignored = [{"signal": s.key, "why": s.reason} for s in watch.signals if not s.watched]
        ignored += [{"signal": s.key, "why": s.reason} for s in watch.signals if s.watched and s.key not in self.series]
        for k, w in judged.items():
            for r in [v for v in w.verdicts if v.status == REJECTED][:3]:
                fell = (f"a move at step {r.step} (confirmed at {r.decided_at}) fell back at step {r.withdrawn_at}"
                        if r.withdrawn_at is not None else
                        f"a move at step {r.step} (alarm at {r.detected_at}) did not last")
                ignored.append({"signal": k, "why": fell})
        c = self.chosen()
        unjudged = c if c is not None and c.status == TENTATIVE and p.ended else None
        if unjudged is not None:  # the log ended before the alarm could be judged: no marker
            c = None
        evidence = [_evidence(k, watch.role(k), _main_change(w, c), len(w.x) > p.head) for k, w in judged.items()]
        out: dict[str, Any] = {
            "step": None, "signal": None, "signals": [], "status": "none", "size": None, "direction": None,
            "detected_at": None, "confidence": None, "shape": None, "ramp_end": None, "evidence": evidence,
            "ignored": ignored, "notes": [], "reasons": [], "watch": watch.as_dict(),
            "judged_through": self.step, "points": self.points, "ended": p.ended, "flips": self.flips,
            "history": list(self.history)}
        length = self.length
        names = ", ".join(sig.short(k) for k in self.primary)
        if c is None:
            lw = judged.get(length) if length else None
            lc = _main_change(lw, None) if lw is not None else None
            if isinstance(lc, Change) and length:
                pinned = _pinned(self.series, length, lc.step, p)
                if pinned:
                    ignored.append({"signal": length, "why": pinned})
                else:
                    out["notes"].append({"kind": "length_only", "step": lc.step, "direction": lc.direction,
                                         "size": lc.size, "text": f"{_moved(lc)} while {names} stayed flat: "
                                                                  "not the format transition"})
            if unjudged is not None:
                after = sum(1 for s_, _ in self.series[unjudged.signal] if s_ >= unjudged.step)
                out["notes"].append({"kind": "unjudged", "step": unjudged.step, "signal": unjudged.signal,
                                     "text": f"an alarm on {sig.short(unjudged.signal)} at step {unjudged.step} came "
                                             f"{after} logged point{'s' if after != 1 else ''} before the log ended: "
                                             f"too few to judge it ({p.confirm_points} needed)"})
            ended = " (the run has ended)" if p.ended else " so far"
            out["reasons"].append(f"no sharp, lasting change in {names or 'any watched signal'}{ended}")
            return out
        shape, ramp_end = _shape(self.series[c.signal], c, p)
        reasons = [f"{_moved(c)}, {c.status}"
                   + (f": a ramp that starts there and reaches 80% of its move at step {ramp_end}" if shape == "ramp"
                      and ramp_end else ": a ramp that starts there" if shape == "ramp" else ": a sharp, lasting change")]
        others = [m for m in self.moves() if (m.signal, m.step) != (c.signal, c.step)]
        joined = [c.signal] + list(dict.fromkeys(m.signal for m in others if abs(m.step - c.step) <= p.join_within))
        reasons += [_moved(m) for m in others if abs(m.step - c.step) <= p.join_within]
        for m in others:
            if abs(m.step - c.step) > p.join_within:
                when = "earlier" if m.step < c.step else "later"
                out["notes"].append({"kind": "smaller_move", "signal": m.signal, "step": m.step,
                                     "direction": m.direction, "size": m.size,
                                     "text": f"an {when}, smaller move: {_moved(m)}, confirmed (the transition "
                                             f"is the larger move at step {c.step})"})
        corroborated = False
        if length:
            lc = next((m.change for m in reversed(judged[length].held)
                       if abs(m.change.step - c.step) <= p.join_within), None)
            pinned = _pinned(self.series, length, c.step, p)
            if pinned:
                ignored.append({"signal": length, "why": pinned})
                reasons.append(pinned)
            elif lc is not None and abs(lc.step - c.step) <= p.join_within:
                corroborated = True
                joined.append(length)
                reasons.append(f"{_moved(lc)}: a length turn nearby corroborates it")
            else:
                reasons.append("completion length did not turn nearby: no corroboration")
        confidence, why = self.confidence(c, shape, corroborated)
        reasons += why
        out.update({"step": c.step, "signal": c.signal, "signals": joined, "status": c.status, "size": c.size,
                    "direction": c.direction, "detected_at": c.detected_at, "confidence": confidence,
                    "shape": shape, "ramp_end": ramp_end, "reasons": reasons, "weight": round(weight(c, p), 4)})
        return out

    def confidence(self, c: Change, shape: str, corroborated: bool) -> tuple[str, list[str]]:
        """(high | medium | low, the reasons for anything less than high). ``high``: confirmed,
        sharp, and corroborated by length or at least ``high_sigmas``; ``medium``: confirmed
        otherwise, or a ramp; ``low``: tentative, under ``sure_sigmas``, from the total reward, or
        a lenient reward's move while a stricter one is watched and flat."""
        p = self.p
        low = []
        if self.stand_in:
            low.append("the run logs no format reward, so the marker comes from "
                       f"{sig.short(c.signal)} and is not sure")
        if c.status == TENTATIVE:
            low.append(f"not confirmed yet: {p.confirm_points} logged points after it decide")
        elif c.sigmas < p.sure_sigmas:
            low.append(f"a small move against the step-to-step noise ({c.sigmas:.1f} sigma)")
        flat = self._stricter_flat(c)
        if flat:
            low.append(f"{sig.short(c.signal)} gives partial credit, and the stricter "
                       f"{', '.join(sig.short(k) for k in flat)} has not moved: this may be an early, partial move")
        if low:
            return "low", low
        if shape == "ramp":
            return "medium", []
        if corroborated or c.sigmas >= p.high_sigmas:
            return "high", []
        return "medium", [f"{c.sigmas:.1f} sigma, without a length turn to corroborate it"]


def _main_change(w: SignalWatch | None, chosen: Change | None) -> Change | None:
    """What a signal's evidence shows: the chosen move if it is this signal's, else its largest
    held move, else its pending alarm."""
    if w is None:
        return None
    if chosen is not None and chosen.signal == w.signal:
        return chosen
    return max(w.holding(), key=lambda c: abs(c.size), default=None) or w.pending


def _shape(series: Sequence[tuple[int, float]], c: Change, p: PhaseParams) -> tuple[str, int | None]:
    """('sharp'|'ramp', the step where a ramp reaches 80% of its move): a move whose 5-point mean
    takes ``ramp_points`` logged points, and ``ramp_share`` of the log, or more to get there is a
    ramp (Tina's turns take 10-20 steps of ~850; a tiny run's, 13 of 100)."""
    steps, x = [s for s, _ in series], [v for _, v in series]
    i = steps.index(c.step)
    slow = max(p.ramp_points, p.ramp_share * len(x))
    sign = 1.0 if c.size >= 0 else -1.0
    # the move as far as it goes on (a ramp is still climbing when it is confirmed)
    later = x[i: i + 4 * RAMP_SPAN][-p.confirm_points:]
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
    clipped = series.get(sig.CLIPPED_RATIO) or []
    pts = clipped or series.get(length) or []
    if not pts:
        return None
    i = bisect.bisect_left(pts, (step, -math.inf))
    x = [v for _, v in pts[max(0, i - p.pinned_points): i + p.pinned_points]]
    i = min(i, p.pinned_points)
    before, after = x[max(0, i - p.pinned_points): i], x[i: i + p.pinned_points]
    if len(before) < 3 or len(after) < 3:
        return None
    if clipped:
        lo = min(statistics.median(before), statistics.median(after))
        if lo >= p.pinned_ratio:
            return (f"completion length sits at the cap around step {step} (clipped ratio {lo:.2f}): "
                    "no evidence either way")
        return None
    cap = max(v for _, v in pts)
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


def _evidence(key: str, role: str, found: Change | None, enough: bool) -> dict:
    if found is None:
        return {"signal": key, "role": role, "moved": False, "status": "flat" if enough else "too few points"}
    return {"signal": key, "role": role, "moved": True, "step": found.step, "detected_at": found.detected_at,
            "status": found.status, "direction": found.direction, "size": found.size, "before": found.before,
            "after": found.before + found.size,
            "sigmas": abs(found.size) / found.sigma if found.sigma else None}



def rows_of(series: Mapping[str, Iterable[tuple[int, float]]]) -> list[tuple[int, dict[str, float]]]:
    """Per-signal series as the run's logged steps in order: ``[(step, {key: value})]``."""
    by_step: dict[int, dict[str, float]] = {}
    for key, pts in series.items():
        for s, v in pts:
            if v is not None:
                by_step.setdefault(int(s), {})[key] = float(v)
    return sorted(by_step.items())


def detect(series: Mapping[str, Iterable[tuple[int, float]]], params: PhaseParams = DEFAULT) -> dict | None:
    """The phase object (design.md) of a whole series, judged as the live watch judged it, one step
    at a time: ``step, signal, signals, status`` (``none`` when nothing moved), ``size, direction,
    detected_at``, and why: ``confidence`` (high | medium | low), ``shape`` (sharp | ramp, with
    ``ramp_end``), ``evidence`` (each judged signal: moved or not, from what to what, how many
    reference sigmas), ``ignored`` (what the watch left out, and why), ``notes`` (a length turn that
    is not the transition, other confirmed moves), ``reasons`` (sentences), ``watch``, and the
    marker's ``history`` (each change of it, at the step it was seen) with its ``flips``. None
    while no judged signal has enough points (``PhaseParams.head``)."""
    watch = PhaseWatch(params)
    watch.extend(rows_of(series))
    return watch.phase()


def watch_summary(watch: Mapping | None) -> str:
    """One line: what is watched and who chose it."""
    watch = watch or {}
    src = {"auto": "chosen from the run's reward names and behaviour", "recipe": "from the run's recipe",
           "user": f"chosen by the user ({watch.get('by') or 'tina watch'})"}.get(str(watch.get("source")), "")
    signals = ", ".join(sig.short(k) for k in watch.get("signals") or []) or "nothing yet"
    corr = f"; {sig.short(watch['corroborating'])} corroborates" if watch.get("corroborating") else ""
    return f"watching {signals}{corr}" + (f" ({src})" if src else "")


def too_few(ended: bool, p: PhaseParams = DEFAULT) -> str:
    """Why there is no marker to judge yet: a live run that is young, or a log too short or too
    coarse (a log every 10 steps spends 110 steps on the points a reference needs)."""
    need = p.head + 1
    if ended:
        return f"the log has too few points to judge a transition: at least {need} logged points are needed"
    return f"not enough logged points yet: a transition is judged from the {need}th"


def explain(phase: Mapping | None, watch: Mapping | None = None, *, ended: bool = False) -> list[str]:
    """The marker's why as lines (the CLI and the cockpit show these): what is watched, the
    reasons, a length-only note, and what the watch ignored; a finished run worded as finished."""
    out = [watch_summary(watch if watch is not None else (phase or {}).get("watch"))]
    if phase is None:
        return out + [too_few(ended)]
    reasons = list(phase.get("reasons") or [])
    out += [f"  - {r}" for r in reasons]
    out += [f"  note: {n['text']}" for n in phase.get("notes") or []]
    out += [f"  ignored {sig.short(i['signal'])}: {i['why']}" for i in phase.get("ignored") or []
            if i["why"] not in reasons]
    return out
