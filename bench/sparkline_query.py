"""Latency of the query behind one TUI sparkline: a 13,000-step series downsampled to ~120 points.

    python bench/sparkline_query.py [--runs 20] [--steps 13000] [--reps 200]

Builds a workspace like bench/ingest.py (fixed seed), then times `Store.metric_series(run, key,
max_points=120)` on random runs and keys: cold (a new Store, connection already open: the SQL
path), on refresh (the TUI's pattern: the trainer appended a step, ingest, ask again), and cold
with a fresh connection per call. Baseline in the same run: the full, un-downsampled series,
cold. Target: p95 <= 20 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from ingest import KEYS, line, write_workspace  # noqa: E402
from tina_core.store.index import Store  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=13000)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="tina-bench-spark-") as tmp:
        home = Path(tmp)
        write_workspace(home, args.runs, args.steps, rng)
        store = Store(home)
        store.ingest()
        runs = store.run_ids()
        picks = [(rng.choice(runs), rng.choice(KEYS)) for _ in range(args.reps)]
        timings: dict[str, list[float]] = {"cold (first call, SQL)": [], "refresh (1 new step)": [],
                                           "refresh (run unchanged)": [],
                                           "full series (baseline)": [], "fresh connection, cold": []}
        for run, key in picks:
            cold = Store(home)
            with cold.session():
                t0 = time.perf_counter()
                pts = cold.metric_series(run, key, max_points=120)
                timings["cold (first call, SQL)"].append(time.perf_counter() - t0)
                assert 100 <= len(pts) <= 120, (run, key, len(pts), cold.last_step(run))
            base = Store(home)
            with base.session():
                t0 = time.perf_counter()
                base.metric_series(run, key, max_points=None)
                timings["full series (baseline)"].append(time.perf_counter() - t0)
        # how the TUI calls it: every refresh, after ingesting what the trainer appended
        live = Store(home)
        step = args.steps
        for run, key in picks:
            step += 1
            with open(home / "runs" / run / "metrics.jsonl", "a") as f:
                f.write(line(rng, step, args.steps) + "\n")
            with live.session():
                live.ingest([run])
                live.metric_series(run, key, max_points=120)
                with open(home / "runs" / run / "metrics.jsonl", "a") as f:
                    f.write(line(rng, step + 100000, args.steps) + "\n")
                live.ingest([run])
                t0 = time.perf_counter()
                live.metric_series(run, key, max_points=120)
                timings["refresh (1 new step)"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                live.metric_series(run, key, max_points=120)
                timings["refresh (run unchanged)"].append(time.perf_counter() - t0)
        for run, key in picks[: max(20, args.reps // 5)]:
            t0 = time.perf_counter()
            Store(home).metric_series(run, key, max_points=120)
            timings["fresh connection, cold"].append(time.perf_counter() - t0)
    print(f"{args.runs} runs x {args.steps} steps x {len(KEYS)} keys; series -> ~120 points")
    for name, xs in timings.items():
        print(f"{name:24} p50 {pct(xs, 50):7.2f} ms   p95 {pct(xs, 95):7.2f} ms   (n={len(xs)})")
    print("target: p95 <= 20 ms")


if __name__ == "__main__":
    main()
