"""The supervisor's live watch of its run: the phase transition as the metrics arrive, and the stop policy.

It reads ``metrics.jsonl`` and ``events.jsonl`` incrementally (never the DuckDB index, which other
processes want) and runs the same detection as every reader (``phase.params_for_run`` and
``phase.detect``), so the marker it acts on is the one ``tina status`` and the cockpit show. Each
change of the marker is an event ``transition`` {status: tentative|confirmed|rejected, step,
signal, detected_at (the run's step when the supervisor saw it), alarm_at, size, direction,
signals}. Then:

- a tentative marker asks the trainer for a checkpoint at once (``checkpoint_requested``);
- every marker change pins the ring's snapshots that bracket it and unpins the others
  (``tina_core.train.snapshots``);
- a confirmed marker with ``stop.after_transition: N`` schedules the trainer's stop N steps after
  the step it was confirmed at (``stop_scheduled`` {step, reason}; a later ``policy_changed`` or a
  rejection moves or cancels it);
- ``stop.budget_usd`` is checked at every poll: ``poll`` returns the stop to make when the next
  step would pass it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from tina_core.analysis import cost, phase, policy
from tina_core.analysis.metric_keys import normalise_key
from tina_core.events import Kind, is_kind
from tina_core.rundir import JsonlTail, RunDir
from tina_core.train import snapshots

Emit = Callable[..., None]


class LiveWatch:
    def __init__(self, run_dir: RunDir, event: Emit, log: Callable[[str], None]) -> None:
        self.rd = run_dir
        self._event = event  # the supervisor's own (it queues what a full disk refuses)
        self.log = log
        self.info = run_dir.info()
        self._metrics = JsonlTail(run_dir.metrics)
        self._events = JsonlTail(run_dir.events)
        self.events: list[dict[str, Any]] = []
        self._read_events()
        self.policy = policy.for_run(run_dir, self.events)
        self.marker = policy.marker(self.events)   # what earlier supervisors already said
        self.scheduled: int | None = None           # the stop_scheduled step in force
        self.params: phase.PhaseParams | None = None
        self.series: dict[str, dict[int, float]] = {}
        self.times: dict[int, tuple[float, int]] = {}
        self._attempt: Any = None
        self.step: int | None = None
        self._new_steps = False
        self._brackets_whole = self.marker is None
        phase.load_segmentation()  # now, while the trainer starts, not at the first alarm

    # --- reading -------------------------------------------------------------------------------
    def _read_events(self) -> list[dict[str, Any]]:
        new, reset = self._events.read()
        if reset:
            self.events = []
        self.events += new
        return new

    def _read_metrics(self) -> None:
        params = phase.params_for_run(self.rd.path)
        if params != self.params:  # other signals to watch (`tina watch`, the cockpit's w): read again
            self.params, self._metrics.offset = params, 0
            self.series, self.times, self._attempt = {}, {}, None
        records, reset = self._metrics.read()
        if reset:
            self.series, self.times, self._attempt = {}, {}, None
        for rec in records:
            step, a = rec.get("step"), rec.get("attempt", 1)
            if not isinstance(step, int) or "train_runtime" in rec:
                continue
            if a != self._attempt:
                if self._attempt is not None and isinstance(a, int) and isinstance(self._attempt, int) and a > self._attempt:
                    # a resumed attempt supersedes what the dead one logged from its first step on
                    for values in (*self.series.values(), self.times):
                        for s in [s for s in values if s >= step]:
                            del values[s]
                self._attempt = a
            for key, value in rec.items():
                key = normalise_key(key)
                if phase.wanted(params, key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.series.setdefault(key, {})[step] = float(value)
            if isinstance(rec.get("ts"), (int, float)):
                self.times[step] = (float(rec["ts"]), a)
            self.step = step
            self._new_steps = True

    # --- what the supervisor asks ----------------------------------------------------------------
    def poll(self, now: float | None = None) -> tuple[str, str] | None:
        """Read what is new and act on it; returns ``(by, reason)`` when the run must stop now."""
        for ev in self._read_events():
            if is_kind(ev, Kind.POLICY_CHANGED):
                self.policy = policy.apply_changes(self.policy, [ev])
                self.log(f"stop policy now {self.policy.describe()} (changed by {ev.get('by', '?')})")
                self._schedule()
        self._read_metrics()
        if self._new_steps:
            self._new_steps = False
            self._detect()
            if not self._brackets_whole:
                self._pin()
            self._schedule()
        return self._budget(time.time() if now is None else now)

    def attempt_started(self) -> None:
        """A new trainer attempt reads only the events after its own start: tell it the stop again."""
        if self.scheduled is not None:
            self._event(Kind.STOP_SCHEDULED, step=self.scheduled, reason=self._stop_reason("after_transition"),
                        by="after_transition")

    def meter(self, now: float | None = None) -> cost.Meter:
        return cost.Meter(self.info, self.events, self.times, open_until=time.time() if now is None else now)

    def spent_usd(self, now: float | None = None) -> float:
        return self.meter(now).cost_usd()["total"]

    def stop_fields(self, by: str) -> dict[str, Any]:
        """``by`` and ``reason`` for the ``stopped`` event of a stop the policy made."""
        return {"by": by, "reason": self._stop_reason(by)}

    def stopped_on_schedule(self, step: int | None) -> bool:
        return self.scheduled is not None and step is not None and step >= self.scheduled

    # --- the marker ------------------------------------------------------------------------------
    def _detect(self) -> None:
        found = phase.detect({k: sorted(v.items()) for k, v in self.series.items()}, self.params)
        new = found if found and found.get("status") in policy.MARKED else None
        old = self.marker
        if _same(old, new):
            return
        if old is not None and (new is None or (new["status"] == "tentative" and not _same_place(old, new))):
            self._event(Kind.TRANSITION, status="rejected", step=old.get("step"), signal=old.get("signal"),
                        detected_at=self.step)
            self.log(f"phase transition at step {old.get('step')} rejected (at step {self.step})")
        if new is not None:
            self._event(Kind.TRANSITION, status=new["status"], step=new["step"], signal=new["signal"],
                        detected_at=self.step, alarm_at=new.get("detected_at"), size=new.get("size"),
                        direction=new.get("direction"), signals=new.get("signals"))
            self.log(f"phase transition {new['status']} at step {new['step']} ({new['signal']}), seen at step {self.step}")
            if new["status"] == "tentative" and (old is None or not _same_place(old, new)):
                self._event(Kind.CHECKPOINT_REQUESTED, step=self.step,
                            reason=f"tentative phase transition at step {new['step']}")
        self._read_events()  # our own events, so the policy functions see them
        self.marker = None if new is None else {**new, "detected_at": self.step}
        self._pin()

    def _pin(self) -> None:
        m = self.marker
        keep = {e.get("checkpoint") for e in self.events if is_kind(e, Kind.EVAL_QUEUED)}
        why = {"marker": m.get("step"), "status": m.get("status")} if m else {}
        try:
            got = snapshots.reconcile(self.rd, m.get("step") if m else None, why, keep=keep)
        except OSError as e:  # a full disk: the ring and the grid still have what they have
            self.log(f"could not pin the snapshots around the marker: {e}")
            return
        self._brackets_whole = m is None or (got["before"] is not None and got["after"] is not None)
        for step in got["pinned"]:
            side = "before" if step == got["before"] else "after"
            self._event(Kind.CHECKPOINT_PINNED, step=step, side=side, marker=m.get("step"), status=m.get("status"))
        for step in got["unpinned"]:
            self._event(Kind.CHECKPOINT_UNPINNED, step=step)

    # --- the stop ----------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Tell the trainer where ``stop.after_transition`` stops it (or that it no longer does)."""
        at = policy.after_transition_stop(self.policy, self.events)
        if at == self.scheduled:
            return
        self.scheduled = at
        self._event(Kind.STOP_SCHEDULED, step=at, by="after_transition",
                    reason=self._stop_reason("after_transition") if at is not None else "cancelled")
        self.log(f"stop scheduled at step {at}" if at is not None else "scheduled stop cancelled")

    def _stop_reason(self, by: str) -> str:
        return policy.stop_reason(by, self.policy, self.events, self.spent_usd())

    def _budget(self, now: float) -> tuple[str, str] | None:
        if self.policy.budget_usd is None:
            return None
        meter = self.meter(now)
        spent, rate = meter.cost_usd()["total"], meter.train_usd_per_hour()
        if policy.budget_spent(self.policy, spent, policy.usd_per_step(meter.seconds_per_step(), rate),
                               policy.stop_reserve_usd(rate)):
            return "budget_usd", policy.stop_reason("budget_usd", self.policy, self.events, spent)
        return None

    def transition_evaluations(self, home: Any) -> list[str]:
        """Queue the evaluations of the checkpoints bracketing the marker and of the base model."""
        from tina_core.evaluate import queue
        from tina_core.evaluate.tasks import default_tasks

        if self.marker is None:
            self.log("no phase transition yet: nothing to evaluate automatically")
            return []
        from tina_core.recipe.loader import parse_yaml

        tasks = default_tasks(parse_yaml(self.rd.recipe.read_text()) or {})
        ids = queue.queue_eval(home, self.rd.run_id, "transition", tasks, why="transition")
        self.log(f"queued {len(ids)} evaluation(s) of the checkpoints around step {self.marker.get('step')} "
                 f"and the base model ({', '.join(tasks)})")
        return ids


def _same_place(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("step"), a.get("signal")) == (b.get("step"), b.get("signal"))


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return _same_place(a, b) and a.get("status") == b.get("status")
