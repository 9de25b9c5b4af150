"""The phase object's shape: what ``analysis.phase`` gives (``detect``, ``PhaseWatch.phase``) and the
run object carries as ``phase_transition``, and what the marker watches (``Watch``). Its own light
module, so readers that only pass the object on (``tina ls``) never import the detector.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Watch(TypedDict):
    """What the phase marker comes from and why (``signals.Watch.as_dict``)."""

    signals: list[str]             # the marker's signals (canonical keys)
    corroborating: str | None      # completion length, read beside them
    source: str                    # auto | recipe | user
    by: str | None                 # cli, cockpit, import, or None
    candidates: list[dict[str, Any]]  # every signal the run logs: {signal, role, watched, why, reason}


class PhaseTransition(TypedDict, total=False):
    """The phase object (ARCHITECTURE.md, "Phase transition object")."""

    step: int
    signal: str
    signals: list[str]
    status: str          # none | tentative | confirmed
    size: float
    direction: str       # up | down
    detected_at: int
    confidence: str      # high | medium | low
    shape: str           # sharp | ramp
    ramp_end: int | None
    evidence: list[dict[str, Any]]
    ignored: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    reasons: list[str]
    watch: Watch
