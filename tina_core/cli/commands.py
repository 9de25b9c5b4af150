"""`tina`'s commands (Typer); ``tina_core.cli.main`` runs them.

Each command is a thin shell over a function in tina_core; modules are imported inside the
command so `tina --help` and `tina ls` start fast (no torch / transformers / trl at start-up).
Machine-readable output goes to stdout, diagnostics to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tina_core.rundir import tina_home

app = typer.Typer(
    name="tina",
    help="LoRA-GRPO reasoning post-training runs: launch, supervise, analyse, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _State:
    home: Path


state = _State()


@app.callback()
def _global(
    home: Optional[Path] = typer.Option(
        None, "--home", envvar="TINA_HOME", help="Workspace directory (default ~/.tina)."
    ),
) -> None:
    state.home = tina_home(home)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/tiny.yaml"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Run name (default: recipe name)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Supervise in the background and return."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: key.path=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and launch command only."),
    gpu_hour_usd: Optional[float] = typer.Option(None, "--gpu-hour-usd", help="Price per GPU-hour for the cost meter."),
    force: bool = typer.Option(False, "--force", help="Launch even where the memory estimate or tina doctor's "
                                                      "launch checks say it would fail."),
) -> None:
    """Create a run from RECIPE and supervise it (foreground unless --detach)."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_run(state.home, recipe, name=name, detach=detach, overrides=set_,
                                        dry_run=dry_run, gpu_hour_usd=gpu_hour_usd, force=force))


@app.command()
def sweep(
    recipes: list[Path] = typer.Argument(..., metavar="RECIPE...", help="Recipe YAMLs, e.g. recipes/tina/*.yaml"),
    grid: list[str] = typer.Option([], "--grid", "-g", metavar="KEY=V1,V2",
                                   help="Every combination of these values with the others' (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value in every run: key.path=value."),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", "-k",
                                               help="Runs at a time (local: the GPUs' share; Slurm: all)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="The sweep's name (default: sweep-DATE-TIME)."),
    engine: str = typer.Option("local", "--engine", help="local (a queue on this machine) or slurm (a job array)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every run, the dollars and the engine's job only."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="local: the GPU ids the queue hands out (default: all)."),
    gpu_hour_usd: Optional[float] = typer.Option(None, "--gpu-hour-usd", help="Price per GPU-hour for every run."),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm: sbatch --partition."),
    account: Optional[str] = typer.Option(None, "--account", help="slurm: sbatch --account."),
    gpus_per_task: Optional[int] = typer.Option(None, "--gpus-per-task",
                                                help="slurm: GPUs per task (default: the runs' launch.gpus)."),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", help="slurm: sbatch --cpus-per-task."),
    time_limit: Optional[str] = typer.Option(None, "--time", help="slurm: each task's time limit, e.g. 24:00:00."),
    signal_s: Optional[int] = typer.Option(None, "--signal-s",
                                           help="slurm: TERM this many seconds before the time limit (default 300)."),
    sbatch: list[str] = typer.Option([], "--sbatch", metavar="OPTION",
                                     help="slurm: one more #SBATCH line, e.g. --sbatch=--qos=normal (repeatable)."),
) -> None:
    """Run several recipes and/or a grid of overrides as one sweep, K at a time, on this machine or
    as a Slurm job array. Every run is checked and priced before anything starts."""
    from tina_core.cli import sweeps

    given = {"partition": partition, "account": account, "gpus_per_task": gpus_per_task,
             "cpus_per_task": cpus_per_task, "time": time_limit, "signal_s": signal_s, "sbatch": sbatch}
    raise typer.Exit(sweeps.cli_sweep(state.home, recipes, grids=grid, sets=set_, name=name, engine=engine,
                                      max_parallel=max_parallel, dry_run=dry_run, gpus=gpus,
                                      gpu_hour_usd=gpu_hour_usd, slurm_given=given))


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="One JSON object per run, as a list.")) -> None:
    """All runs in the workspace."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_ls(state.home, as_json=as_json))


@app.command()
def status(
    run_ref: str = typer.Argument(..., metavar="RUN"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One run in full."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_status(state.home, run_ref, as_json=as_json))


@app.command()
def stop(run_ref: str = typer.Argument(..., metavar="RUN"),
         wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the run has stopped.")) -> None:
    """Ask a run to save a checkpoint at the end of its step and stop (a sweep's queued run: cancel it)."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_stop(state.home, run_ref, wait=wait))


@app.command()
def resume(
    run_ref: str = typer.Argument(..., metavar="RUN"),
    detach: bool = typer.Option(False, "--detach", "-d"),
) -> None:
    """Continue a stopped, failed or crashed run from its latest complete checkpoint."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_resume(state.home, run_ref, detach=detach))


@app.command()
def policy(
    run_ref: str = typer.Argument(..., metavar="RUN"),
    after_transition: Optional[str] = typer.Option(
        None, "--after-transition", help="Stop N steps after the phase transition is confirmed (off: never)."),
    budget_usd: Optional[str] = typer.Option(
        None, "--budget-usd", help="Stop before the run's cost would pass X dollars (off: no budget)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show or change a run's stop policy, live: it takes effect within a second."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_policy(state.home, run_ref, after_transition=after_transition,
                                     budget_usd=budget_usd, as_json=as_json))


@app.command()
def logs(
    run_ref: str = typer.Argument(..., metavar="RUN"),
    follow: bool = typer.Option(False, "--follow", "-f"),
    lines: int = typer.Option(40, "--lines", "-n", min=0, help="Last lines to show first (0: none)."),
) -> None:
    """The trainer's output (train.log)."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_logs(state.home, run_ref, follow=follow, lines=lines))


@app.command("import")
def import_(
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help=(
        "metrics.jsonl or JSONL, trainer_state.json, a CSV/TSV (W&B export, a notebook's progress table), "
        "an executed .ipynb, a trackio .db; several files of one run are merged by step")),
    name: Optional[str] = typer.Option(None, "--name", "-n"),
    run: Optional[str] = typer.Option(None, "--run", help="The run to take from a file holding several."),
    watch: list[str] = typer.Option([], "--watch", "-w", metavar="SIGNAL",
                                    help="A signal the phase marker comes from (repeat); default: chosen "
                                         "from the run's reward names."),
) -> None:
    """Make a finished run from another tool's metrics."""
    from tina_core.cli import workspace

    raise typer.Exit(workspace.cli_import(state.home, paths, name=name, run=run, watch=watch))


@app.command()
def watch(
    run_ref: str = typer.Argument(..., metavar="RUN"),
    signals: list[str] = typer.Argument(None, metavar="[SIGNAL...]",
                                        help="The signals the phase marker comes from (reward names or keys)."),
    auto: bool = typer.Option(False, "--auto", help="Back to the automatic choice."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show which signals a run's phase marker watches and why; with SIGNAL... or --auto, change them
    and judge the run again."""
    from tina_core.cli import runs

    raise typer.Exit(runs.cli_watch(state.home, run_ref, signals or [], auto=auto, as_json=as_json))


@app.command("eval")
def eval_(
    run_ref: str = typer.Argument(..., metavar="RUN"),
    checkpoint: str = typer.Option("recommended", "--checkpoint", "-c",
                                   help="N, recommended, all, base, or transition (the two around the marker and base)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="Comma-separated task names."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the merge and lighteval commands only."),
    wait: bool = typer.Option(False, "--wait", help="Run the queue in the foreground until these finish."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU ids to use even while training runs, e.g. 1."),
    cancel: bool = typer.Option(False, "--cancel", help="Cancel queued or running evaluations of RUN."),
    force: bool = typer.Option(False, "--force", help="Queue even where tina doctor says the evaluation would fail."),
) -> None:
    """Queue evaluations of checkpoints (Tina's six benchmarks on GPU, the tiny benchmark on CPU)."""
    from tina_core.cli import evals

    raise typer.Exit(evals.cli_eval(state.home, run_ref, checkpoint=checkpoint, tasks=tasks,
                                       dry_run=dry_run, wait=wait, gpus=gpus, cancel=cancel, force=force))


@app.command()
def doctor(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe to check the machine for (default: Open-RS2 on a "
                                                         "GPU box, else recipes/tiny.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: key.path=value (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="The checks as JSON."),
) -> None:
    """Check this machine before a launch: Python, compilers, the NVIDIA driver against the installed
    wheels, torch and vLLM, NCCL, disk, the base model, gated data, the pinned versions."""
    from tina_core import doctor as checks
    from tina_core.cli.output import json_text
    from tina_core.recipe.loader import load_recipe

    gpus = checks.read_gpus()
    report = checks.diagnose(load_recipe(recipe or checks.default_recipe(gpus), set_), state.home, gpus=gpus)
    print(json_text(report.as_dict()) if as_json else "\n".join(report.lines()))
    raise typer.Exit(1 if report.failed else 0)


@app.command()
def report(
    refs: Optional[list[str]] = typer.Argument(None, metavar="[RUN]...", help="Only these runs (default: all)."),
    as_json: bool = typer.Option(False, "--json"),
    as_csv: bool = typer.Option(False, "--csv"),
    as_md: bool = typer.Option(False, "--md"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write a PNG per run into this folder."),
    sweep_name: Optional[str] = typer.Option(None, "--sweep", metavar="NAME", help="Only the runs of this sweep."),
) -> None:
    """A Tina-style table over runs, beside the paper's rows; first the ablation table (what
    differs between the runs and what each bought)."""
    from tina_core.cli import workspace

    fmt = "json" if as_json else "csv" if as_csv else "md" if as_md else "table"
    raise typer.Exit(workspace.cli_report(state.home, fmt=fmt, plots=plots, refs=refs or [], sweep=sweep_name))


@app.command()
def diff(
    refs: list[str] = typer.Argument(..., metavar="RUN RUN...", help="Runs (id, prefix or name) or recipe files."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The recipe keys whose values differ between runs (the ablation axis), nothing else."""
    from tina_core.cli import workspace

    raise typer.Exit(workspace.cli_diff(state.home, refs, as_json=as_json))


@app.command()
def ingest(rebuild: bool = typer.Option(False, "--rebuild", help="Recreate the database from the run directories.")) -> None:
    """Bring the DuckDB index up to date with the run directories."""
    from tina_core.cli import workspace

    raise typer.Exit(workspace.cli_ingest(state.home, rebuild=rebuild))
