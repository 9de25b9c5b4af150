"""Which checkpoint: the one answer the run object, the report, ``tina eval --checkpoint
recommended`` and the cockpit read.

- **recommended**: Tina's rule, the latest complete checkpoint at or before the phase transition;
- **best evaluated**: the checkpoint with the best mean score over its tasks, once any is evaluated,
  and whether the two disagree;
- **the bracket's pick**: of the two checkpoints around the marker the supervisor acted on (it
  pinned and, after a policy stop, evaluated them), the better evaluated (the one at or before it
  on a tie), or the one at or before it while neither has a score.

Pure: a function of the phase object, the marker and the checkpoints with their scores. Light (the
detector's wording is imported only when a run has no marker to judge yet).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, TypedDict

from tina_core.analysis.policy import brackets
from tina_core.analysis.transition import PhaseTransition
from tina_core.events import MARKED


class BestEvaluated(TypedDict):
    step: int
    avg: float


class BracketPick(TypedDict):
    """The checkpoint kept of the two bracketing the marker (the run object's ``pick``)."""

    step: int
    avg: float | None
    scores: dict[str, float]
    brackets: list[int | None]     # [at or before the marker, after it]
    reason: str
    best_evaluated: BestEvaluated | None   # every evaluated checkpoint's best


class CheckpointPick(TypedDict):
    """Which checkpoint, every way the run asks it."""

    recommended: int | None        # Tina's rule: the latest complete checkpoint at or before the marker
    best_evaluated: int | None     # the best mean score over its tasks, None before any evaluation
    disagree: bool                 # both known, and not the same checkpoint
    reason: str                    # why the recommended one (or why none yet), in a sentence
    bracket: BracketPick | None    # around the marker the supervisor acted on (else the phase's)


def scored(checkpoints: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints, each with ``avg``: the mean of its ``evals`` where it has none of its own."""
    return [{**c, "avg": c.get("avg") if c.get("avg") is not None else
             (sum(c["evals"].values()) / len(c["evals"]) if c.get("evals") else None)} for c in checkpoints]


def choose(phase: PhaseTransition | Mapping[str, Any] | None, checkpoints: Sequence[Mapping[str, Any]], *,
           marker: Mapping[str, Any] | None = None, ended: bool = False) -> CheckpointPick:
    """The checkpoints to keep. ``phase``: the detector's phase object (None: too few points to
    judge yet); ``marker``: the one the supervisor acted on (``events.marker``), which the bracket
    follows when there is one; ``ended``: the run will log nothing more (worded as finished)."""
    cks = scored(checkpoints)
    best = _best(cks)
    recommended, reason = _recommended(phase, cks, ended)
    if best is not None:
        reason += f"; best evaluated: checkpoint-{best['step']}"
    return CheckpointPick(recommended=recommended, best_evaluated=None if best is None else best["step"],
                          disagree=recommended is not None and best is not None and recommended != best["step"],
                          reason=reason, bracket=_bracket(marker or phase, cks, best))


def _best(cks: list[dict[str, Any]]) -> BestEvaluated | None:
    evaluated = [c for c in cks if c["avg"] is not None]
    if not evaluated:
        return None
    best = max(evaluated, key=lambda c: (c["avg"], -c["step"]))
    return BestEvaluated(step=best["step"], avg=best["avg"])


def _recommended(phase: Mapping[str, Any] | None, cks: list[dict[str, Any]], ended: bool) -> tuple[int | None, str]:
    if phase is None:
        from tina_core.analysis.phase import too_few

        return None, too_few(ended)
    if phase["status"] == "none":
        return None, "no phase transition in the watched signals" + (" (the run has ended)" if ended else " yet")
    before = [s for s in sorted(c["step"] for c in cks) if s <= phase["step"]]
    where = f"{phase['status']} phase transition at step {phase['step']} ({phase.get('signal')})"
    if before:
        return before[-1], f"latest complete checkpoint at or before the {where}"
    return None, f"no complete checkpoint at or before the {where}"


def _bracket(marker: Mapping[str, Any] | None, cks: list[dict[str, Any]],
             best: BestEvaluated | None) -> BracketPick | None:
    """None without a marker or a checkpoint near it."""
    if not marker or marker.get("status") not in MARKED or marker.get("step") is None:
        return None
    by_step = {int(c["step"]): c for c in cks if isinstance(c.get("step"), int)}
    before, after = brackets(int(marker["step"]), by_step)
    sides = [s for s in (before, after) if s is not None]
    if not sides:
        return None
    evaluated = [s for s in sides if by_step[s]["avg"] is not None]
    if evaluated:
        chosen = max(evaluated, key=lambda s: (by_step[s]["avg"], s == before))
        why = (f"the better evaluated of checkpoints {' and '.join(map(str, sides))}, which bracket the "
               f"transition at step {marker['step']}")
    else:
        chosen = sides[0]
        why = f"latest at or before the transition at step {marker['step']}; evaluate {' and '.join(map(str, sides))}"
    return BracketPick(step=chosen, avg=by_step[chosen]["avg"], scores=by_step[chosen].get("evals") or {},
                       brackets=[before, after], reason=why, best_evaluated=best)
