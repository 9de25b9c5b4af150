"""Reproduce the format phase transition on the tiny model, from nothing, and time each part.

    .venv/bin/python bench/tiny_phase_transition.py [--runs 2] [--set key=value ...]

Builds the tiny model in a fresh cache (tokenizer + SFT warm start), then trains recipes/tiny.yaml
with the real trainer process (launch_command / launch_env, as `tina run` does) ``--runs`` times with
the same seed. Prints the build and training wall times, the format reward every 5 steps, where its
3-step mean first exceeds 0.1 (leaves ~0) and first reaches 0.8, and whether the runs' curves are
identical. With recipes/tiny.yaml as shipped (seed 42): 47 and 60, identical curves, and 10-15 s
per run of 100 GRPO steps on a 2-core machine (process start to exit, the model already built).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FORMAT = "rewards/format_reward/mean"


def smooth(values: list[float], k: int = 3) -> list[float]:
    return [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    from tina_core.train.launcher import launch_command, launch_env
    from tina_core.recipe.loader import load_recipe
    from tina_core.rundir import create_run_dir, iter_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env_base = {**os.environ, "TINA_CACHE": str(home / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "tina_core.recipe.tiny_model"], env=env_base, check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        build_s = time.time() - t0
        curves, times = [], []
        for i in range(args.runs):
            rd = create_run_dir(home, f"tiny-{i}")
            recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", args.overrides)
            rd.recipe.write_text(recipe.to_yaml())
            t = time.time()
            with open(rd.train_log, "w") as log:
                subprocess.run(launch_command(rd, recipe), env=launch_env(recipe, env_base), cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, check=True)
            times.append(time.time() - t)
            rows = [r for r in iter_jsonl(rd.metrics) if FORMAT in r]
            curves.append([r[FORMAT] for r in rows])
            steps_s = [r["step_time"] for r in rows if "step_time" in r]
        curve = curves[0]
        sm = smooth(curve)
        leave = next((i + 1 for i, v in enumerate(sm) if v > 0.1), None)
        reach = next((i + 1 for i, v in enumerate(sm) if v >= 0.8), None)
        print(f"tiny model build (tokenizer + {600}-step SFT warm start): {build_s:6.1f} s")
        for i, s in enumerate(times):
            print(f"GRPO run {i + 1}: {len(curves[i])} steps in {s:6.1f} s (process start to exit)")
        print(f"mean GRPO step_time (TRL's): {sum(steps_s) / len(steps_s):.3f} s")
        print(f"total, build + first run: {build_s + times[0]:6.1f} s")
        print("format reward by step: " + " ".join(f"{i + 1}:{v:.2f}" for i, v in enumerate(curve) if (i + 1) % 5 == 0))
        print(f"format reward (3-step mean) first above 0.1 at step {leave}, first >= 0.8 at step {reach}")
        if args.runs > 1:
            same = all(c == curves[0] for c in curves[1:])
            print(f"same seed, {args.runs} runs: format curves {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
