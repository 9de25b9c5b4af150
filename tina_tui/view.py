"""The cockpit's view model: what a refresh hands the widgets (``Snapshot``, ``RunView``, ``Overlay``,
``Notice``), the charted metrics, the checkpoint table's rows, and what a run allows. Widgets import
this, never the gatherer (``collector``); the names of metrics, marker statuses and state sets come
from ``tina_core``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from tina_core import runstate
from tina_core.analysis.metric_keys import ACCURACY_REWARD, COMPLETION_LENGTH, FORMAT_REWARD
from tina_core.events import MARKED
from tina_core.recipe.paper import PROMPTS_PER_STEP
from tina_core.terminal import printable, shown

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from tina_core.analysis.transition import PhaseTransition
    from tina_core.analysis.pick import CheckpointPick
    from tina_core.report.runs import RunObject, RunStub

    RunRow = RunObject | RunStub  # a described run, or the cockpit's stand-in for one

FORMAT, LENGTH, ACCURACY = FORMAT_REWARD, COMPLETION_LENGTH, ACCURACY_REWARD

# (key, short label) of the charted metrics, in display order: the two format signals first.
CHARTS: tuple[tuple[str, str], ...] = (
    (FORMAT, "format"),
    (LENGTH, "length"),
    (ACCURACY, "accuracy"),
    ("reward", "reward"),
    ("kl", "kl"),
    ("learning_rate", "lr"),
)


def described(run: RunRow) -> TypeIs[RunObject]:
    """A run object, not the stand-in for a run the cockpit has not described (``RunStub``)."""
    return "cost_usd" in run


def marked_step(phase: Mapping[str, Any] | None) -> int | None:
    """The marker's step while one is in force (tentative or confirmed), else None."""
    return phase.get("step") if phase and phase.get("status") in MARKED else None


@dataclass(frozen=True)
class Allowed:
    """What a run allows now: the keys (``s``, ``r``, ``p``) and the command palette both ask here."""

    stop: bool      # a live run (its supervisor asked, or its orphan stopped), a crashed one, a queued one
    resume: bool    # ended early, or live with no supervisor watching it (a new one takes the orphan over)
    policy: bool    # anything trained here (an imported run has no stop policy)

    @classmethod
    def of(cls, run: RunRow) -> "Allowed":
        state = run["state"]
        imported = described(run) and run["imported"]
        gone = described(run) and run["supervisor"] == "gone"
        return cls(stop=runstate.can_stop(state), resume=not imported and runstate.can_resume(state, gone),
                   policy=not imported)


def chart_keys(phase: Mapping[str, Any]) -> dict[str, str]:
    """The metric each chart draws for a run: the format chart draws the marker's signal, else the
    first watched one, when the run does not log Tina's format reward (other people's runs name
    their rewards themselves); the accuracy chart its first correctness-like reward likewise."""
    keys = {k: k for k, _ in CHARTS}
    watch = phase.get("watch") or {}
    cands = {c["signal"]: c for c in watch.get("candidates") or []}
    if cands and FORMAT not in cands:
        marked = phase.get("signal") if phase.get("status") in MARKED else None
        first = next((k for k in watch.get("signals") or [] if k != LENGTH), None)
        keys[FORMAT] = marked or first or FORMAT
    if cands and ACCURACY not in cands:
        keys[ACCURACY] = next((k for k, c in cands.items() if c["role"] == "correctness"), ACCURACY)
    return keys


@dataclass(frozen=True)
class Notice:
    severity: str
    text: str
    bell: bool = False  # an alert (tina_core.alerts.ALERT_EVENTS): the terminal's bell rings too
    key: str | None = None  # a later notice of the same key replaces this one (a run's marker)


@dataclass
class RunView:
    """The selected run in full."""

    run: RunRow
    series: dict[str, list[tuple[float, float]]]
    phase: PhaseTransition | None
    checkpoints: list[dict[str, Any]]
    system: Sequence[Mapping[str, Any]]  # the latest GPU sample (store.index.GpuSample)
    log_lines: list[str]
    log_reset: bool            # True: replace the log widget's content, else append
    # Every logged step of the metric the detail view shows (the charts get a summary).
    detail: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # Changes whenever what the index said about the run changed: widgets redraw on a new version.
    version: int = 0
    # The metric each chart draws, by its CHARTS key (see chart_keys)
    chart_keys: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def pick(self) -> CheckpointPick | None:
        """Which checkpoint (``analysis.pick``), as the run object carries it."""
        return self.run["checkpoint_pick"] if described(self.run) else None

    @property
    def step_range(self) -> tuple[float, float]:
        """Steps spanned by the charts: from 0 to the furthest of trained and stop_at steps, so a
        live run fills in from the left and the marker column never moves as steps arrive."""
        run = self.run if described(self.run) else None
        hi = max([run and run["step"] or 0, run and run["stop_at_step"] or 0]
                 + [s for pts in self.series.values() for s, _ in pts[-1:]])
        return 0.0, float(max(hi, 1))


@dataclass(frozen=True)
class OverlayRun:
    """One marked run as the overlay draws it."""

    run_id: str
    name: str
    mark: int                                   # its glyph and colour (tina_tui.plot.MARK_GLYPHS)
    phase: PhaseTransition | None
    series: dict[str, list[tuple[float, float]]]  # the charted metrics, summarised like the charts'
    detail: list[tuple[float, float]] = field(default_factory=list)  # every step of the detail metric

    @property
    def transition(self) -> int | None:
        """The step the run is aligned on (its transition, tentative or confirmed), else None."""
        return marked_step(self.phase)


@dataclass(frozen=True)
class Overlay:
    """The marked runs (two or more), in the order they were marked."""

    runs: tuple[OverlayRun, ...]
    version: int = 0  # changes whenever what the runs show changed: widgets redraw on a new one


@dataclass
class Snapshot:
    runs: list[RunRow]
    view: RunView | None
    notices: list[Notice] = field(default_factory=list)
    error: str | None = None
    took_s: float = 0.0
    overlay: Overlay | None = None


def printable_snapshot(snap: Snapshot, rows: dict[int, tuple[Any, Any]] | None = None) -> Snapshot:
    """The snapshot as widgets may show it: every string from the runs' files (names, metric keys,
    reasons, log lines, notices) ``printable``; the series (numbers) as they are, not copied.
    ``rows``: the rows shown last time, by the row they were made from (``id``), updated: a row
    the collector kept (an ended run's) is not written out again."""
    kept = dict(rows or {})
    if rows is not None:
        rows.clear()
    runs = []
    for r in snap.runs:
        was, made = kept.get(id(r), (None, None))
        made = made if was is r else shown(r)
        runs.append(made)
        if rows is not None:
            rows[id(r)] = (r, made)
    view, overlay = snap.view, snap.overlay
    if view is not None:
        view = dataclasses.replace(view, run=shown(view.run), phase=shown(view.phase),
                                   checkpoints=shown(view.checkpoints),
                                   log_lines=list(map(printable, view.log_lines)), chart_keys=shown(view.chart_keys))
    if overlay is not None:
        overlay = dataclasses.replace(overlay, runs=tuple(dataclasses.replace(r, name=printable(r.name),
                                                                                phase=shown(r.phase))
                                                          for r in overlay.runs))
    return dataclasses.replace(snap, runs=runs, view=view, overlay=overlay,
                               notices=[dataclasses.replace(n, text=printable(n.text)) for n in snap.notices],
                               error=None if snap.error is None else printable(snap.error))


def _nearest_at_or_before(points: list[tuple[float, float]], step: float) -> float | None:
    best = None
    for s, v in points:
        if s <= step:
            best = v
        else:
            break
    return best if best is not None else (points[0][1] if points else None)


def checkpoint_rows(run: Mapping[str, Any], store_ckpts: Sequence[Mapping[str, Any]],
                    series: dict[str, list[tuple[float, float]]], epoch_series: list[tuple[float, float]],
                    phase: PhaseTransition | None, recommended: int | None,
                    best: int | None = None) -> list[dict[str, Any]]:
    """One row per checkpoint with everything the table shows, joined from the run object (cost at
    the checkpoint), the store (evals, avg) and the metric series (format/length/epoch there)."""
    by_step: dict[int, dict[str, Any]] = {}
    for c in run.get("checkpoints") or []:
        by_step.setdefault(int(c["step"]), {}).update(cost_usd_at=c.get("cost_usd_at"), evals=c.get("evals") or {},
                                                      resumable=c.get("resumable", True))
    for c in store_ckpts:
        row = by_step.setdefault(int(c["step"]), {})
        if c.get("evals"):
            row["evals"] = c["evals"]
        if c.get("avg") is not None:
            row["avg"] = c["avg"]
    phase_step = marked_step(phase)
    # Without a logged epoch (an imported run): Tina's prompts per optimizer step.
    epoch_steps = (run.get("dataset_size") or 0) / PROMPTS_PER_STEP
    rows = []
    for step in sorted(by_step):
        row = by_step[step]
        evals = row.get("evals") or {}
        avg = row.get("avg")
        if avg is None and evals:
            avg = sum(evals.values()) / len(evals)
        epoch = _nearest_at_or_before(epoch_series, step) if epoch_series else None
        if epoch is None and epoch_steps:
            epoch = step / epoch_steps
        rows.append({
            "step": step,
            "epoch_pct": None if epoch is None else 100.0 * epoch,
            "format": _nearest_at_or_before(series.get(FORMAT, []), step),
            "length": _nearest_at_or_before(series.get(LENGTH, []), step),
            # "at" counts as before: the recommendation is the latest checkpoint at or before it
            "phase": None if phase_step is None else
            "before" if step < phase_step else "at" if step == phase_step else "after",
            "cost_usd_at": row.get("cost_usd_at"),
            "evals": evals,
            "avg": avg,
            "recommended": step == recommended,
            "best": step == best,
            "snapshot": not row.get("resumable", True),  # a pinned adapter: evaluable, not resumable
        })
    if rows:
        # The base model first, as Tina reports gains over it; e on it evaluates the base model.
        base = (run.get("base") or {}).get("evals") or {}
        rows.insert(0, {"step": "base", "epoch_pct": None, "format": None, "length": None, "phase": None,
                        "cost_usd_at": None, "evals": base, "avg": sum(base.values()) / len(base) if base else None,
                        "recommended": False, "best": False})
    return rows


class Cockpit(Protocol):
    """What the screens and the command palette ask of the app (``tina_tui.app.TinaApp``)."""

    selected: str | None
    marks: dict[str, int]
    align: str
    snapshot: Snapshot | None

    @property
    def view(self) -> RunView | None: ...
    def start_refreshing(self) -> None: ...
    def refresh_data(self) -> None: ...
    def open_detail(self, metric: int) -> None: ...
    def pick_recipe(self) -> None: ...
    def confirm_stop(self) -> None: ...
    def resume(self) -> None: ...
    def choose_policy(self) -> None: ...
    def choose_eval(self, checkpoint: int | str) -> None: ...
    def toggle_mark(self, run_id: str | None) -> None: ...
    def clear_marks(self) -> None: ...
    def toggle_align(self) -> None: ...
    def show_diff(self) -> None: ...
    def show_ablation(self) -> None: ...
    def choose_watch(self) -> None: ...
