"""Creating, starting, stopping and resuming runs: what `tina run/stop/resume` and the cockpit ask.

A run is created (recipe checked completely, run directory written) before any process starts;
then a supervisor (``tina_core.supervise.supervisor``) runs it, in the foreground with a progress
display or as a detached daemon that survives the terminal, SSH and the cockpit.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tina_core import locks, runstate
from tina_core.events import Kind
from tina_core.rundir import (RunDir, RunInfo, TinaError, create_run_dir, find_run, iter_jsonl, now_iso, read_json,
                              runs_root)
from tina_core.supervise.logpump import tail_text
from tina_core.supervise.progress import Display
from tina_core.supervise.supervisor import (DEFAULT_MAX_RESTARTS, DEFAULT_STOP_TIMEOUT_S, LOG_NAME, Supervisor,
                                            recover_orphan, stop_timeout_s)


def _recipe_value(recipe: Any, attr: str, default: Any = None) -> Any:
    value = getattr(recipe, attr, None)
    return default if value is None else value


def load_validated(recipe_path: Path, overrides: Sequence[str], *, hardware: bool = True, force: bool = False):
    """The resolved recipe, checked completely (heavy: imports TRL) before anything is created.
    Missing GPUs are reported first: that check is instant, validation is not. Then a GPU recipe's
    memory estimate against the GPUs here (``force`` launches one that does not fit)."""
    from tina_core.train.launcher import check_hardware, check_memory
    from tina_core.recipe.configs import validate_recipe
    from tina_core.recipe.loader import load_recipe

    path = Path(recipe_path)
    if not path.is_file():
        raise TinaError(f"recipe {path}: no such file (try recipes/tiny.yaml)")
    recipe = load_recipe(path, list(overrides))
    if hardware:
        check_hardware(recipe)
    validate_recipe(recipe)
    if hardware:
        check_memory(recipe, force=force)
    return recipe


def plan_run(home: Path, recipe_path: Path, *, overrides: Sequence[str] = ()):
    """``(recipe, command)`` for a dry run: the resolved recipe and the exact launch command with a
    placeholder run directory. Creates nothing."""
    from tina_core.train.launcher import launch_command

    recipe = load_validated(recipe_path, overrides, hardware=False)
    return recipe, launch_command(RunDir(runs_root(home) / "<run_id>"), recipe)


SLURM_DEVICE = "GPU (Slurm's)"  # a Slurm run's GPUs are the node's; its task's `launched` names them


def create_run(home: Path, recipe_path: Path, *, name: str | None = None, overrides: Sequence[str] = (),
               gpu_hour_usd: float | None = None, force: bool = False, resolved: Any = None,
               sweep: tuple[str, int, str] | None = None) -> tuple[RunDir, dict[str, str]]:
    """Validate the recipe and the hardware, then create the run directory with its recipe
    snapshot, ``run.json`` and the ``launched`` event. Nothing is created if any check fails.
    ``resolved``: the recipe already checked (a sweep checks every run first). ``sweep``: (name,
    index, engine) of the sweep the run belongs to: it is ``queued`` until its engine starts it, and
    a Slurm run's GPUs are not this machine's.

    Returns the run directory and the recipe's credential-looking ``launch.env`` entries: the
    snapshot withholds their values, so the caller hands them to the supervisor (``secret_env``),
    whose environment is then the only place they are kept."""
    from tina_core import gpu
    from tina_core.analysis import cost
    from tina_core.train.launcher import launch_command

    recipe = resolved if resolved is not None else load_validated(recipe_path, overrides, force=force)
    if resolved is None:  # a GPU launch that tina doctor says would fail after start is refused here
        from tina_core.doctor import refuse_launch

        refuse_launch(recipe, home, force=force)
    gpus = int(_recipe_value(recipe, "gpus", 0))
    here = sweep is None or sweep[2] == "local"
    found = gpu.gpus() if gpus and here else []
    device = found[0]["name"] if found else "cpu" if not gpus else SLURM_DEVICE
    price = cost.resolve_price(home, device, cli_gpu_hour_usd=gpu_hour_usd,
                               recipe_gpu_hour_usd=recipe.get("price.gpu_hour_usd"),
                               recipe_cpu_hour_usd=recipe.get("price.cpu_hour_usd"))

    run_dir = create_run_dir(home, name or _recipe_value(recipe, "name", Path(recipe_path).stem))
    run_dir.recipe.write_text(recipe.to_yaml())
    command = launch_command(run_dir, recipe)
    info = run_info(run_dir, recipe, recipe_path, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd,
                    hardware={"gpus": found, "cpu_count": os.cpu_count(), "host": os.uname().nodename},
                    device=device, price=price, command=command, dataset_size=getattr(recipe, "dataset_size", None))
    if sweep is not None:
        info = dataclasses.replace(info, sweep=sweep[0], sweep_index=sweep[1])
    run_dir.write_info(info)
    fields: dict[str, Any] = dict(recipe=str(recipe_path), command=command, gpus=info.gpu_count,
                                  gpu_hour_usd=price.gpu_hour_usd, device=device)
    if sweep is not None:
        run_dir.event(Kind.QUEUED, **fields, sweep=sweep[0], engine=sweep[2])
    else:
        run_dir.event(Kind.LAUNCHED, **fields)
    return run_dir, recipe.secret_env


def run_info(run_dir: RunDir, recipe: Any, recipe_path: str | Path, *, name: str | None, overrides: Sequence[str],
             gpu_hour_usd: float | None, hardware: dict[str, Any], device: str, price: Any, command: list[str],
             dataset_size: int | None, created: str | None = None, cwd: str | None = None) -> RunInfo:
    """A new run's ``run.json``: who it is, how to make it again, what it runs on and at what price.
    ``recipe``: the resolved ``Recipe``; ``price``: ``cost.Price``."""
    from tina_core.recipe.loader import masked_override

    recorded = [masked_override(o) for o in overrides]
    return RunInfo(
        run_id=run_dir.run_id,
        name=name or _recipe_value(recipe, "name", run_dir.run_id),
        recipe=str(recipe_path),
        overrides=recorded,
        # how to make this run again (credentials masked: give them again to run it again)
        tina_command=shlex.join(["tina", "run", str(recipe_path), *(["--name", name] if name else []),
                                 *[a for o in recorded for a in ("--set", o)],
                                 *(["--gpu-hour-usd", str(gpu_hour_usd)] if gpu_hour_usd is not None else [])]),
        created=created or now_iso(),
        hardware=hardware,
        device=device,
        gpu_count=int(_recipe_value(recipe, "gpus", 0)),
        gpu_hour_usd=price.gpu_hour_usd,
        cpu_hour_usd=price.cpu_hour_usd,
        price_source=price.source,
        command=command,
        cwd=cwd or os.getcwd(),
        stop_at_step=getattr(recipe, "stop_at_step", None),
        max_steps=getattr(recipe, "max_steps", None),
        save_steps=getattr(recipe, "save_steps", None),
        dataset_size=dataset_size,
        max_restarts=DEFAULT_MAX_RESTARTS if recipe.max_restarts is None else recipe.max_restarts,
        stop_timeout_s=DEFAULT_STOP_TIMEOUT_S if recipe.stop_timeout_s is None else recipe.stop_timeout_s,
        imported=False,
    )


def spawn_daemon(run_dir: RunDir, *, resume: bool = False, secret_env: dict[str, str] | None = None,
                 wait_s: float = 30.0, env: dict[str, str] | None = None) -> int:
    """Start a detached supervisor for ``run_dir`` and return its pid once its heartbeat is up.
    It forks away from this process, so it survives the terminal, SSH and the TUI. ``secret_env``
    (withheld launch.env credentials) goes into its environment only; ``env``: more of it (the GPUs
    a sweep's queue gives the run)."""
    cmd = [sys.executable, "-m", "tina_core.supervise", str(run_dir.path), "--daemon"]
    if resume:
        cmd.append("--resume")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, **(env or {}), **(secret_env or {})}, start_new_session=True,
                          timeout=wait_s)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise TinaError(msg.removeprefix("tina: error: "))
    pid = int(proc.stdout.strip())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if (read_json(run_dir.supervisor, {}) or {}).get("pid") == pid:
            return pid
        if not runstate.pid_alive(pid):
            tail = tail_text(run_dir.path / LOG_NAME, 5)
            raise TinaError(f"the supervisor of {run_dir.run_id} exited at start:\n{tail}")
        time.sleep(0.05)
    raise TinaError(f"the supervisor of {run_dir.run_id} (pid {pid}) did not start within {wait_s:g} s")


def start_run(home: Path, recipe_path: Path, *, name: str | None = None, overrides: Sequence[str] = (),
              gpu_hour_usd: float | None = None, force: bool = False) -> RunDir:
    """Validate, create and start a run under a detached supervisor (``tina run --detach``).
    Validation imports TRL into the calling process: a cockpit should run ``tina run --detach``
    as a child process instead."""
    run_dir, secret_env = create_run(home, recipe_path, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd,
                                     force=force)
    spawn_daemon(run_dir, secret_env=secret_env)
    return run_dir


def supervise_foreground(run_dir: RunDir, *, resume: bool = False, secret_env: dict[str, str] | None = None) -> str:
    """Supervise in this process with a progress display; Ctrl-C stops the run cleanly."""
    tty = sys.stderr.isatty()
    display = Display(run_dir, live=tty)
    sup = Supervisor(run_dir, display=display, secret_env=secret_env)
    sup.acquire()
    old = sup.install_signals(foreground=True)
    try:
        state = sup.run(resume=resume)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        sup.release()
        display.close()
    if state == "failed" and not display.quiet:
        print(tail_text(run_dir.train_log, 15), file=sys.stderr)
    return state


@dataclass(frozen=True)
class StopOutcome:
    state: str  # the run's state afterwards (``stopping`` when not waiting)
    said: str   # what happened, in a sentence for the user


def stop_run(home: Path, run_ref: str, wait: bool = False, timeout: float | None = None,
             ask: Callable[[runstate.Liveness], None] | None = None) -> StopOutcome:
    """Ask a run to stop (save at the end of its step, then exit). Idempotent: a run already
    stopping, or one another caller is stopping right now, gets no second request (the caller is
    told so), and an ended run is left as it is. ``ask``: how to reach a supervisor on another
    machine (a Slurm task's: tina_core.sweep.control), once the request is recorded; without it
    such a run is refused, since its pids are not this machine's."""
    run_dir = find_run(home, run_ref, acting=True)
    rid = run_dir.run_id
    stop_timeout = stop_timeout_s(RunInfo.read(run_dir))
    with locks.stop_claim(run_dir.path) as mine:
        live = runstate.liveness(run_dir)
        if live.state in runstate.ENDED_STATES:
            return StopOutcome(live.state, f"run {rid} is already {live.state}: nothing to stop")
        if live.remote and ask is None and live.supervisor == "alive":
            raise TinaError(f"run {rid} is supervised on {live.host}; stop it there")
        if not mine or (live.state == "stopping" and not live.supervisor_gone):
            said = f"a stop of {rid} is already under way; it saves a checkpoint at the end of its step"
        elif live.supervisor_gone:
            # No supervisor to ask (killed, or an orphaned trainer training on): stop what it left
            # behind ourselves, under its lock, the orphan at a checkpoint of its current step.
            fd = locks.take_run_lock(run_dir, holder_ending=lambda: runstate.supervisor_ending(run_dir))
            try:
                run_dir.event(Kind.STOP_REQUESTED, by="tina stop (no supervisor)", pid=os.getpid())
                recover_orphan(run_dir, stop_timeout, read_json(run_dir.supervisor, {}) or {})
                run_dir.event(Kind.STOPPED, step=None)
            finally:
                os.close(fd)
            return StopOutcome("stopped", f"stopped {rid}" + (f" (its orphaned trainer, pid {live.orphan_trainer_pid}, "
                                                               "at a checkpoint)" if live.orphan_trainer_pid else ""))
        else:
            run_dir.event(Kind.STOP_REQUESTED, by="tina stop", pid=os.getpid())
            if ask is not None:
                ask(live)
            elif isinstance(pid := live.supervisor_pid or _supervisor_pid_once_up(run_dir), int):
                runstate.send_signal(pid, signal.SIGTERM)
            said = f"asked {rid} to stop; it saves a checkpoint at the end of its step"
    if not wait:
        return StopOutcome("stopping", said)
    deadline = time.monotonic() + (timeout if timeout is not None else stop_timeout + 30)
    while time.monotonic() < deadline:
        state = runstate.liveness(run_dir).state
        if state in runstate.ENDED_STATES or state == "crashed":
            return StopOutcome(state, said)
        time.sleep(0.2)
    raise TinaError(f"run {rid} did not stop within the wait; it is still {state}")


def _supervisor_pid_once_up(run_dir: RunDir) -> int | None:
    """A just-launched run's supervisor pid, once its heartbeat (and signal handlers) are up."""
    deadline = time.monotonic() + runstate.HEARTBEAT_TIMEOUT_S
    while time.monotonic() < deadline:
        if isinstance(pid := (read_json(run_dir.supervisor, {}) or {}).get("pid"), int):
            return pid
        time.sleep(0.1)
    return None


def set_policy(home: Path, run_ref: str, *, by: str, **changes: Any):
    """Change a run's stop policy (``after_transition``, ``budget_usd``: a value, or None for off),
    live or not: a ``policy_changed`` event, which its supervisor reads within a second. Returns the
    policy now in force."""
    from tina_core.analysis import policy

    run_dir = find_run(home, run_ref, acting=True)
    if RunInfo.read(run_dir).imported:
        raise TinaError(f"run {run_dir.run_id} was imported; it has no stop policy")
    unknown = set(changes) - set(policy.POLICY_KEYS)
    if unknown:
        raise TinaError(f"unknown stop policy setting(s): {', '.join(sorted(unknown))}")
    if changes:
        run_dir.event(Kind.POLICY_CHANGED, by=by, **changes)
    return policy.for_run(run_dir)


def resume_run(home: Path, run_ref: str, *, detach: bool = True) -> RunDir:
    """Continue a stopped, failed or crashed run from its latest complete checkpoint (detached)."""
    run_dir = check_resumable(home, run_ref)
    if detach:
        spawn_daemon(run_dir, resume=True)
    return run_dir


def _check_budget(run_dir: RunDir) -> None:
    """A run its budget stopped would stop again at once: say so before starting anything."""
    from tina_core.analysis import cost, policy

    events = run_dir.read_events()
    pol = policy.for_run(run_dir, events)
    if pol.budget_usd is None:
        return
    # an orphaned trainer's time counts up to now, as `tina status` counts it
    live, times = runstate.liveness(run_dir, events), cost.step_times(iter_jsonl(run_dir.metrics))
    meter = cost.Meter.for_run(run_dir, open_until=runstate.open_until(live.state, live.heartbeat, events, times,
                                                                      time.time()))
    spent, rate = meter.cost_usd()["total"], meter.train_usd_per_hour()
    if policy.budget_spent(pol, spent, policy.usd_per_step(meter.seconds_per_step(), rate), policy.stop_reserve_usd(rate)):
        raise TinaError(f"run {run_dir.run_id} has spent ${spent:.4g} of its ${pol.budget_usd:g} budget, too little "
                        f"is left for a step: raise it first (tina policy {run_dir.run_id} --budget-usd X, or off)")


def check_resumable(home: Path, run_ref: str) -> RunDir:
    run_dir = find_run(home, run_ref, acting=True)
    info = RunInfo.read(run_dir)
    if info.imported:
        raise TinaError(f"run {run_dir.run_id} was imported; there is nothing to resume")
    live = runstate.liveness(run_dir)
    state = live.state
    if runstate.is_live(state) and not runstate.can_resume(state, live.supervisor_gone):
        raise TinaError(f"run {run_dir.run_id} is {state} (supervisor pid {live.supervisor_pid}); nothing to resume")
    if state == "finished":
        raise TinaError(f"run {run_dir.run_id} is finished (reached step {info.stop_at_step})")
    _check_budget(run_dir)
    from tina_core.recipe.loader import load_recipe

    # The supervisor that was given these is gone, and tina never wrote them down.
    missing = [k for k in load_recipe(run_dir.recipe).withheld_env if k not in os.environ]
    if missing:
        raise TinaError(f"run {run_dir.run_id} was given {', '.join(missing)} through its recipe, which tina keeps "
                        f"out of the run directory: set {'it' if len(missing) == 1 else 'them'} in this shell "
                        f"(export {missing[0]}=...) and resume again")
    return run_dir


