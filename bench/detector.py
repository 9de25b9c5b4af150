"""Phase-transition detector on synthetic curves with known change points.

    python bench/detector.py [--seeds 60] [RUN_DIR/metrics.jsonl ...]

Prints, per scenario: median delay of the live (tentative) marker after the true change, the rate
of markers raised before the change or on a no-change control (live, even if later rejected, and
final, after confirmation), and the miss rate (no marker by the end). Targets: median delay <= 10
steps, <= 5% false alarms, <= 5% misses. Then the detector's verdict on real curves: the given
metrics.jsonl files, by default the tiny recipe's real run (tests/data/tiny_run_metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from synthetic import generate, scenarios  # noqa: E402
from tina_core.analysis import phase  # noqa: E402
from tina_core.analysis import metric_keys

TINY_CURVE = Path(__file__).resolve().parent.parent / "tests" / "data" / "tiny_run_metrics.jsonl"


def evaluate(params: phase.PhaseParams, seeds: int) -> tuple[list[tuple], dict]:
    rows, delays, fa_live, fa_final, misses, n_change, n_all = [], [], 0, 0, 0, 0, 0
    for sc in scenarios():
        d, live_fa, final_fa, miss = [], 0, 0, 0
        for seed in range(seeds):
            series, truth = generate(sc, seed)
            found = list(phase.alarms("x", series, params))
            final = found[-1] if found and found[-1].status != "rejected" else None
            first_live = found[0] if found else None
            if truth is None:
                live_fa += bool(found)
                final_fa += final is not None
                continue
            live_fa += first_live is not None and first_live.detected_at < truth
            early = final is not None and final.step < truth - 5
            final_fa += early
            if final is None or early:
                miss += final is None
                continue
            d.append(final.detected_at - truth)
        n_all += seeds
        fa_live += live_fa
        fa_final += final_fa
        if sc.change:
            n_change += seeds
            misses += miss
            delays += d
        med = statistics.median(d) if d else float("nan")
        rows.append((sc.name, med, live_fa / seeds, final_fa / seeds, miss / seeds if sc.change else float("nan")))
    summary = {"median_delay": statistics.median(delays) if delays else float("nan"),
               "false_alarm_live": fa_live / n_all, "false_alarm_final": fa_final / n_all,
               "miss": misses / max(n_change, 1)}
    return rows, summary


def verdict(path: Path, params: phase.PhaseParams) -> None:
    series: dict[str, dict[int, tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = metric_keys.normalise_record(json.loads(line))
        except ValueError:
            continue
        if not isinstance(rec.get("step"), int):
            continue
        key = (rec.get("attempt", 1), )
        for s in params.signals:
            if isinstance(rec.get(s), (int, float)):
                # latest attempt wins per step, as in the store
                prev = series.setdefault(s, {}).get(rec["step"])
                if prev is None or key[0] >= prev[0]:
                    series[s][rec["step"]] = (key[0], float(rec[s]))
    clean = {s: sorted((st, v) for st, (_, v) in d.items()) for s, d in series.items()}
    result = phase.detect(clean, params)
    print(f"\n{path}: {json.dumps(result)}")
    mid = result["step"] if result and result.get("step") is not None else None
    for s, pts in clean.items():
        near = [(st, v) for st, v in pts if mid is None or abs(st - mid) <= 12][:40]
        print(f"  {s} ({len(pts)} steps), around the marker: " + ", ".join(f"{st}:{v:.3g}" for st, v in near))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("metrics", nargs="*", type=Path, default=[TINY_CURVE])
    args = ap.parse_args()
    params = phase.DEFAULT
    t0 = time.perf_counter()
    rows, summary = evaluate(params, args.seeds)
    took = time.perf_counter() - t0
    print(f"{params}\n")
    print(f"{'scenario':42} {'median delay':>12} {'FA live':>8} {'FA final':>8} {'miss':>6}")
    for name, med, fal, faf, miss in rows:
        print(f"{name:42} {med:12.1f} {fal:8.2f} {faf:8.2f} {miss:6.2f}")
    n = len(rows) * args.seeds
    print(f"\noverall ({args.seeds} seeds per scenario, {n} curves of 300 steps, "
          f"{1000 * took / n:.1f} ms per curve): median delay {summary['median_delay']:.1f} steps "
          f"(target <= 10), false alarms live {summary['false_alarm_live']:.1%} / final "
          f"{summary['false_alarm_final']:.1%} (target <= 5%), misses {summary['miss']:.1%} (target <= 5%)")
    for path in args.metrics:
        verdict(path, phase.params_for_run(path.parent, params))  # a run's own format rewards


if __name__ == "__main__":
    main()
