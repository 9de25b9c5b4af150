"""Synthetic format-reward and completion-length curves with known change points.

Noise is modelled on how the values arise: a format reward logged for a step is the fraction of
that step's G completions that were well formatted (binomial, G = 16 for the tiny recipe, 32 to 64
for Tina's), and a mean completion length is an average over G completions (Gaussian with a
coefficient of variation). Changes are jumps or sigmoid ramps of a given length, up or down;
controls have no change (flat, or a slow drift such as the accuracy reward's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scenario:
    name: str
    signal: str                  # "format" (binomial fraction) or "length" (Gaussian mean)
    before: float
    after: float
    ramp: int = 0                # 0 = a jump; else sigmoid ramp over this many steps
    change: bool = True          # False: a control with no change point (before -> after drift)
    group: int = 32              # completions per step (binomial G)
    cv: float = 0.1              # length noise, as a fraction of the level
    n: int = 300
    gaps: float = 0.0            # fraction of steps missing and of values NaN
    early: bool = False          # the change comes at the 4th to 6th logged point (a log every 10
                                 # steps of a format learned fast): judged by the watch's head


def scenarios() -> list[Scenario]:
    return [
        Scenario("tiny format 0->0.9, ramp 20, G16", "format", 0.01, 0.9, ramp=20, group=16),
        Scenario("tiny format 0->0.9, ramp 40, G16", "format", 0.01, 0.9, ramp=40, group=16),
        Scenario("format jump up 0.3->0.6", "format", 0.3, 0.6),
        Scenario("format jump down 0.9->0.5", "format", 0.9, 0.5),
        Scenario("format early ramp 5 up 0.1->0.7, G8", "format", 0.1, 0.7, ramp=5, group=8, n=60, early=True),
        Scenario("format ramp 10 up 0.2->0.8", "format", 0.2, 0.8, ramp=10),
        Scenario("format ramp 40 up 0.2->0.8", "format", 0.2, 0.8, ramp=40),
        Scenario("format ramp 20 down, gaps+NaN", "format", 0.85, 0.4, ramp=20, gaps=0.03),
        Scenario("length jump down 1500->1000", "length", 1500, 1000, cv=0.1),
        Scenario("length ramp 20 up 400->800", "length", 400, 800, ramp=20, cv=0.1),
        Scenario("length ramp 40 down 3000->2000, noisy", "length", 3000, 2000, ramp=40, cv=0.15),
        Scenario("control format flat 0.5", "format", 0.5, 0.5, change=False),
        Scenario("control format flat 0.02 G16", "format", 0.02, 0.02, change=False, group=16),
        Scenario("control format flat 0.95 G64", "format", 0.95, 0.95, change=False, group=64),
        Scenario("control format drift 0.3->0.45", "format", 0.3, 0.45, change=False),
        Scenario("control length flat, cv 0.1", "length", 1000, 1000, change=False, cv=0.1),
        Scenario("control length flat, cv 0.2, gaps", "length", 1000, 1000, change=False, cv=0.2, gaps=0.03),
    ]


def level(sc: Scenario, t: np.ndarray, change_at: int) -> np.ndarray:
    if not sc.change:
        return sc.before + (sc.after - sc.before) * t / max(sc.n - 1, 1)
    if sc.ramp == 0:
        frac = (t >= change_at).astype(float)
    else:
        # A logistic from ~1% to ~99% over `ramp` steps, starting at the change point.
        mid = change_at + sc.ramp / 2
        frac = 1.0 / (1.0 + np.exp(-(t - mid) * (2 * math.log(99) / sc.ramp)))
        frac = np.where(t < change_at, 0.0, frac)
    return sc.before + (sc.after - sc.before) * frac


def generate(sc: Scenario, seed: int) -> tuple[list[tuple[int, float]], int | None]:
    """(series of (step, value), true change step or None)."""
    rng = np.random.default_rng(seed)
    lo, hi = (3, 6) if sc.early else (sc.n // 4, sc.n * 3 // 4)
    change_at = int(rng.integers(lo, hi)) if sc.change else None
    t = np.arange(sc.n)
    mu = level(sc, t, change_at if change_at is not None else 0)
    if sc.signal == "format":
        values = rng.binomial(sc.group, np.clip(mu, 0, 1)) / sc.group
    else:
        values = rng.normal(mu, sc.cv * mu)
    steps = t + 1
    series = []
    for s, v in zip(steps, values):
        if sc.gaps and rng.random() < sc.gaps:
            continue  # a step that was never logged
        if sc.gaps and rng.random() < sc.gaps:
            v = float("nan")
        series.append((int(s), float(v)))
    return series, None if change_at is None else int(change_at + 1)
