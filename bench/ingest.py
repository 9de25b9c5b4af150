"""Rebuild speed of the DuckDB index: N runs x S steps of TRL 1.x GRPO metrics (~25 keys).

    python bench/ingest.py [--runs 20] [--steps 13000]

Writes a synthetic workspace under a temporary directory (fixed seed), then times
`Store.rebuild()` (target <= 5 s for 20 x 13,000 on 2 cores), an incremental catch-up of one new
line per run, and a no-op ingest. The baseline measured in the same run is Python's own json.loads
over the same files (parsing alone, nothing stored).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tina_core.rundir import RunDir, write_json_atomic  # noqa: E402
from tina_core.store.index import Store  # noqa: E402

KEYS = ["loss", "grad_norm", "learning_rate", "num_tokens", "completions/mean_length",
        "completions/min_length", "completions/max_length", "completions/clipped_ratio",
        "completions/mean_terminated_length", "completions/min_terminated_length",
        "completions/max_terminated_length", "rewards/format_reward/mean", "rewards/format_reward/std",
        "rewards/accuracy_reward/mean", "rewards/accuracy_reward/std", "reward", "reward_std",
        "frac_reward_zero_std", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
        "clip_ratio/region_mean", "step_time", "epoch", "kl"]


def line(rng: random.Random, step: int, steps: int) -> str:
    g = 32  # completions per step: rewards and fractions are multiples of 1/32
    rec = {"step": step, "attempt": 1, "time": "2026-01-01T00:00:00.000+00:00", "ts": 1.7e9 + 60.0 * step}
    for k in KEYS:
        if k.startswith(("rewards/", "reward", "frac", "completions/clipped", "clip_ratio")):
            rec[k] = rng.randint(0, g) / g
        elif k.startswith("completions/"):
            rec[k] = rng.randint(200 * g, 3584 * g) / g
        elif k == "num_tokens":
            rec[k] = float(step * 40000)
        elif k == "epoch":
            rec[k] = step / steps
        else:
            rec[k] = rng.random()  # full-precision floats (loss, grad_norm, lr, kl, entropy...)
    return json.dumps(rec, separators=(",", ":"))


def write_workspace(home: Path, runs: int, steps: int, rng: random.Random) -> int:
    """``runs`` run directories of ``steps`` TRL 1.x metrics lines each; returns the bytes written."""
    size = 0
    for r in range(runs):
        rd = RunDir(home / "runs" / f"run-{r:02d}")
        rd.path.mkdir(parents=True)
        write_json_atomic(rd.run_json, {"run_id": rd.run_id, "name": rd.run_id})
        text = "\n".join(line(rng, s, steps) for s in range(1, steps + 1)) + "\n"
        rd.metrics.write_text(text)
        size += len(text)
    return size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=13000)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="tina-bench-ingest-") as tmp:
        home = Path(tmp)
        size = write_workspace(home, args.runs, args.steps, rng)
        files = sorted(home.glob("runs/*/metrics.jsonl"))

        t0 = time.perf_counter()
        n = sum(1 for f in files for raw in f.read_bytes().splitlines() if json.loads(raw))
        py_s = time.perf_counter() - t0

        store = Store(home)
        t0 = time.perf_counter()
        stats = store.rebuild()
        rebuild_s = time.perf_counter() - t0
        rows = store.query("SELECT count(*) FROM metrics")[0][0]

        for f in files:
            with open(f, "a") as fh:
                fh.write(line(rng, args.steps + 1, args.steps) + "\n")
        t0 = time.perf_counter()
        inc = store.ingest()
        inc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(20):
            store.ingest()
        noop_ms = (time.perf_counter() - t0) / 20 * 1000

    print(f"workspace: {args.runs} runs x {args.steps} steps, {len(KEYS)} keys, {size / 1e6:.0f} MB of JSONL")
    print(f"baseline: json.loads of every line in Python: {py_s:.2f} s ({n / py_s:,.0f} lines/s)")
    print(f"rebuild: {rebuild_s:.2f} s for {stats.lines:,} lines -> {rows:,} rows "
          f"({rows / rebuild_s:,.0f} rows/s, {n / rebuild_s:,.0f} lines/s); "
          f"{rebuild_s / py_s:.2f}x the parse-only baseline; target <= 5 s")
    print(f"catch-up of 1 new line in each of {args.runs} runs: {inc_s * 1000:.0f} ms ({inc.lines} lines)")
    print(f"no-op ingest (nothing new; stat and skip): {noop_ms:.2f} ms")


if __name__ == "__main__":
    main()
