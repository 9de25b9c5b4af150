"""The stop policy: when a run stops before ``stop_at_step``, what it then evaluates, and what it saved.

A run stops at ``stop_at_step`` (its trainer does), or earlier by its policy:

- ``stop.after_transition: N``: N steps after its phase-transition marker is confirmed, counted from
  the step at which the supervisor saw the verdict (its ``transition`` event's ``detected_at``);
- ``stop.budget_usd: X``: before the next step and the stop itself (its checkpoint, the trainer's
  exit: STOP_RESERVE_S) would take the run's cost (training and evaluation so far) past X.

The recipe's ``stop`` section sets the policy; ``policy_changed`` events (``tina policy RUN``, the
cockpit's ``p``) change it on a live run, so the run directory says which policy held when. A stop
by the policy is graceful (a checkpoint at that step) and its ``stopped`` event says why (``by``:
``after_transition`` or ``budget_usd``, and ``reason``). Afterwards the checkpoints bracketing the
marker and the base model are evaluated (``stop.evaluate``, default on), and the pick is the better
scoring of the two brackets, or until scores exist the one at or before the marker (Tina's rule:
``analysis.pick`` chooses).

Pure functions of a run's recipe snapshot and events: the supervisor decides with them, and ``tina
status``, the report and the cockpit show the same figures. Light (yaml through the recipe loader).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tina_core.events import MARKED, Kind, is_kind, last_of, marker
from tina_core.rundir import RunDir, RunInfo, TinaError

POLICY_KEYS = ("after_transition", "budget_usd")  # what a policy_changed event may set
POLICY_STOPS = POLICY_KEYS                         # ``by`` of a stop the policy made
# What a graceful stop takes after the step in flight: its checkpoint and the trainer's exit (the
# tiny recipe's exit took 6.5 s on a loaded 2-core box; a GPU run's adapter save takes seconds).
STOP_RESERVE_S = 10.0


@dataclass(frozen=True)
class StopPolicy:
    stop_at_step: int | None = None
    after_transition: int | None = None  # steps after the confirmed marker; None: off
    budget_usd: float | None = None      # None: off
    evaluate: bool = True                # evaluate the brackets and the base after a policy stop

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """``transition+5, $0.10`` (``-`` when only stop_at_step holds)."""
        parts = [] if self.after_transition is None else [f"transition+{self.after_transition}"]
        if self.budget_usd is not None:
            parts.append(f"${self.budget_usd:g}")
        return ", ".join(parts) or "-"


def from_recipe(data: dict[str, Any]) -> StopPolicy:
    """The policy a (parsed) recipe sets."""
    stop = data.get("stop") or {}
    stop_at = data.get("stop_at_step") or (data.get("grpo") or {}).get("max_steps")
    return StopPolicy(stop_at_step=int(stop_at) if isinstance(stop_at, int) and stop_at > 0 else None,
                      after_transition=stop.get("after_transition"), budget_usd=stop.get("budget_usd"),
                      evaluate=bool(stop.get("evaluate", True)))


def apply_changes(policy: StopPolicy, events: Iterable[dict[str, Any]]) -> StopPolicy:
    """``policy`` after the ``policy_changed`` events, in order (a key absent is unchanged, null is off)."""
    for ev in events:
        if is_kind(ev, Kind.POLICY_CHANGED):
            policy = dataclasses.replace(policy, **{k: ev[k] for k in POLICY_KEYS if k in ev})
    return policy


_RECIPES: dict[Path, tuple[tuple, StopPolicy]] = {}


def recipe_policy(rd: RunDir) -> StopPolicy:
    """The policy of a run's recipe snapshot (remembered per file state: the cockpit asks every
    second); a run without one (imported) has only its run.json's stop_at_step."""
    from tina_core.recipe.loader import parse_yaml

    info_stop = RunInfo.read(rd).stop_at_step
    try:
        st = rd.recipe.stat()
    except OSError:
        return StopPolicy(stop_at_step=info_stop)
    sig = (st.st_mtime_ns, st.st_size)
    hit = _RECIPES.get(rd.recipe)
    if hit is None or hit[0] != sig:
        try:
            data = parse_yaml(rd.recipe.read_text())
            policy = from_recipe(data) if isinstance(data, dict) else StopPolicy()
        except Exception:  # a damaged snapshot: no policy beyond stop_at_step
            policy = StopPolicy()
        _RECIPES[rd.recipe] = hit = (sig, policy)
    return dataclasses.replace(hit[1], stop_at_step=info_stop or hit[1].stop_at_step)


def for_run(rd: RunDir, events: Sequence[dict[str, Any]] | None = None) -> StopPolicy:
    """The policy in force now: the recipe's, changed by the run's ``policy_changed`` events."""
    return apply_changes(recipe_policy(rd), rd.read_events() if events is None else events)


def parse_value(key: str, raw: str | int | float | None) -> int | float | None:
    """A policy value from the command line or the cockpit: ``off`` (or empty) turns it off."""
    from tina_core.recipe.loader import RANGES  # the recipe's bounds: a live change meets the same

    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "off", "none", "-")):
        return None
    lo, hi, what = RANGES[f"stop.{key}"]
    try:
        value: int | float = int(str(raw).strip()) if key == "after_transition" else float(str(raw).strip().lstrip("$"))
        if math.isfinite(value) and (lo is None or lo <= value) and (hi is None or value <= hi) \
                and (key == "after_transition" or value > 0):
            return value
    except ValueError:
        pass
    raise TinaError(f"{key.replace('_', '-')}: expected {what} or off, got {raw!r}")


# --- the marker, as the supervisor saw it (events.marker) -----------------------------------
def _sure_index(events: Sequence[dict[str, Any]]) -> int | None:
    """The index of the latest ``transition`` event if it is a confirmed marker a stop may act on
    (``sure``: not of low confidence; events written before that field existed count as sure)."""
    last = None
    for i, ev in enumerate(events):
        if is_kind(ev, Kind.TRANSITION):
            last = i if ev.get("status") == "confirmed" and ev.get("sure", True) else None
    return last


def after_transition_stop(policy: StopPolicy, events: Sequence[dict[str, Any]]) -> int | None:
    """The step ``stop.after_transition`` stops at: N steps after the step at which the marker in
    force was confirmed and sure; None without such a marker or N, or once a stop for it happened
    (a resumed run trains on, until a new marker)."""
    if policy.after_transition is None:
        return None
    i = _sure_index(events)
    if i is None or not isinstance(events[i].get("detected_at"), int):
        return None
    if any(is_kind(e, Kind.STOPPED) and e.get("by") == "after_transition" for e in events[i + 1:]):
        return None
    return events[i]["detected_at"] + policy.after_transition


def resume_note(events: Sequence[dict[str, Any]], phase_now: dict[str, Any] | None) -> str | None:
    """What ``tina resume`` says of a run ``stop.after_transition`` stopped: where and why, that it
    trains on past the marker (the policy stops again only at a new one), and, when the marker the
    run's metrics give now is not the one the stop acted on, that the stop came before it."""
    stopped = last_of(events, Kind.STOPPED)
    if stopped is None or stopped.get("by") != "after_transition":
        return None
    told = marker(events) or {}
    text = (f"stopped at step {stopped.get('step')} by stop.after_transition "
            f"({stopped.get('reason') or 'after the phase transition'}); resuming trains on past it, and the "
            "policy stops the run again only at a new marker")
    now = phase_now if phase_now and phase_now.get("status") in MARKED else None
    if now is not None and (now.get("step"), now.get("signal")) != (told.get("step"), told.get("signal")):
        text += (f". The marker has moved since: the run's metrics now put it at step {now.get('step')} "
                 f"({now.get('signal')}), so the stop came before it")
    return text


def usd_per_step(seconds_per_step: float | None, usd_per_hour: float) -> float | None:
    return None if seconds_per_step is None else seconds_per_step * usd_per_hour / 3600


def stop_reserve_usd(usd_per_hour: float) -> float:
    return STOP_RESERVE_S * usd_per_hour / 3600


def budget_spent(policy: StopPolicy, spent_usd: float, per_step_usd: float | None, reserve_usd: float = 0.0) -> bool:
    """True once the money left would not cover the next step and the stop (``reserve_usd``); before
    the pace is known, once only the reserve is left."""
    if policy.budget_usd is None:
        return False
    return policy.budget_usd - spent_usd <= (per_step_usd or 0.0) + reserve_usd


@dataclass(frozen=True)
class Countdown:
    by: str                   # stop_at_step | after_transition | budget_usd: whichever stops first
    stop_step: int | None     # the step it stops at (for a budget: at the recent pace)
    steps_left: int | None
    usd_left: float | None    # with a budget
    waiting: bool = False     # after_transition, no confirmed marker yet

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        """``3 steps``, ``$0.04 left``, ``awaiting the transition``."""
        if self.waiting:
            return "awaiting the transition" + ("" if self.steps_left is None else f" (at most {max(self.steps_left, 0)} steps)")
        if self.by == "budget_usd" and self.usd_left is not None:
            return f"${max(self.usd_left, 0):.4g} left"
        return "-" if self.steps_left is None else f"{max(self.steps_left, 0)} step{'s' if self.steps_left != 1 else ''}"


def countdown(policy: StopPolicy, events: Sequence[dict[str, Any]], step: int | None, spent_usd: float,
              per_step_usd: float | None, reserve_usd: float = 0.0) -> Countdown | None:
    """What stops the run first, and how far off it is (None before its first step)."""
    if step is None:
        return None
    options: list[Countdown] = []
    if policy.stop_at_step:
        options.append(Countdown("stop_at_step", policy.stop_at_step, policy.stop_at_step - step, None))
    if policy.after_transition is not None:
        at = after_transition_stop(policy, events)
        options.append(Countdown("after_transition", at, None if at is None else at - step, None, waiting=at is None))
    if policy.budget_usd is not None:
        left = policy.budget_usd - spent_usd
        # it stops once less than a step's money (and the stop's) is left
        steps = None if not per_step_usd else max(0, math.floor((left - reserve_usd) / per_step_usd + 1e-9) - 1)
        options.append(Countdown("budget_usd", None if steps is None else step + steps, steps, round(left, 6)))
    if not options:
        return None
    known = [c for c in options if c.steps_left is not None]
    first = min(known, key=lambda c: (c.steps_left, c.by == "stop_at_step")) if known else None
    waiting = next((c for c in options if c.waiting), None)
    if waiting is not None and (first is None or first.by == "stop_at_step"):
        # the policy's own state: it waits for the marker, stop_at_step the most it can take
        return dataclasses.replace(waiting, stop_step=first.stop_step if first else None,
                                   steps_left=first.steps_left if first else None)
    # a budget without a pace yet still says what it waits for
    return first or options[-1]


def stop_reason(by: str, policy: StopPolicy, events: Sequence[dict[str, Any]], spent_usd: float) -> str:
    if by == "after_transition":
        m = marker(events) or {}
        return (f"{policy.after_transition} steps after the phase transition at step {m.get('step')} was "
                f"confirmed at step {m.get('detected_at')}")
    if by == "budget_usd":
        return (f"budget ${policy.budget_usd:g} reached (${spent_usd:.4g} spent; the next step and the stop "
                "would pass it)")
    return by


# --- what to evaluate -------------------------------------------------------------
def brackets(marker_step: int, steps: Iterable[int]) -> tuple[int | None, int | None]:
    """(the latest of ``steps`` at or before ``marker_step``, the first after it)."""
    steps = sorted(set(steps))
    before = [s for s in steps if s <= marker_step]
    after = [s for s in steps if s > marker_step]
    return (before[-1] if before else None), (after[0] if after else None)


def saved(stop_at_step: int | None, end_step: int | None, seconds_per_step: float | None,
          usd_per_hour: float) -> tuple[float | None, float | None]:
    """(dollars, minutes) not spent by ending at ``end_step`` instead of ``stop_at_step``, at the
    run's recent pace and price."""
    if not stop_at_step or end_step is None or seconds_per_step is None:
        return None, None
    seconds = max(0, stop_at_step - end_step) * seconds_per_step
    return round(seconds * usd_per_hour / 3600, 6), round(seconds / 60, 2)
