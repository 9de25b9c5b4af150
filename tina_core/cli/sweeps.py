"""`tina sweep` as printed on a terminal: the runs, their projected dollars, the engine's job (the
sweep itself lives in tina_core.sweep)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from tina_core.cli.output import table
from tina_core.credentials import redact_text
from tina_core.rundir import TinaError


def _money(v: float | None) -> str:
    from tina_core.analysis.cost import usd_text

    return "?" if v is None else usd_text(v)


def _hours(h: float | None) -> str:
    return "?" if h is None else f"{h * 3600:.0f} s" if h < 1 / 60 else f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def plan_lines(plan: Any) -> list[str]:
    """What `tina sweep` prints before it starts anything (and --dry-run prints)."""
    where = (f"this machine's queue, {plan.max_parallel} at a time" + (f" on GPUs {list(plan.gpu_ids)}" if plan.gpu_ids
                                                                         else "")
             if plan.engine == "local" else f"one Slurm job array, {plan.max_parallel} task(s) at a time")
    out = [f"sweep {plan.name}: {len(plan.runs)} run(s), {where}"]
    rows = [(str(r.spec.index), r.spec.name, str(r.spec.recipe), " ".join(r.spec.overrides) or "-",
             f"{r.recipe.gpus} GPU" if r.recipe.gpus else "cpu", str(r.recipe.stop_at_step), _money(r.usd),
             _hours(r.hours)) for r in plan.runs]
    out.append(table(("#", "run", "recipe", "overrides", "on", "stop_at_step", "projected", "time"), rows,
                     right=("#", "stop_at_step", "projected", "time")))
    unpriced = f"; {plan.unpriced} run(s) have no known pace and are not counted" if plan.unpriced else ""
    out.append(f"projected: {_money(plan.total_usd)} for the sweep's training to each run's stop_at_step, about "
               f"{_hours(plan.wall_hours())} {plan.max_parallel} at a time{unpriced} "
               f"(pace: {plan.runs[0].cost.pace_source}; price: {plan.runs[0].cost.price_source})")
    return out


def dry_run_lines(home: Path, plan: Any) -> list[str]:
    """Every run resolved (the values that differ between them), each trainer command, and the job
    the engine would run."""
    from tina_core.recipe import diff
    from tina_core.recipe.loader import parse_yaml

    resolved = [parse_yaml(r.recipe.to_yaml()) or {} for r in plan.runs]
    keys = diff.differing(resolved)
    out = ["", "# every run, resolved and checked (the keys whose values differ between them):"]
    for i, r in enumerate(plan.runs):
        out.append(f"run {r.spec.index}: {r.spec.name} ({r.spec.recipe})")
        out += [f"  {d.key}: {diff.show_value(d.values[i])}" for d in keys]
        out.append(f"  trainer: {shlex.join(r.command)}")
    if plan.engine == "slurm":
        out += ["", "# the job script (sbatch), written to "
                f"{home}/sweeps/{plan.name}/job.sh:", plan.script.rstrip()]
    else:
        out += ["", f"# the queue: a detached daemon, python -m tina_core.sweep local {home} {plan.name}, starts the "
                f"runs in this order, {plan.max_parallel} at a time, each under its own supervisor"
                + (f", on GPUs of its own from {list(plan.gpu_ids)}" if plan.gpu_ids else "")]
    return out


def _gpu_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise TinaError(f"--gpus {text!r}: expected GPU ids such as 0,1") from None


def cli_sweep(home: Path, recipes: Sequence[Path], *, grids: Sequence[str], sets: Sequence[str], name: str | None,
              engine: str, max_parallel: int | None, dry_run: bool, gpus: str | None, gpu_hour_usd: float | None,
              slurm_given: dict[str, Any]) -> int:
    from tina_core.sweep.plan import plan_sweep, start_sweep

    plan = plan_sweep(home, recipes, grids=grids, sets=sets, name=name, engine=engine, max_parallel=max_parallel,
                      slurm_given=slurm_given, gpu_ids=_gpu_ids(gpus), gpu_hour_usd=gpu_hour_usd)
    lines = plan_lines(plan)
    if dry_run:
        print(redact_text("\n".join(lines + dry_run_lines(home, plan))))
        return 0
    print(redact_text("\n".join(lines)), file=sys.stderr, flush=True)
    sweep = start_sweep(home, plan, command=redact_text(shlex.join(["tina", *sys.argv[1:]])))
    print(sweep.name)
    how = (f"Slurm job {sweep.job_id}" if sweep.engine == "slurm" else "the local queue")
    print(f"started: {how}. tina ls (the sweep column) | tina report --sweep {sweep.name} | tina stop RUN cancels "
          "a queued run", file=sys.stderr)
    return 0
