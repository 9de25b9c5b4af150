"""The overlay's cost: a cockpit refresh with six runs marked (each 13,000 steps) while the run in
view is live, with the collector's overlay cache on and off, and drawing the overlay at 160x48.

Prints the refresh p50/p95 (ms) with six marked runs and with none, the same with the
``collector.overlay`` cache switched off, and the ratio; then the drawing time per frame.

    .venv/bin/python bench/overlay.py [--steps 13000] [--cycles 60]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from tina_core import caches
from tina_core.rundir import RunDir
from tina_tui.collector import Collector
from tina_tui.view import CHARTS
from tina_tui.demo import SyntheticRun
from tina_tui.widgets.overlay import overlay_lines


def build(home: Path, steps: int) -> tuple[list[str], SyntheticRun]:
    ids = []
    for i in range(6):
        rid = f"run-{i:02d}"
        SyntheticRun(rid, name=rid, steps=steps, stop_at_step=steps, max_steps=2 * steps, save_steps=500,
                     dataset_size=steps * 8, transition=int(steps * (0.2 + 0.05 * i)), seed=i, step_s=1.0).write(home)
        ids.append(rid)
    live = SyntheticRun("live-00", name="live", steps=100, stop_at_step=100000, max_steps=200000, state="running",
                        start_ts=time.time() - 100, step_s=1.0, seed=99)
    live.write(home)
    return ids, live


def cycles(home: Path, live: SyntheticRun, marks: dict[str, int], n: int, grow_every: int) -> list[float]:
    """Refresh times (ms) of a warm collector; the live run gains a step every ``grow_every`` refreshes."""
    collector = Collector(home)
    for _ in range(3):  # warm: ingest everything, describe every run
        collector.collect("live-00", None, marks)
    rd = RunDir(home / "runs" / "live-00")
    step = json.loads(rd.metrics.read_text().splitlines()[-1])["step"]
    out = []
    for i in range(n):
        if i % grow_every == 0:
            step += 1
            rec = {"step": step, "attempt": 1, "time": "", "ts": time.time(),
                   **live.metrics_at(step, random.Random(step))}
            with rd.metrics.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            SyntheticRun.heartbeat(rd)
        t0 = time.perf_counter()
        snap = collector.collect("live-00", None, marks)
        out.append(1000 * (time.perf_counter() - t0))
        assert (snap.overlay is not None) == bool(marks)
    return out


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"p50 {statistics.median(ms):6.1f} ms  p95 {q[-1]:6.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=13000)
    ap.add_argument("--cycles", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        ids, live = build(home, args.steps)
        marks = {rid: i for i, rid in enumerate(ids)}
        for grow_every, what in ((1, "a live step every refresh"), (10 ** 9, "between the live run's steps")):
            none = cycles(home, live, {}, args.cycles, grow_every)
            six = cycles(home, live, marks, args.cycles, grow_every)
            caches.switch_off("collector.overlay")
            uncached = cycles(home, live, marks, args.cycles, grow_every)
            caches._OFF.discard("collector.overlay")
            print(f"{what}:")
            print(f"  no run marked              {summary(none)}")
            print(f"  six marked                 {summary(six)}   ({statistics.median(six) / statistics.median(none):.2f}x)")
            print(f"  six marked, cache off      {summary(uncached)}   "
                  f"({statistics.median(uncached) / statistics.median(six):.2f}x the cached)")
        collector, overlay = Collector(home), None
        while overlay is None:  # a cold collector describes the runs over its first refreshes
            overlay = collector.collect("live-00", None, marks).overlay
        t0 = time.perf_counter()
        frames = 50
        for i in range(frames):
            overlay_lines(overlay, CHARTS[i % len(CHARTS)][0], CHARTS[i % len(CHARTS)][1], "transition" if i % 2 else "step",
                          160, 40)
        print(f"drawing the overlay of six runs at 160x40: {1000 * (time.perf_counter() - t0) / frames:.1f} ms a frame")


if __name__ == "__main__":
    main()
