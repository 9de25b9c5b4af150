"""The supervisor's live watch of its run: the phase transition as the metrics arrive, and the stop policy.

It reads ``metrics.jsonl`` and ``events.jsonl`` incrementally (never the DuckDB index, which other
processes want) and feeds every logged step, one at a time and in order, to the same
``phase.PhaseWatch`` every reader uses, so the marker it acts on is the one ``tina status`` and the
cockpit show, and what it writes is a function of the logged steps alone, never of how many it
happened to read at one poll (README, "Phase transition": the contract). Each change of the marker
is a ``transition`` event {status: tentative|confirmed|rejected, step, signal, detected_at (the
step at which the watch saw it), alarm_at, size, direction, signals, sure}. Then:

- a new tentative marker asks the trainer for a checkpoint at once (``checkpoint_requested``);
- every marker change pins the ring's snapshots that bracket it and unpins the others
  (``tina_core.train.snapshots``);
- a confirmed marker that is sure (not of low confidence) with ``stop.after_transition: N``
  schedules the trainer's stop N steps after the step it became sure at (``stop_scheduled`` {step,
  reason}; a move, a withdrawal or a ``policy_changed`` moves or cancels it). ``watch.json`` says
  how far the watch has judged (and N, the lead): the trainer never runs more than N logged steps
  ahead of it while such a policy holds, and stops at a scheduled step only once the watch has
  judged every step it logged before (``tina_core.train.pace``), so a stop is the same step however
  loaded the machine, and a cancelled or moved one never stops it;
- ``stop.budget_usd`` is checked at every poll: ``poll`` returns the stop to make when the next
  step would pass it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from tina_core.analysis import cost, phase, policy
from tina_core.analysis.metric_keys import normalise_key
from tina_core.events import Kind, is_kind, marker
from tina_core.rundir import JsonlTail, RunDir, RunInfo, write_json_atomic
from tina_core.train import snapshots
from tina_core.train.pace import WATCH_FILE

Emit = Callable[..., None]


class LiveWatch:
    def __init__(self, run_dir: RunDir, event: Emit, log: Callable[[str], None]) -> None:
        self.rd = run_dir
        self._event = event  # the supervisor's own (it queues what a full disk refuses)
        self.log = log
        self.info = RunInfo.read(run_dir)
        self._metrics = JsonlTail(run_dir.metrics)
        self._events = JsonlTail(run_dir.events)
        self.events: list[dict[str, Any]] = []
        self._read_events()
        self.policy = policy.for_run(run_dir, self.events)
        self.scheduled: int | None = None           # the stop_scheduled step in force
        self.params: phase.PhaseParams | None = None
        self.judge = phase.PhaseWatch()
        self._quiet = False
        self.rows: list[tuple[int, dict[str, float]]] = []  # every step judged, for a rebuild
        self.times: dict[int, tuple[float, int]] = {}
        self._attempt: Any = None
        self.step: int | None = None
        self._brackets_whole = marker(self.events) is None
        phase.load_segmentation()  # now, while the trainer starts, not at the first alarm
        self._quiet = True  # what is logged already was judged by an earlier supervisor: catch up
        self._read_metrics()
        self._quiet = False
        self._say_difference()
        self._publish()

    @property
    def marker(self) -> dict[str, Any] | None:
        """The marker in force as the run's events record it."""
        return marker(self.events)

    # --- reading -------------------------------------------------------------------------------
    def _read_events(self) -> list[dict[str, Any]]:
        new, reset = self._events.read()
        if reset:
            self.events = []
        self.events += new
        return new

    def _read_metrics(self) -> bool:
        """Judge every new logged step in order; True when there were any."""
        params = dataclasses.replace(phase.params_for_run(self.rd.path), ended=False)
        if params != self.params:  # other signals to watch (`tina watch`, the cockpit's w): judge again
            self.params = params
            self._rebuild(self.rows)
        records, reset = self._metrics.read()
        if reset:
            self.times, self._attempt = {}, None
            self._rebuild([])
        fresh = False
        for rec in records:
            step, a = rec.get("step"), rec.get("attempt", 1)
            if not isinstance(step, int) or isinstance(step, bool) or "train_runtime" in rec:
                continue
            if a != self._attempt:
                if isinstance(a, int) and isinstance(self._attempt, int) and a > self._attempt:
                    # a resumed attempt supersedes what the dead one logged from its first step on
                    for s in [s for s in self.times if s >= step]:
                        del self.times[s]
                self._attempt = a
            if isinstance(rec.get("ts"), (int, float)):
                self.times[step] = (float(rec["ts"]), a)
            values = {}
            for key, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and phase.wanted(params, key := normalise_key(key)):
                    values[key] = float(v)
            if self.judge.step is not None and step <= self.judge.step:
                self._rebuild([r for r in self.rows if r[0] < step])
            self.rows.append((step, values))
            changes = self.judge.push(step, values)
            self.step = step
            if not self._quiet:
                self._judged(changes)
            fresh = True
        return fresh

    def _rebuild(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Judge ``rows`` again from scratch, quietly (a new watch setting, a resumed attempt that
        retrains steps), then say what changed against the marker the events hold."""
        self.judge = phase.PhaseWatch(self.params or phase.DEFAULT)
        self.rows = list(rows)
        self.judge.extend(self.rows)
        self.step = self.rows[-1][0] if self.rows else None
        if not self._quiet:
            self._say_difference()

    def _say_difference(self) -> None:
        """One ``transition`` event where the judge's marker differs from the one the events hold."""
        told, now = self.marker, self.judge.marker
        if now is None and told is not None and told.get("status") in policy.MARKED:
            self._transition({"status": "rejected", "step": told.get("step"), "signal": told.get("signal"),
                              "detected_at": self.step, "was": told.get("status")})
        elif now is not None and (told is None or (told.get("step"), told.get("signal"), told.get("status"),
                                                   bool(told.get("sure", True))) !=
                                  (now.step, now.signal, now.status, now.sure)):
            self._transition({**now.record(), "detected_at": self.step})
        if told != self.marker:
            self._pin()
        self._schedule()

    # --- what the supervisor asks ----------------------------------------------------------------
    def poll(self, now: float | None = None) -> tuple[str, str] | None:
        """Read what is new and act on it; returns ``(by, reason)`` when the run must stop now."""
        for ev in self._read_events():
            if is_kind(ev, Kind.POLICY_CHANGED):
                self.policy = policy.apply_changes(self.policy, [ev])
                self.log(f"stop policy now {self.policy.describe()} (changed by {ev.get('by', '?')})")
                self._schedule()
        if self._read_metrics() and not self._brackets_whole:
            self._pin()
        self._publish()
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
    def _judged(self, changes: list[dict[str, Any]]) -> None:
        """After one step: its marker changes as events, the pins, then the stop."""
        for rec in changes:
            self._transition(rec)
        if changes:
            self._pin()
        self._schedule()

    def _transition(self, rec: dict[str, Any]) -> None:
        old = self.marker
        self._event(Kind.TRANSITION, **rec)
        what = f"phase transition {rec['status']} at step {rec['step']} ({rec['signal']}), seen at step {self.step}"
        self.log(what + (" (sure)" if rec.get("sure") else ""))
        new_place = old is None or (old.get("step"), old.get("signal")) != (rec["step"], rec["signal"])
        if rec["status"] == "tentative" and new_place:
            self._event(Kind.CHECKPOINT_REQUESTED, step=self.step,
                        reason=f"tentative phase transition at step {rec['step']}")
        self._read_events()  # our own events, so the policy functions see them

    def _pin(self) -> None:
        m = self.marker
        keep = {c for e in self.events if is_kind(e, Kind.EVAL_QUEUED) and isinstance(c := e.get("checkpoint"), int)}
        why = {"marker": m.get("step"), "status": m.get("status")} if m else {}
        try:
            got = snapshots.reconcile(self.rd, m.get("step") if m else None, why, keep=keep)
        except OSError as e:  # a full disk: the ring and the grid still have what they have
            self.log(f"could not pin the snapshots around the marker: {e}")
            return
        self._brackets_whole = m is None or (got["before"] is not None and got["after"] is not None)
        for step in got["pinned"]:
            side = "before" if step == got["before"] else "after"
            self._event(Kind.CHECKPOINT_PINNED, step=step, side=side, marker=(m or {}).get("step"),
                        status=(m or {}).get("status"))
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
        self._read_events()

    def _publish(self) -> None:
        """``watch.json`` for the trainer: the step judged through, and how far it may run ahead
        (``lead``: N of ``stop.after_transition``, or null when no policy can stop it)."""
        try:
            write_json_atomic(self.rd.path / WATCH_FILE, {
                "judged_through": self.step, "lead": self.policy.after_transition, "attempt": self._attempt,
                "time": time.time()})
        except OSError:  # a full disk: the trainer then waits for the supervisor's heartbeat to go stale
            pass

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

        m = self.marker
        if m is None:
            self.log("no phase transition yet: nothing to evaluate automatically")
            return []
        from tina_core.recipe.loader import parse_yaml

        tasks = default_tasks(parse_yaml(self.rd.recipe.read_text()) or {})
        ids = queue.queue_eval(home, self.rd.run_id, "transition", tasks, why="transition")
        self.log(f"queued {len(ids)} evaluation(s) of the checkpoints around step {m.get('step')} "
                 f"and the base model ({', '.join(tasks)})")
        return ids
