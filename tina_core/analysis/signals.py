"""Which of a run's metrics the phase detector watches, and why.

Every reward component a run logs (``rewards/<fn>/mean`` once keys are canonical, whatever TRL era
or notebook wrote it) is a candidate, besides completion length and the total reward. Each gets a
role:

- ``format``: its name says it scores format (``strict_format_reward_func``, ``xmlcount_reward_func``,
  ``valid_json_reward``, ``match_format_exactly``, Tina's ``tag_count_reward``...), or, when the name
  says neither, it moves with a format-named reward (behaviour). These are what the format
  transition shows in: they are watched.
- ``correctness``: its name says it scores the answer (``correctness_reward_func``, ``check_answer``,
  ``accuracy_reward``...) or it moves with such a reward (``int_reward_func`` moves with
  correctness). Not watched: what the model gets right is not its format.
- ``other``: neither, by name or behaviour (``diversity_reward_fn``, ``FinancePoisonReward``). Not watched
  unless the user says so.
- ``length``: completion length. Read beside the format rewards to corroborate a marker (see
  tina_core.analysis.phase), never a marker of its own while format rewards exist.
- ``total``: the total reward. It stands in, with low confidence, only for a run that logs no
  format-like reward at all.

The choice is automatic unless the run says otherwise: its recipe snapshot (the format rewards it
scores with, or a ``watch:`` list) and then its latest ``watch_changed`` event (``tina watch``,
``tina import --watch``, the cockpit's ``w``). ``choose`` is pure: the same series and setting give
the same watch, so every reader agrees.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tina_core.analysis.metric_keys import COMPLETION_LENGTH, normalise_key
from tina_core.events import Kind
from tina_core.rundir import RunDir, TinaError

TOTAL_REWARD = "reward"
CLIPPED_RATIO = "completions/clipped_ratio"

FORMAT, CORRECTNESS, OTHER, LENGTH, TOTAL = "format", "correctness", "other", "length", "total"

# Words in a reward function's name. Format wins when a name has both ("answer_format").
_FORMAT_WORDS = re.compile(r"format|xml|tag|json|struct|schema|syntax|markup|template|think|regex|parse",
                           re.IGNORECASE)
_CORRECT_WORDS = re.compile(r"correct|accura|answer|check|verif|equiv|exact|math|solve|success|score|pass"
                            r"|judge|win|pnl|gameplay", re.IGNORECASE)
# Behaviour: a reward whose per-step values move with a named reward's (Pearson r at least this,
# over at least BEHAVIOUR_POINTS common steps) is taken to score the same thing.
BEHAVIOUR_R = 0.8
BEHAVIOUR_POINTS = 20

_REWARD_KEY = re.compile(r"^rewards/(.+)/mean$")


def reward_name(key: str) -> str | None:
    """The reward function's name of a canonical ``rewards/<fn>/mean`` key, else None."""
    m = _REWARD_KEY.match(key)
    return m.group(1) if m else None


def is_candidate(key: str) -> bool:
    return reward_name(key) is not None or key in (COMPLETION_LENGTH, TOTAL_REWARD)


def role_by_name(key: str) -> str:
    if key == COMPLETION_LENGTH:
        return LENGTH
    if key == TOTAL_REWARD:
        return TOTAL
    name = reward_name(key)
    if name is None:
        return OTHER
    if _FORMAT_WORDS.search(name):
        return FORMAT
    if _CORRECT_WORDS.search(name):
        return CORRECTNESS
    return OTHER


def short(key: str) -> str:
    """How a signal reads on screen: ``strict_format_reward_func``, ``length``, ``reward``."""
    if key == COMPLETION_LENGTH:
        return "length"
    return reward_name(key) or key


def resolve(name: str, available: Iterable[str]) -> str | None:
    """The canonical key a user means by ``name``: a canonical or logged key, or a reward
    function's name (``strict_format_reward_func``, ``rewards/strict_format_reward_func``), or
    ``length``; None when the run logs nothing of that name."""
    keys = list(available)
    want = normalise_key(name)
    if want in keys:
        return want
    if name.strip().lower() in ("length", "completion_length"):
        return COMPLETION_LENGTH if COMPLETION_LENGTH in keys else None
    by_fn = {reward_name(k): k for k in keys if reward_name(k)}
    return by_fn.get(name.strip())


def resolve_all(names: Sequence[str], available: Iterable[str]) -> list[str]:
    """The canonical keys of the signals a user named, or a clear error naming the candidates."""
    keys = list(available)
    out = []
    for name in names:
        key = resolve(name, keys)
        if key is None or not is_candidate(key):
            cands = [short(k) for k in keys if is_candidate(k)]
            what = f"no signal {name!r} in this run" if key is None else \
                f"{name!r} is not a signal the marker can watch (a reward, the total reward or the completion length)"
            raise TinaError(f"{what}; its candidates are: {', '.join(cands) or 'none'}")
        out.append(key)
    return list(dict.fromkeys(out))


def record_watch(rd: RunDir, names: Sequence[str] | None, available: Iterable[str], by: str) -> list[str] | None:
    """Change what a run watches: a ``watch_changed`` event with the named signals (checked against
    the keys the run logs), or with none to go back to the automatic choice. Returns the keys."""
    keys = resolve_all(names, available) if names else None
    rd.event(Kind.WATCH_CHANGED, signals=keys, by=by)
    return keys


def canonical(name: str) -> str:
    """A signal's canonical key as written in a recipe's ``watch:`` list, without the run's keys to
    look at: ``length``, a reward function's bare name, or a metric key in any spelling."""
    name = name.strip()
    if name.lower() in ("length", "completion_length"):
        return COMPLETION_LENGTH
    if "/" in name or name == TOTAL_REWARD:
        return normalise_key(name)
    return f"rewards/{name}/mean"


@dataclass(frozen=True)
class Signal:
    key: str
    role: str       # format | correctness | other | length | total
    watched: bool   # a marker may come from it (length: read to corroborate)
    why: str        # name | behaviour | recipe | user | stand-in | always
    reason: str     # the sentence shown


@dataclass(frozen=True)
class Watch:
    signals: tuple[Signal, ...]   # every candidate the run logs, and any chosen signal it does not
    source: str                   # auto | recipe | user
    by: str | None = None         # who chose (cli, cockpit, import, recipe)

    @property
    def primary(self) -> list[str]:
        """The signals a marker comes from, in order (length only when chosen as one)."""
        return [s.key for s in self.signals if s.watched and not _corroborates(s)]

    @property
    def length(self) -> str | None:
        """Completion length, when it is read to corroborate a marker."""
        return next((s.key for s in self.signals if s.watched and _corroborates(s)), None)

    @property
    def total_only(self) -> bool:
        """No format-like reward is watched: the total reward (or length) stands in."""
        return all(self.role(k) in (TOTAL, LENGTH) for k in self.primary)

    def role(self, key: str) -> str:
        return next((s.role for s in self.signals if s.key == key), role_by_name(key))

    def as_dict(self) -> dict:
        return {"signals": self.primary, "corroborating": self.length, "source": self.source, "by": self.by,
                "candidates": [{"signal": s.key, "role": s.role, "watched": s.watched, "why": s.why,
                                "reason": s.reason} for s in self.signals]}


def _corroborates(s: Signal) -> bool:
    return s.role == LENGTH and s.why != "user"


def _pearson(a: Mapping[int, float], b: Mapping[int, float]) -> float | None:
    common = [s for s in a if s in b]
    if len(common) < BEHAVIOUR_POINTS:
        return None
    xs, ys = [a[s] for s in common], [b[s] for s in common]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _finite(pts: Sequence[tuple[int, float]]) -> dict[int, float]:
    return {int(s): float(v) for s, v in pts if v is not None and math.isfinite(v)}


def _flat_note(values: Mapping[int, float]) -> str:
    vs = set(values.values())
    return f"; flat so far ({next(iter(vs)):g} at every step)" if len(vs) == 1 else ""


def classify(series: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, tuple[str, str, str]]:
    """``{key: (role, why, reason)}`` for every candidate in ``series``: by name, then, for a reward
    whose name says neither, by which named reward it moves with."""
    vals = {k: _finite(pts) for k, pts in series.items() if is_candidate(k)}
    out: dict[str, tuple[str, str, str]] = {}
    for k in vals:
        role = role_by_name(k)
        if role == FORMAT:
            out[k] = (role, "name", f"its name says it scores format{_flat_note(vals[k])}")
        elif role == CORRECTNESS:
            out[k] = (role, "name", "its name says it scores the answer, not the format")
        elif role == LENGTH:
            out[k] = (role, "always", "read beside the format rewards: a turn nearby corroborates a marker")
        elif role == TOTAL:
            out[k] = (role, "name", "the total reward mixes every component")
    for k in vals:
        if k in out:
            continue
        best = None
        for peer, (role, why, _) in out.items():
            if why != "name" or role not in (FORMAT, CORRECTNESS):
                continue
            r = _pearson(vals[k], vals[peer])
            if r is not None and r >= BEHAVIOUR_R and (best is None or r > best[0]):
                best = (r, peer, role)
        if best:
            r, peer, role = best
            out[k] = (role, "behaviour", f"moves with {short(peer)} (r={r:.2f}), so it is taken to score "
                                         f"{'format' if role == FORMAT else 'the answer'} too")
        else:
            out[k] = (OTHER, "name", "neither its name nor its behaviour says format or correctness")
    return out


def choose(series: Mapping[str, Sequence[tuple[int, float]]], chosen: Sequence[str] | None = None,
           source: str = "auto", by: str | None = None) -> Watch:
    """The watch over a run's ``series``. ``chosen`` (a recipe's format rewards or the user's
    list, canonical keys) replaces the automatic choice of marker signals; length is read to
    corroborate either way unless it is itself chosen."""
    roles = classify(series)
    sigs: list[Signal] = []
    if chosen is not None:
        for k in chosen:
            role = roles.get(k, (role_by_name(k),))[0]
            if k not in series:
                sigs.append(Signal(k, role, True, source, "chosen, but this run does not log it"))
            elif source == "user":
                sigs.append(Signal(k, role, True, "user", f"chosen by the user ({by or 'tina watch'})"))
            else:
                sigs.append(Signal(k, role, True, source, "the run's recipe scores format with it"))
        for k, (role, why, reason) in roles.items():
            if k in chosen:
                continue
            if role == LENGTH:
                sigs.append(Signal(k, role, True, why, reason))
            else:
                sigs.append(Signal(k, role, False, source, f"not chosen ({reason})"))
        return Watch(tuple(sigs), source, by)
    has_format = any(role == FORMAT for role, _, _ in roles.values())
    for k, (role, why, reason) in roles.items():
        if role == FORMAT or role == LENGTH:
            sigs.append(Signal(k, role, True, why, reason))
        elif role == TOTAL and not has_format:
            sigs.append(Signal(k, role, True, "stand-in", "the run logs no format reward: its total reward "
                                                          "stands in, and a marker from it has low confidence"))
        elif role == TOTAL:
            sigs.append(Signal(k, role, False, why, "the run logs format rewards: they say more"))
        else:
            sigs.append(Signal(k, role, False, why, reason))
    order = {FORMAT: 0, TOTAL: 1, LENGTH: 2, CORRECTNESS: 3, OTHER: 4}
    sigs.sort(key=lambda s: (not s.watched, order[s.role]))
    return Watch(tuple(sigs), source, by)
