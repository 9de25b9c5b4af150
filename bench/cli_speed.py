"""How long `tina ls` and `tina status` take on a workspace of finished runs, against a bare
`python -c pass` measured in the same run.

    python bench/cli_speed.py [--runs 20] [--repeats 7] [--source RUN_DIR] [--keep DIR]

The workspace is made by the product itself: one `tina run recipes/tiny.yaml` (the real trainer,
about a minute on 2 cores; or the finished run at --source), copied --runs times under new run ids
(each copy's run.json rewritten through tina's own writer). The index is built by a first `tina
ls`; then each command runs --repeats times as a fresh process, interleaved so drift on the machine
hits all alike. Prints the median wall time of each, its ratio to `python -c pass`, and whether
`tina ls` and `tina status` are under the 0.3 s target. `--cold` also times them with the
run-object cache cleared before each (what the first listing after a change pays).
`--workloads 20x13000,60x2000:sweep` times synthetic workspaces instead (bench/tui.py's: the
second is one sweep's sixty runs of 2,000 steps), each apart.
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

from tina_core.rundir import RunDir, list_run_dirs, write_json_atomic  # noqa: E402

TARGET_S = 0.3


def trained_run(home: Path) -> RunDir:
    """One finished tiny run, trained by `tina run` in the foreground."""
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "run",
                          str(ROOT / "recipes" / "tiny.yaml"), "--name", "speed"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"tina run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return RunDir(home / "runs" / out.stdout.split()[0])


def workspace(home: Path, source: RunDir, n: int) -> list[RunDir]:
    for i in range(n):
        rd = RunDir(home / "runs" / f"{source.run_id}-copy{i:02d}")
        shutil.copytree(source.path, rd.path, ignore=shutil.ignore_patterns("*.lock"))
        write_json_atomic(rd.run_json, {**rd.info(), "run_id": rd.run_id, "name": f"speed-{i:02d}"})
    return list_run_dirs(home)


def wall(cmd: list[str], env: dict[str, str], before=None, after=None) -> float:
    if before is not None:
        before()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    if after is not None:
        after()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--source", type=Path, help="a finished run directory to copy (default: train one)")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    ap.add_argument("--cold", action="store_true", help="also time ls/status with the run-object cache cleared")
    ap.add_argument("--workloads", help="synthetic workspaces instead, RUNSxSTEPS[:sweep],... (bench/tui.py's), "
                                        "e.g. 20x13000,60x2000:sweep; each timed apart")
    args = ap.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="tina-cli-speed-"))
    try:
        if args.workloads:
            from tui import build, workloads

            for runs, steps, sweep in workloads(args.workloads):
                home = base / f"{runs}x{steps}"
                build(home, runs, steps, sweep)
                print(f"\n{runs} ended synthetic runs of {steps} steps each{f' (sweep {sweep})' if sweep else ''} "
                      f"in {home}")
                measure(home, list_run_dirs(home), args)
            return
        if args.source:
            source = RunDir(args.source.resolve())
        else:
            print("training one tiny run to copy (about a minute)...", flush=True)
            source = trained_run(base / "source")
        runs = workspace(base, source, args.runs)
        print(f"{len(runs)} finished runs of {len(list(open(source.metrics)))} metrics lines each in {base}")
        measure(base, runs, args)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def measure(home: Path, runs: list[RunDir], args: argparse.Namespace) -> None:
    env = {**os.environ, "TINA_HOME": str(home)}
    tina = [sys.executable, "-m", "tina_core.cli", "--home", str(home)]
    some = runs[len(runs) // 2].run_id
    wall(tina + ["ls"], env)  # builds the index (and what is kept beside it)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "tina --help": tina + ["--help"],
        "tina ls": tina + ["ls"],
        "tina ls --json": tina + ["ls", "--json"],
        "tina status RUN": tina + ["status", some],
        "tina status RUN --json": tina + ["status", some, "--json"],
    }
    cold = {}
    clear = refill = None
    if args.cold:
        from tina_core.report.run_cache import cache_path

        def clear() -> None:
            cache_path(home).unlink(missing_ok=True)

        def refill() -> None:  # so the next warm command finds every run kept again
            wall(tina + ["ls"], env)

        cold = {"tina ls (cache cleared)": tina + ["ls"], "tina status RUN (cache cleared)": tina + ["status", some]}
    times: dict[str, list[float]] = {k: [] for k in (*commands, *cold)}
    order = [(name, cmd, None, None) for name, cmd in commands.items()]
    order += [(name, cmd, clear, refill) for name, cmd in cold.items()]
    for i in range(args.repeats):
        for name, cmd, before, after in order[i % len(order):] + order[:i % len(order)]:  # none always first
            times[name].append(wall(cmd, env, before, after))
    base = statistics.median(times["python -c pass"])
    print(f"median of {args.repeats} fresh processes each (load average {os.getloadavg()[0]:.1f}):")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<34} {med:6.3f} s   x{med / base:5.1f} of python -c pass   (min {min(ts):.3f})")
    for name in ("tina ls", "tina status RUN"):
        med = statistics.median(times[name])
        print(f"{name}: {'under' if med < TARGET_S else 'OVER'} the {TARGET_S} s target ({med:.3f} s)")


if __name__ == "__main__":
    main()
