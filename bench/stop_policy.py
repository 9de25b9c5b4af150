"""Stopping at the transition, over several seeds of the tiny recipe: what it keeps, what it saves.

    python bench/stop_policy.py [--seeds 42,1,2] [--after 5]

Per seed, two real runs of recipes/tiny.yaml (the same seed gives the same curve, step for step):
  policy  `stop.after_transition: N`: stops N steps after the confirmed marker and evaluates, by
          itself, the two checkpoints around the marker and the base model, and names the pick;
  full    the same recipe to stop_at_step, then every checkpoint evaluated (`tina eval --checkpoint
          all`): the best of all checkpoints, as a run that never stopped early could know it.
Prints, per seed and over the seeds:
  the distance from the pre-marker checkpoint to the marker (target <= 3 steps);
  the pick's score against the best of all checkpoints (the shipped arithmetic task, Pass@1);
  minutes and dollars the policy run saved against the full run (trainer lifetimes, measured, and
  billed at the recipe's CPU-box price), and the saving `tina status` projected when it stopped;
  the disk the ring cost: its snapshots and the pins, measured, beside its bound
  (stop.ring x the adapter's size) and the same bound for Tina's r32 LoRA on the distilled 1.5B.
Everything is read from the runs' own files and `tina status --json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tina_core.events import Kind, marker, of_kind  # noqa: E402
from tina_core.recipe.loader import load_recipe  # noqa: E402
from tina_core.rundir import RunDir  # noqa: E402
from tina_core.train import snapshots  # noqa: E402

TINY = ROOT / "recipes" / "tiny.yaml"


def tina(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                         capture_output=True, text=True)
    if check and out.returncode not in (0, 75):
        sys.exit(f"tina {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return out


def status(home: Path, run_id: str) -> dict:
    return json.loads(tina(home, "status", run_id, "--json").stdout)


def train(home: Path, name: str, seed: int, *overrides: str) -> RunDir:
    out = tina(home, "run", str(TINY), "--name", name, "--set", f"grpo.seed={seed}",
               *[a for o in overrides for a in ("--set", o)])
    return RunDir(home / "runs" / out.stdout.split()[0])


def wait_evals(home: Path, rd: RunDir, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = status(home, rd.run_id)
        if run["evaluations"] and all(e["state"] not in ("queued", "running") for e in run["evaluations"]):
            return run
        time.sleep(2)
    sys.exit(f"{rd.run_id}: evaluations still running after {timeout:g} s")


def trainer_seconds(rd: RunDir) -> float:
    ev = rd.read_events()
    starts = {e["attempt"]: e["ts"] for e in of_kind(ev, Kind.ATTEMPT_STARTED)}
    return sum(e.get("end_ts", e["ts"]) - starts[e["attempt"]] for e in of_kind(ev, Kind.ATTEMPT_EXITED)
               if e["attempt"] in starts)


def disk(paths: list[Path]) -> int:
    """Bytes on disk, each file once (a pin's hard links to the ring count once)."""
    seen, total = set(), 0
    for root in paths:
        for p in (root.rglob("*") if root.is_dir() else ()):
            if p.is_file():
                st = p.stat()
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def one_seed(home: Path, seed: int, after: int) -> dict:
    rd = train(home, f"policy-{seed}", seed, f"stop.after_transition={after}")
    queued = bool(of_kind(rd.read_events(), Kind.EVAL_QUEUED))  # none without a marker
    policy_run = wait_evals(home, rd) if queued else status(home, rd.run_id)
    m = marker(rd.read_events())
    full = train(home, f"full-{seed}", seed)
    tina(home, "eval", full.run_id, "--checkpoint", "all", "--wait")
    tina(home, "eval", full.run_id, "--checkpoint", "base", "--wait")
    full_run = status(home, full.run_id)
    scored = [c for c in full_run["checkpoints"] if c["evals"]]
    best = max(scored, key=lambda c: (sum(c["evals"].values()) / len(c["evals"]), -c["step"]))
    pins = [rd.checkpoint_path(s) for s in snapshots.pinned_steps(rd)]
    pick = policy_run["pick"] or {}
    before = max((s for s in rd.checkpoint_steps(evaluable=True) if m and s <= m["step"]), default=None)
    return {
        "seed": seed, "marker": m and m["step"], "status": m and m["status"], "before": before,
        "distance": None if m is None or before is None else m["step"] - before,
        "stopped_at": policy_run["step"], "stopped_by": (policy_run["stopped_by"] or {}).get("by"),
        "pick": pick.get("step"), "pick_score": pick.get("avg"),
        "best": best["step"], "best_score": sum(best["evals"].values()) / len(best["evals"]),
        "base_score": full_run["base"]["avg"],
        "trainer_s": (trainer_seconds(rd), trainer_seconds(full)),
        "usd": (policy_run["cost_usd"]["train"], full_run["cost_usd"]["train"]),
        "projected_saved": (policy_run["saved_minutes"], policy_run["saved_usd"]),
        "ring_bytes": disk([rd.snapshots, *pins]),
        "ring_files": (len(snapshots.ring_steps(rd)), len(pins)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument("--after", type=int, default=5, help="stop.after_transition")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recipe = load_recipe(TINY)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # The first training on a machine pays its cold file caches (~10 s here): not either side's
        train(home, "warm-up", seeds[0], "stop_at_step=2", "stop.ring=0")
        for seed in seeds:
            rows.append(one_seed(home, seed, args.after))
            r = rows[-1]
            (tp, tf), (up, uf) = r["trainer_s"], r["usd"]
            print(f"seed {seed}: marker {r['marker']} ({r['status']}), pre-marker checkpoint {r['before']} "
                  f"({r['distance']} steps before), stopped at {r['stopped_at']} by {r['stopped_by']}; "
                  f"pick {r['pick']} {r['pick_score']}, best of all {r['best']} {r['best_score']:.3f}, "
                  f"base {r['base_score']}; trainer {tp:.0f} s vs {tf:.0f} s to stop_at_step "
                  f"(saved {(tf - tp) / 60:.2f} min, ${uf - up:.6f}; projected at the stop "
                  f"{r['projected_saved'][0]} min, ${r['projected_saved'][1]}); ring + pins on disk "
                  f"{r['ring_bytes'] / 1e6:.2f} MB ({r['ring_files'][0]} snapshots, {r['ring_files'][1]} pinned)",
                  flush=True)
    ok = [r for r in rows if r["distance"] is not None]
    print()
    print(f"over {len(rows)} seeds of {TINY.name} (stop.after_transition {args.after}):")
    if ok:
        print(f"  pre-marker checkpoint to the marker: median {statistics.median(r['distance'] for r in ok)} steps, "
              f"max {max(r['distance'] for r in ok)} (target <= 3); markers found in {len(ok)}/{len(rows)} seeds")
    scored = [r for r in rows if r["pick_score"] is not None]
    if scored:
        gap = [r["best_score"] - r["pick_score"] for r in scored]
        print(f"  pick vs best of all checkpoints (arith, Pass@1): mean pick {statistics.mean(r['pick_score'] for r in scored):.3f}, "
              f"mean best {statistics.mean(r['best_score'] for r in scored):.3f}, mean gap {statistics.mean(gap):.3f}, "
              f"pick is the best in {sum(g <= 1e-9 for g in gap)}/{len(scored)}; "
              f"mean base model {statistics.mean(r['base_score'] for r in scored):.3f}")
    saved_min = [(r["trainer_s"][1] - r["trainer_s"][0]) / 60 for r in rows]
    saved_usd = [r["usd"][1] - r["usd"][0] for r in rows]
    share = [1 - r["trainer_s"][0] / r["trainer_s"][1] for r in rows]
    print(f"  saved against running to stop_at_step: median {statistics.median(saved_min):.2f} min, "
          f"${statistics.median(saved_usd):.6f} at ${recipe.cpu_hour_usd}/h ({statistics.median(share):.0%} of the trainer's time)")
    each = snapshots.adapter_bytes(recipe)
    tina = load_recipe(ROOT / "recipes" / "tina" / "open_rs2.yaml")
    tina_each, tina_ring = snapshots.adapter_bytes(tina), snapshots.ring_size(tina)
    ring = snapshots.ring_size(recipe)
    print(f"  ring disk: measured max {max(r['ring_bytes'] for r in rows) / 1e6:.2f} MB; bound {ring} x "
          f"{each / 1e6:.2f} MB = {ring * each / 1e6:.2f} MB (+2 pinned); for Tina's r32 on the 1.5B "
          f"(its recipes' ring): {tina_ring} x {tina_each / 1e6:.1f} MB = {tina_ring * tina_each / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
