"""The trainer's side of the live watch's contract: how far the supervisor has judged the run.

The supervisor's live watch (``tina_core.supervise.watch``) writes ``RUN_DIR/watch.json``
(``judged_through``: the last logged step it judged, of ``attempt``; ``lead``: N of
``stop.after_transition``, or null) after each poll, after the events it decided on. Rank 0 of the
trainer reads it at the end of each step:

- while a stop policy can stop the run, it never runs more than ``lead`` logged steps ahead of the
  watch, so a stop the watch schedules (N steps after the step the marker became sure at) is never
  already behind it;
- at a scheduled stop step it waits until the watch has judged every step it logged before, then
  reads the schedule again: a stop cancelled or moved meanwhile never stops it.

So where a run stops is a function of its logged steps, not of how fast the supervisor polled or
how loaded the machine is. Without a watch file, or once the supervisor is gone (a stale
heartbeat: an orphan trains on), nothing waits.

Light: the standard library and ``tina_core.runstate``.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Callable

from tina_core.rundir import RunDir, read_json

WATCH_FILE = "watch.json"
POLL_S = 0.05


class Pace:
    def __init__(self, run_dir: RunDir, attempt: int) -> None:
        self.rd = run_dir
        self.attempt = attempt
        self.logged: list[int] = []  # the steps this attempt logged, ascending (rank 0)

    def note_logged(self, step: int) -> None:
        if not self.logged or step > self.logged[-1]:
            self.logged.append(step)

    def state(self) -> dict[str, Any] | None:
        w = read_json(self.rd.path / WATCH_FILE, None)
        return w if isinstance(w, dict) else None

    def lead(self) -> int | None:
        lead = (self.state() or {}).get("lead")
        return lead if isinstance(lead, int) and not isinstance(lead, bool) and lead >= 0 else None

    def logged_by(self, step: int) -> int | None:
        """The last step this attempt logged at or before ``step``."""
        i = bisect.bisect_right(self.logged, step)
        return self.logged[i - 1] if i else None

    def judged(self, step: int) -> bool:
        w = self.state()
        if w is None:
            return True
        through = w.get("judged_through")
        return w.get("attempt") == self.attempt and isinstance(through, int) and through >= step

    def wait_until_judged(self, step: int | None, give_up: Callable[[], bool]) -> None:
        """Block until the watch has judged this attempt's lines through ``step`` (None: nothing to
        wait for), the supervisor is gone, or ``give_up()`` (a SIGTERM) says so."""
        if step is None:
            return
        while not self.judged(step):
            if give_up() or not self._supervisor_alive():
                return
            time.sleep(POLL_S)

    def _supervisor_alive(self) -> bool:
        from tina_core import runstate

        hb = read_json(self.rd.supervisor, {}) or {}
        beat = hb.get("heartbeat")
        return isinstance(beat, (int, float)) and time.time() - beat <= runstate.HEARTBEAT_TIMEOUT_S
