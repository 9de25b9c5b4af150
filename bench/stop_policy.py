"""Stopping at the transition, over seeds and variants of the tiny recipe: where it stops, whether
the marker it stopped on is the one the whole run ends with, what it saves.

    python bench/stop_policy.py [--configs default:42,default:1,...] [--after 5] [--repeat 4] [--evaluate]

Each config is a variant of recipes/tiny.yaml (the learning rate, the LoRA rank or the group size
changed) and a seed. Per config, two real runs (the same seed gives the same curve, step for step):
  policy  `stop.after_transition: N`: stops N steps after the step its marker was confirmed and sure;
  full    the same recipe to stop_at_step: the marker the whole run ends with.
Printed per config and overall:
  the stop run's marker against the full run's (target: within 3 steps in every config), whether
  it stopped before the full run's marker (target: never), flips (confirmed markers later withdrawn,
  in either run), whether any stop came after a cancel (target: never: the trainer stops only on
  the schedule in force once everything it logged is judged), the checkpoint at or just before the
  marker (target: within 3 steps), and the trainer minutes and dollars the stop saved (measured
  trainer lifetimes, billed at the recipe's CPU-box price).
--repeat K trains the first config's policy run K times more, side by side, and prints each one's
stop step and marker (target: all the same). --evaluate also evaluates every checkpoint of the full
runs and prints the pick against the best of all (slow: the shipped arithmetic task on CPU).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tina_core.events import Kind, is_kind, marker, of_kind  # noqa: E402
from tina_core.recipe.loader import load_recipe  # noqa: E402
from tina_core.rundir import RunDir  # noqa: E402
from tina_core.train import snapshots  # noqa: E402

TINY = ROOT / "recipes" / "tiny.yaml"
# The tiny recipe's variants: what each changes (4 prompts a step in all of them)
VARIANTS = {
    "default": (),
    "lr1e-3": ("grpo.learning_rate=1.0e-3",),
    "lr3e-3": ("grpo.learning_rate=3.0e-3",),
    "r8": ("lora.r=8", "lora.lora_alpha=16"),
    "r32": ("lora.r=32", "lora.lora_alpha=64"),
    "g8": ("grpo.num_generations=8", "grpo.per_device_train_batch_size=32"),
}
CONFIGS = ("default:42,default:1,default:2,default:3,default:4,lr1e-3:42,lr3e-3:42,r8:42,r32:42,"
           "g8:42,g8:1")


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


def trainer_seconds(rd: RunDir) -> float:
    ev = rd.read_events()
    starts = {e["attempt"]: e["ts"] for e in of_kind(ev, Kind.ATTEMPT_STARTED)}
    return sum(e.get("end_ts", e["ts"]) - starts[e["attempt"]] for e in of_kind(ev, Kind.ATTEMPT_EXITED)
               if e["attempt"] in starts)


def flips(rd: RunDir) -> int:
    return sum(1 for e in of_kind(rd.read_events(), Kind.TRANSITION)
               if e.get("status") == "rejected" and e.get("was") == "confirmed")


def stop_after_cancel(rd: RunDir) -> bool:
    """Whether a policy stop happened at a step the schedule in force did not name."""
    plan = None
    for e in rd.read_events():
        if is_kind(e, Kind.STOP_SCHEDULED):
            plan = e.get("step")
        elif is_kind(e, Kind.STOPPED) and e.get("by") == "after_transition":
            return plan is None or e.get("step") != plan
    return False


def wait_evals(home: Path, rd: RunDir, timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = status(home, rd.run_id)
        if all(e["state"] not in ("queued", "running") for e in run["evaluations"]):
            return run
        time.sleep(2)
    sys.exit(f"{rd.run_id}: evaluations still running after {timeout:g} s")


def one(home: Path, variant: str, seed: int, after: int, evaluate: bool) -> dict:
    extra = VARIANTS[variant]
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: the stop must not care
        stop_f = pool.submit(train, home, f"policy-{variant}-{seed}", seed, *extra,
                             f"stop.after_transition={after}", f"stop.evaluate={str(evaluate).lower()}")
        full_f = pool.submit(train, home, f"full-{variant}-{seed}", seed, *extra)
        rd, full = stop_f.result(), full_f.result()
    m = marker(rd.read_events())
    stop_run, full_run = status(home, rd.run_id), status(home, full.run_id)
    fm = full_run["phase_transition"] if (full_run["phase_transition"] or {}).get("status") in ("tentative", "confirmed") else None
    before = max((s for s in rd.checkpoint_steps(evaluable=True) if m and s <= m["step"]), default=None)
    row = {
        "config": f"{variant}:{seed}", "marker": m and m["step"], "status": m and m["status"],
        "full_marker": fm and fm["step"], "full_status": fm and fm["status"],
        "stopped_at": stop_run["step"], "stopped_by": (stop_run["stopped_by"] or {}).get("by"),
        "before": before, "distance": None if m is None or before is None else m["step"] - before,
        "flips": flips(rd) + flips(full), "after_cancel": stop_after_cancel(rd),
        "trainer_s": (trainer_seconds(rd), trainer_seconds(full)),
        "usd": (stop_run["cost_usd"]["train"], full_run["cost_usd"]["train"]),
        "ring_bytes": sum(p.stat().st_size for p in rd.snapshots.rglob("*") if p.is_file()) if rd.snapshots.is_dir() else 0,
        "ring_bound": snapshots.ring_size(variant_recipe := load_recipe(TINY, list(extra)))
        * snapshots.adapter_bytes(variant_recipe),
    }
    if evaluate and m is not None:
        tina(home, "eval", full.run_id, "--checkpoint", "all", "--wait")
        scored = [c for c in status(home, full.run_id)["checkpoints"] if c["evals"]]
        best = max(scored, key=lambda c: (sum(c["evals"].values()) / len(c["evals"]), -c["step"]))
        pick = wait_evals(home, rd)["pick"] or {}
        row.update(pick=pick.get("step"), pick_score=pick.get("avg"), best=best["step"],
                   best_score=sum(best["evals"].values()) / len(best["evals"]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=CONFIGS, help="variant:seed,... (variants: " + ", ".join(VARIANTS) + ")")
    ap.add_argument("--after", type=int, default=5, help="stop.after_transition")
    ap.add_argument("--repeat", type=int, default=4, help="train the first config's stop run this many times more")
    ap.add_argument("--evaluate", action="store_true", help="evaluate the full runs' checkpoints and the pick")
    args = ap.parse_args()
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    recipe = load_recipe(TINY)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # The first training on a machine pays its cold file caches (~10 s here): not either side's
        train(home, "warm-up", configs[0][1], "stop_at_step=2", "stop.ring=0")
        for variant, seed in configs:
            r = one(home, variant, seed, args.after, args.evaluate)
            rows.append(r)
            (tp, tf), (up, uf) = r["trainer_s"], r["usd"]
            early = r["full_marker"] is not None and r["stopped_by"] == "after_transition" and r["stopped_at"] <= r["full_marker"]
            pick = (f"; pick {r['pick']} {r['pick_score']}, best of all {r['best']} {r['best_score']:.3f}"
                    if "pick" in r else "")
            print(f"{r['config']:>12}: stop run's marker {r['marker']} ({r['status']}), full run's {r['full_marker']} "
                  f"({r['full_status']}); stopped at {r['stopped_at']} by {r['stopped_by']}"
                  f"{' BEFORE the transition' if early else ''}; pre-marker checkpoint {r['before']}; flips "
                  f"{r['flips']}; stop after a cancel: {'YES' if r['after_cancel'] else 'no'}; trainer {tp:.0f} s "
                  f"vs {tf:.0f} s (saved {(tf - tp) / 60:.2f} min, ${uf - up:.6f}){pick}", flush=True)
        repeats = []
        if args.repeat:
            variant, seed = configs[0]
            with ThreadPoolExecutor(args.repeat) as pool:  # side by side, on a busy machine
                runs = list(pool.map(lambda i: train(home, f"repeat-{i}", seed, *VARIANTS[variant],
                                                     f"stop.after_transition={args.after}", "stop.evaluate=false"),
                                     range(args.repeat)))
            for rd in runs:
                m = marker(rd.read_events())
                repeats.append((status(home, rd.run_id)["step"], m and m["step"], m and m["status"]))
    both = [r for r in rows if r["marker"] is not None and r["full_marker"] is not None]
    print(f"\nover {len(rows)} configs of {TINY.name} (stop.after_transition {args.after}):")
    print(f"  markers: stop run {sum(r['marker'] is not None for r in rows)}/{len(rows)}, full run "
          f"{sum(r['full_marker'] is not None for r in rows)}/{len(rows)}; stop run's within 3 steps of the full "
          f"run's in {sum(abs(r['marker'] - r['full_marker']) <= 3 for r in both)}/{len(both)} (target: all)")
    stopped = [r for r in rows if r["stopped_by"] == "after_transition"]
    print(f"  stopped by the policy in {len(stopped)}/{len(rows)}; before the full run's marker in "
          f"{sum(1 for r in stopped if r['full_marker'] is not None and r['stopped_at'] <= r['full_marker'])} "
          f"(target 0); a stop after a cancel in {sum(r['after_cancel'] for r in rows)} (target 0); flips "
          f"{sum(r['flips'] for r in rows)} over {2 * len(rows)} runs")
    near = [r for r in rows if r["distance"] is not None]
    if near:
        print(f"  checkpoint at or just before the marker: max {max(r['distance'] for r in near)} steps before it "
              f"(target <= 3)")
    if stopped:
        saved_min = [(r["trainer_s"][1] - r["trainer_s"][0]) / 60 for r in stopped]
        saved_usd = [r["usd"][1] - r["usd"][0] for r in stopped]
        share = [1 - r["trainer_s"][0] / r["trainer_s"][1] for r in stopped]
        print(f"  saved against running to stop_at_step: median {statistics.median(saved_min):.2f} min, "
              f"${statistics.median(saved_usd):.6f} at ${recipe.cpu_hour_usd}/h "
              f"({statistics.median(share):.0%} of the trainer's time)")
    if repeats:
        same = len(set(repeats)) == 1
        print(f"  {configs[0][0]}:{configs[0][1]} stop run {len(repeats)} times more, side by side: "
              f"{', '.join(f'stopped at {s}, marker {m} ({st})' for s, m, st in repeats)}: "
              f"{'the same every time' if same else 'NOT the same'}")
    scored = [r for r in rows if r.get("pick_score") is not None]
    if scored:
        gap = [r["best_score"] - r["pick_score"] for r in scored]
        print(f"  pick vs best of all checkpoints (arith, Pass@1): mean gap {statistics.mean(gap):.3f}, "
              f"the pick is the best in {sum(g <= 1e-9 for g in gap)}/{len(scored)}")
    worst = max(rows, key=lambda r: r["ring_bytes"] / r["ring_bound"])
    print(f"  ring disk (snapshots, adapter files and markers): at most {worst['ring_bytes'] / worst['ring_bound']:.0%} "
          f"of its bound, stop.ring x the variant's adapter ({worst['config']}: {worst['ring_bytes'] / 1e6:.2f} MB "
          f"of {worst['ring_bound'] / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
