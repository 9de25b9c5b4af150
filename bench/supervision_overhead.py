"""What supervision costs: `tina run` against the trainer run directly on an identical run directory.

    python bench/supervision_overhead.py [--steps N] [--repeats 5] [--recipe recipes/tiny.yaml]

The run is the recipe as it stands (the tiny recipe: 100 steps) unless --steps stops it earlier.

Prints, per repeat and as medians:
  direct      wall time of `python -m tina_core.train RUN_DIR` (same recipe.yaml, same run.json)
  supervised  wall time of `tina run RECIPE --set stop_at_step=N` (foreground, not a TTY)
  trainer     the supervised trainer's own lifetime (attempt_started -> attempt_exited)
and the ratios supervised/direct (everything `tina run` adds, including the recipe's validation
before launch) and trainer/direct (the cost of supervising a running trainer: heartbeat, log pump,
progress display). Runs alternate so drift on the machine hits both sides alike.
The recipe check builds the real GRPOConfig/LoraConfig (importing TRL, ~5 s) the first time a set
of sections meets a set of library versions, and remembers the pass; both costs are printed (the
warm-up run pays the first, the repeats run with it remembered, as every later launch does).
Wall times on a busy machine are noisy; the CPU seconds the supervisor itself used (recorded in the
run's final event) against the trainer's are not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tina_core.train.launcher import launch_env  # noqa: E402
from tina_core.recipe.loader import load_recipe  # noqa: E402
from tina_core.events import Kind, last_of  # noqa: E402
from tina_core.rundir import RunDir, create_run_dir, read_json, write_json_atomic  # noqa: E402


CPU: list[tuple[float, float]] = []  # (supervisor, trainer) CPU seconds of each supervised run


def supervised(home: Path, recipe: Path, overrides: list[str]) -> tuple[float, float, RunDir]:
    cmd = [sys.executable, "-m", "tina_core.cli", "--home", str(home), "run", str(recipe), "--name", "bench"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"tina run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    run_dir = RunDir(home / "runs" / out.stdout.split()[0])
    events = run_dir.read_events()
    started, exited = last_of(events, Kind.ATTEMPT_STARTED), last_of(events, Kind.ATTEMPT_EXITED)
    CPU.append((last_of(events, Kind.FINISHED)["supervisor_cpu_s"], exited["cpu_s"]))
    return wall, exited["ts"] - started["ts"], run_dir


def direct(home: Path, template: RunDir) -> float:
    run_dir = create_run_dir(home, "bench-direct")
    shutil.copy(template.recipe, run_dir.recipe)
    info = read_json(template.run_json, {})
    write_json_atomic(run_dir.run_json, {**info, "run_id": run_dir.run_id})
    # the environment the supervisor gives its trainer (the recipe's launch.env: OMP_NUM_THREADS...)
    env = {**launch_env(load_recipe(run_dir.recipe)), "TINA_ATTEMPT": "1", "TINA_HOME": str(home),
           "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(run_dir.train_log, "wb") as log:
        code = subprocess.run([sys.executable, "-m", "tina_core.train", str(run_dir.path)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"direct trainer failed ({code}); see {run_dir.train_log}")
    return wall


CHECK = "import sys; from tina_core.recipe.configs import validate_recipe; from tina_core.recipe.loader import load_recipe; validate_recipe(load_recipe(sys.argv[1]))"


def recipe_check_s(recipe: Path, cache: Path) -> float:
    """Wall time of a process that validates the recipe with the given cache (start-up included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHECK, str(recipe)], cwd=ROOT, check=True,
                   env={**os.environ, "TINA_CACHE": str(cache)})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tiny.yaml")
    ap.add_argument("--steps", type=int, default=None, help="stop_at_step (default: the recipe's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="more recipe overrides")
    args = ap.parse_args()
    overrides = [*([f"stop_at_step={args.steps}"] if args.steps else []), *args.overrides]
    home = Path(tempfile.mkdtemp(prefix="tina-bench-"))
    os.environ.setdefault("TINA_CACHE", str(Path(os.environ.get("TINA_HOME", "~/.tina")).expanduser() / "cache"))
    print(f"recipe {args.recipe.name}, {args.steps or 'its own stop_at_step'} steps, {args.repeats} repeats, workspace {home}")
    # Warm-up: builds/caches the tiny model and the OS file cache, so neither side pays for it.
    _, _, template = supervised(home, args.recipe, overrides)
    rows = []
    for i in range(args.repeats):
        d = direct(home, template)
        s, trainer, template = supervised(home, args.recipe, overrides)
        rows.append((d, s, trainer))
        print(f"repeat {i + 1}: direct {d:.2f} s  supervised {s:.2f} s  trainer {trainer:.2f} s  "
              f"supervised/direct {s / d:.3f}  trainer/direct {trainer / d:.3f}")
    d, s, t = (statistics.median(c) for c in zip(*rows))
    print(f"median: direct {d:.2f} s  supervised {s:.2f} s  (pre-launch {s - t:.2f} s)  trainer {t:.2f} s")
    print(f"ratio supervised/direct {s / d:.3f}   trainer/direct {t / d:.3f}   (target <= 1.02)")
    empty = Path(tempfile.mkdtemp(prefix="tina-bench-cache-"))
    cold, warm = recipe_check_s(args.recipe, empty), recipe_check_s(args.recipe, Path(os.environ["TINA_CACHE"]))
    shutil.rmtree(empty, ignore_errors=True)
    print(f"recipe check in its own process: first time for these sections and libraries {cold:.2f} s, "
          f"remembered {warm:.2f} s (the repeats above ran with it remembered)")
    sup, tr = (statistics.median(c) for c in zip(*CPU[1:]))
    print(f"CPU while supervising (load-independent): supervisor {sup:.2f} s vs trainer {tr:.2f} s "
          f"= {sup / tr:.4f} of the trainer's CPU, {100 * sup / t:.2f}% of one core")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
