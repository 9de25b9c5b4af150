"""Cost of tina's trainer callback (metrics.jsonl line per step, stop/SIGTERM checks, checkpoint
markers) on the tiny recipe, against the same training without it, measured in this one process.

    .venv/bin/python bench/callback_overhead.py [--steps 40] [--rounds 2]

Prints the median wall time per optimizer step with and without the callback (runs interleaved
A/B/A/B so machine load hits both alike), their ratio (target <= 1.01), and the callback's own
time per step measured inside it, which does not depend on that noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as recipes/tiny.yaml launches the trainer
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_run(home: Path, steps: int, with_callback: bool) -> tuple[list[float], float]:
    """(wall seconds between consecutive step ends, seconds spent inside tina's callback)."""
    from transformers import TrainerCallback

    from tina_core.recipe.loader import load_recipe
    from tina_core.rundir import create_run_dir
    from tina_core.train.trainer import build_trainer, make_callback

    rd = create_run_dir(home, "bench")
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml",
                         [f"grpo.max_steps={steps}", f"stop_at_step={steps}", "grpo.save_steps=100000"])
    rd.recipe.write_text(recipe.to_yaml())

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    clock = StepClock()
    callbacks: list = [clock]
    inside = [0.0]
    if with_callback:
        cb = make_callback(rd, recipe, attempt=1)
        for name in ("on_log", "on_step_end", "on_save"):
            method = getattr(cb, name)

            def timed(*a, _m=method, **kw):
                t = time.perf_counter()
                try:
                    return _m(*a, **kw)
                finally:
                    inside[0] += time.perf_counter() - t
            setattr(cb, name, timed)
        callbacks.append(cb)
    trainer = build_trainer(rd, recipe, callbacks=callbacks)
    trainer.train()
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    return gaps[2:], inside[0] / max(1, len(clock.ends))  # the first steps warm caches up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ.setdefault("TINA_CACHE", str(home / "cache"))
        from tina_core.recipe.tiny_model import ensure_tiny_model

        ensure_tiny_model(log=lambda *_: None)
        gaps = {False: [], True: []}
        self_time = []
        for _ in range(args.rounds):
            for with_cb in (False, True):
                g, inside = one_run(home, args.steps, with_cb)
                gaps[with_cb] += g
                if with_cb:
                    self_time.append(inside)
    base, withcb = statistics.median(gaps[False]), statistics.median(gaps[True])
    cb = statistics.mean(self_time)
    print(f"tiny recipe, {args.rounds} x {args.steps} steps each way, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"median step without callback: {base * 1e3:8.1f} ms")
    print(f"median step with callback:    {withcb * 1e3:8.1f} ms")
    print(f"ratio with/without (wall, noisy):        {withcb / base:.3f}")
    print(f"callback's own time per step: {cb * 1e6:8.1f} us")
    print(f"ratio (step + callback) / step:          {(base + cb) / base:.4f}  (target <= 1.01)")


if __name__ == "__main__":
    main()
