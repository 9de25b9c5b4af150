"""`tina sweep`: several recipes and a grid of overrides as one set of runs, checked, priced, created
and handed to an engine.

Every run of the sweep is resolved and checked before anything is created, exactly as `tina run`
checks one (``lifecycle.load_validated``; on a Slurm login node without the runs' GPUs, without the
hardware check, as `tina run --dry-run`). Its projected dollars are summed before it starts. Then each
run is created ``queued`` (``lifecycle.create_run`` with its sweep: ``run.json``'s ``sweep`` and
``sweep_index``, a ``queued`` event) and the engine takes over: the local queue
(``tina_core.sweep.local``) or one Slurm job array (``tina_core.sweep.slurm``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tina_core.events import Kind
from tina_core.rundir import RunDir, TinaError, now_iso, runs_root
from tina_core.sweep import record, slurm

GRID_RE = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$", re.S)


def split_values(text: str) -> list[str]:
    """``v1,v2,...`` split at the commas outside brackets and quotes (``[q_proj,v_proj],[q_proj]``
    is two values)."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``--grid key=v1,v2`` as ``(key, [v1, v2])``."""
    m = GRID_RE.match(text.strip())
    values = split_values(m.group(2)) if m else []
    if not m or not all(values):
        raise TinaError(f"--grid {text!r}: expected key.path=value1,value2,... (e.g. lora.r=8,16,32)")
    if len(set(values)) != len(values):
        raise TinaError(f"--grid {text!r}: a value is given twice")
    return m.group(1), values


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep, before it is resolved."""

    index: int
    recipe: Path
    overrides: tuple[str, ...]   # the sweep's --set, then this run's grid values
    name: str


def expand(name: str, recipes: Sequence[Path], grids: Sequence[str], sets: Sequence[str] = ()) -> list[RunSpec]:
    """Every recipe times every combination of the grid (the first --grid varies slowest)."""
    if not recipes:
        raise TinaError("tina sweep: give at least one recipe")
    axes = [parse_grid(g) for g in grids]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise TinaError(f"--grid: a key is given twice ({', '.join(k for k in keys if keys.count(k) > 1)})")
    stems = [Path(r).stem for r in recipes]
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for recipe, stem in zip(recipes, stems):
        for combo in itertools.product(*[vals for _, vals in axes]):
            label = ([stem] if len(set(recipes)) > 1 else []) + \
                [f"{k.rsplit('.', 1)[-1]}{v}" for k, v in zip(keys, combo)]
            run_name = "-".join([name, *label]) if label else f"{name}-{len(specs)}"
            if run_name in seen:
                run_name = f"{run_name}-{len(specs)}"
            seen.add(run_name)
            specs.append(RunSpec(len(specs), Path(recipe), (*sets, *(f"{k}={v}" for k, v in zip(keys, combo))),
                                 run_name))
    return specs


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    recipe: Any        # the resolved, checked Recipe
    cost: Any          # analysis.projection.LaunchCost
    command: list[str]  # the trainer's command line (a placeholder run directory)

    @property
    def usd(self) -> float | None:
        return self.cost.usd_to(self.recipe.stop_at_step)

    @property
    def hours(self) -> float | None:
        return self.cost.hours_to(self.recipe.stop_at_step)


@dataclass(frozen=True)
class SweepPlan:
    name: str
    engine: str
    max_parallel: int
    runs: list[PlannedRun]
    gpu_ids: tuple[int, ...] = ()            # local: the GPUs the queue hands out
    slurm: slurm.SlurmOptions | None = None
    script: str | None = None                 # slurm: the job script
    gpu_hour_usd: float | None = None

    @property
    def total_usd(self) -> float:
        return sum(r.usd or 0.0 for r in self.runs)

    @property
    def unpriced(self) -> int:
        """Runs with no pace known for their model and device (their dollars are not in the total)."""
        return sum(1 for r in self.runs if r.usd is None)

    def wall_hours(self) -> float | None:
        """About how long the sweep takes, its runs ``max_parallel`` at a time (longest first)."""
        hours = sorted((r.hours for r in self.runs if r.hours is not None), reverse=True)
        if not hours:
            return None
        slots = [0.0] * self.max_parallel
        for h in hours:
            slots[slots.index(min(slots))] += h
        return max(slots)


def default_name() -> str:
    return "sweep-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def plan_sweep(home: Path, recipes: Sequence[Path], *, grids: Sequence[str] = (), sets: Sequence[str] = (),
               name: str | None = None, engine: str = "local", max_parallel: int | None = None,
               slurm_given: dict[str, Any] | None = None, gpu_ids: Sequence[int] | None = None,
               gpu_hour_usd: float | None = None) -> SweepPlan:
    """Every run resolved and checked, priced, and the engine's job described. Creates nothing;
    the first problem found in any run is an error naming the run."""
    from tina_core import gpu
    from tina_core.analysis import projection
    from tina_core.supervise.lifecycle import load_validated
    from tina_core.train.launcher import launch_command

    if engine not in record.ENGINES:
        raise TinaError(f"--engine {engine!r}: expected one of {', '.join(record.ENGINES)}")
    name = record.check_name(name or default_name())
    if record.sweep_dir(home, name).exists():
        raise TinaError(f"a sweep named {name!r} exists already ({record.sweep_dir(home, name)}): choose another --name")
    opts = slurm.options(home, slurm_given or {}) if engine == "slurm" else None
    specs = expand(name, recipes, grids, sets)
    if max_parallel is not None and max_parallel < 1:
        raise TinaError(f"--max-parallel {max_parallel}: at least 1")
    here = engine == "local"
    gpu_name = gpu.gpu_model() if here else None
    measures = projection.measured(home)
    planned, problems = [], []
    for spec in specs:
        try:
            recipe = load_validated(spec.recipe, spec.overrides, hardware=here)
        except TinaError as e:
            problems.append(f"run {spec.index} ({spec.name}): {e}")
            continue
        planned.append(PlannedRun(spec, recipe, projection.launch_cost(home, recipe, gpu_name=gpu_name, measures=measures),
                                  launch_command(RunDir(runs_root(home) / "<run_id>"), recipe)))
    if problems:
        raise TinaError(f"{len(problems)} of the sweep's {len(specs)} runs do not pass the checks; nothing was "
                        "created:\n  " + "\n  ".join(problems))
    most_gpus = max(r.recipe.gpus for r in planned)
    pool: tuple[int, ...] = ()
    if here and most_gpus:
        pool = tuple(gpu_ids) if gpu_ids is not None else tuple(g["index"] for g in gpu.gpus())
        if len(pool) < most_gpus:
            raise TinaError(f"a run of the sweep needs {most_gpus} GPUs; the queue has {len(pool)} ({list(pool)})")
    elif gpu_ids is not None and not here:
        raise TinaError("--gpus is the local queue's: on Slurm, --gpus-per-task asks for them")
    if max_parallel is None:
        max_parallel = max(1, len(pool) // most_gpus) if pool else (len(planned) if not here else 1)
    script = None
    if opts is not None:
        script = slurm.job_script(home=home, name=name, n=len(planned), max_parallel=max_parallel, opts=opts,
                                  gpus=most_gpus, cwd=Path.cwd())
    return SweepPlan(name, engine, max_parallel, planned, pool, opts, script, gpu_hour_usd)


def start_sweep(home: Path, plan: SweepPlan, command: str = "") -> record.Sweep:
    """Create every run of the plan (queued), write the sweep's record and hand it to its engine.
    A run that cannot be created, or a submission Slurm refuses, leaves the runs made so far
    ``cancelled`` with the reason, and is an error."""
    from tina_core.supervise.lifecycle import create_run

    folder = record.sweep_dir(home, plan.name)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise TinaError(f"a sweep named {plan.name!r} exists already ({folder})") from None
    made: list[RunDir] = []
    secrets: dict[str, str] = {}
    try:
        for run in plan.runs:
            rd, secret = create_run(home, run.spec.recipe, name=run.spec.name, overrides=run.spec.overrides,
                                    gpu_hour_usd=plan.gpu_hour_usd, resolved=run.recipe,
                                    sweep=(plan.name, run.spec.index, plan.engine))
            made.append(rd)
            secrets.update(secret)
        sweep = record.Sweep(name=plan.name, engine=plan.engine, max_parallel=plan.max_parallel,
                             runs=tuple(rd.run_id for rd in made), created=now_iso(), command=command,
                             gpu_ids=plan.gpu_ids, slurm=plan.slurm.as_dict() if plan.slurm else {})
        record.write_sweep(home, sweep)
        if plan.engine == "local":
            from tina_core.sweep.local import ensure_queue

            ensure_queue(home, plan.name, env=secrets)
            return sweep
        return _submit(home, sweep, plan, made, secrets)
    except BaseException as e:
        why = str(e) if isinstance(e, TinaError) else f"{type(e).__name__}: {e}"
        for rd in made:
            rd.event(Kind.CANCELLED, by="tina sweep", reason=f"the sweep could not be started: {why}")
        raise


def _submit(home: Path, sweep: record.Sweep, plan: SweepPlan, made: list[RunDir],
            secrets: dict[str, str]) -> record.Sweep:
    folder = record.sweep_dir(home, sweep.name)
    tasks = folder / "tasks"
    tasks.mkdir()
    for i, rd in enumerate(made):  # Slurm writes task i's output through this link, into its run
        (tasks / str(i)).symlink_to(rd.path)
    script = folder / "job.sh"
    script.write_text(plan.script or "")
    # the withheld credentials reach the tasks as they would from the shell: in sbatch's environment
    job_id = slurm.submit(script, env={**os.environ, **secrets})
    sweep = dataclasses.replace(sweep, job_id=job_id)
    record.write_sweep(home, sweep)
    return sweep
