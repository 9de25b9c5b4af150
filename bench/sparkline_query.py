"""Latency of the query behind one TUI sparkline: a 13,000-step series downsampled to ~120 points.

    python bench/sparkline_query.py [--runs 20] [--steps 13000] [--reps 200]

Builds a workspace like bench/ingest.py (fixed seed), then times `Store.metric_series(run, key,
max_points=120)` on random runs and keys inside one session (how the TUI calls it on each
refresh), and the same with a fresh connection per call. Baseline in the same run: fetching the
full un-downsampled series. Target: p95 <= 20 ms for the in-session query.
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

from ingest import KEYS, line  # noqa: E402
from tina_core.rundir import RunDir, write_json_atomic  # noqa: E402
from tina_core.store import Store  # noqa: E402


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
        for r in range(args.runs):
            rd = RunDir(home / "runs" / f"run-{r:02d}")
            rd.path.mkdir(parents=True)
            write_json_atomic(rd.run_json, {"run_id": rd.run_id, "name": rd.run_id})
            rd.metrics.write_text("\n".join(line(rng, s, args.steps) for s in range(1, args.steps + 1)) + "\n")
        store = Store(home)
        store.ingest()
        runs = store.run_ids()
        picks = [(rng.choice(runs), rng.choice(KEYS)) for _ in range(args.reps)]
        timings: dict[str, list[float]] = {"session": [], "full series (baseline)": [], "fresh connection": []}
        with store.session():
            for run, key in picks:
                t0 = time.perf_counter()
                pts = store.metric_series(run, key, max_points=120)
                timings["session"].append(time.perf_counter() - t0)
                assert 100 <= len(pts) <= 120
                t0 = time.perf_counter()
                store.metric_series(run, key, max_points=None)
                timings["full series (baseline)"].append(time.perf_counter() - t0)
        for run, key in picks[: max(20, args.reps // 5)]:
            t0 = time.perf_counter()
            store.metric_series(run, key, max_points=120)
            timings["fresh connection"].append(time.perf_counter() - t0)
    print(f"{args.runs} runs x {args.steps} steps x {len(KEYS)} keys; series -> ~120 points")
    for name, xs in timings.items():
        print(f"{name:24} p50 {pct(xs, 50):7.2f} ms   p95 {pct(xs, 95):7.2f} ms   (n={len(xs)})")
    print("target: p95 <= 20 ms for the in-session query")


if __name__ == "__main__":
    main()
