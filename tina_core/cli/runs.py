"""`tina run/stop/resume/logs/ls/status` as printed on a terminal (the lifecycle itself lives in
tina_core.supervise, the run object in tina_core.report.runs)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tina_core import runstate
from tina_core.analysis.metric_keys import RECORD_FIELDS, normalise_record
from tina_core.analysis.phase import explain
from tina_core.analysis.signals import record_watch, short
from tina_core.report.runs import list_runs, open_store
from tina_core.cli.output import json_text, styled, table
from tina_core.credentials import redact_text
from tina_core.events import Kind
from tina_core.rundir import TinaError, find_run, iter_jsonl
from tina_core.supervise.logpump import tail_text
from tina_core.terminal import printable, shown

# The lifecycle (supervisor, alerts) is imported by the commands that start or stop something:
# `tina ls` and `tina status` start faster without it.


def dry_run_notes(recipe) -> list[str]:
    """What a dry run adds below the resolved recipe: the values that differ from the installed TRL's
    and PEFT's defaults, and a GPU recipe's memory estimate per GPU (the GPUs here, else an L40S,
    Tina's, with a verdict for the other common GPUs)."""
    import importlib.metadata

    from tina_core.recipe.configs import differences_from_defaults, resolved_grpo
    from tina_core.train import memory
    from tina_core.train.launcher import gpu_memory_here

    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("trl", "peft"))
    out = [f"values that differ from the defaults of GRPOConfig / LoraConfig ({versions}):"]
    out += [f"  {key}: {value!r} (default {default!r})" for key, value, default in differences_from_defaults(recipe)]
    if recipe.gpus == 0:
        return out + ["memory: a CPU recipe (launch.gpus 0): no GPU estimate"]
    grpo = resolved_grpo(recipe)
    here = gpu_memory_here(recipe)
    gpu_bytes, gpu_name = here or (memory.KNOWN_GPUS_MIB["L40S"] * memory.MIB, "an L40S (none here)")
    est = memory.estimate(recipe, grpo, gpu_bytes)
    if est is None:
        return out + [f"memory: no estimate: {memory.model_config(recipe)[1]}"]
    out += [f"memory per GPU, estimated on {gpu_name} ({est.sequence_tokens}-token sequences, "
            f"architecture from {est.source}):"] + [f"  {line}" for line in est.lines()]
    if here is None:
        out.append("  on other GPUs: " + ", ".join(
            f"{name} {'fits' if e.fits else 'does not fit'} ({e.total / memory.GIB:.1f} of {e.gpu_bytes / memory.GIB:.0f} GiB)"
            for name, e in memory.on_known_gpus(recipe, grpo) if name != "L40S"))
    return out


def cli_run(home: Path, recipe: Path, *, name: str | None = None, detach: bool = False,
            overrides: Sequence[str] = (), dry_run: bool = False, gpu_hour_usd: float | None = None,
            force: bool = False) -> int:
    from tina_core.alerts import config_or_default
    from tina_core.supervise.lifecycle import create_run, plan_run, start_run, supervise_foreground
    from tina_core.supervise.supervisor import EXIT_CODES

    # a malformed `alerts:` never stops a run (its supervisor goes on without alerts), but is said
    # here, where the person who can mend it is looking, not only in train.log
    config_or_default(home, warn=lambda text: print(f"tina: warning: {text}", file=sys.stderr, flush=True))
    if dry_run:
        from tina_core import gpu
        from tina_core.analysis.projection import launch_cost

        resolved, command = plan_run(home, recipe, overrides=overrides)
        notes = "".join(f"# {line}\n" for line in dry_run_notes(resolved))
        from tina_core.train.snapshots import disk_line

        dollars = "".join(f"{line}\n" for line in
                          launch_cost(home, resolved, gpu_name=gpu.gpu_model() if resolved.gpus else None).lines())
        dollars += disk_line(resolved) + "\n"
        print(redact_text(f"{resolved.to_yaml().rstrip()}\n{notes}{dollars}# launch command:\n{shlex.join(command)}"))
        return 0
    if detach:
        run_dir = start_run(home, recipe, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd, force=force)
        print(run_dir.run_id)
        print(f"supervising in the background: tina logs -f {run_dir.run_id} | tina status {run_dir.run_id} "
              f"| tina stop {run_dir.run_id}", file=sys.stderr)
        return 0
    run_dir, secret_env = create_run(home, recipe, name=name, overrides=overrides, gpu_hour_usd=gpu_hour_usd,
                                     force=force)
    print(run_dir.run_id, flush=True)
    return EXIT_CODES.get(supervise_foreground(run_dir, secret_env=secret_env), 1)


def cli_stop(home: Path, run_ref: str, *, wait: bool = True) -> int:
    """Prints what happened (stderr) and the run's state (stdout); exits 0 once the run is not
    running, whether this command stopped it, another stop did, or it had already ended."""
    from tina_core.sweep.control import stop

    outcome = stop(home, run_ref, wait=wait)
    print(outcome.said, file=sys.stderr)
    print(outcome.state)
    return 0 if outcome.state in (*runstate.ENDED_STATES, "stopping") else 1


def cli_resume(home: Path, run_ref: str, *, detach: bool = False) -> int:
    from tina_core.supervise.lifecycle import check_resumable, spawn_daemon, supervise_foreground
    from tina_core.supervise.supervisor import EXIT_CODES

    run_dir = check_resumable(home, run_ref)
    _say_resume_note(home, run_dir)
    if detach:
        spawn_daemon(run_dir, resume=True)
        print(run_dir.run_id)
        return 0
    print(run_dir.run_id, flush=True)
    return EXIT_CODES.get(supervise_foreground(run_dir, resume=True), 1)


def _say_resume_note(home: Path, run_dir) -> None:
    """A run the transition policy stopped: say so, and whether its marker has moved since."""
    from tina_core.analysis import policy

    events = run_dir.read_events()
    if policy.resume_note(events, None) is None:
        return
    store = open_store(home, [run_dir.run_id])
    now = store.phase(run_dir.run_id) if store is not None else None
    print(f"note: {printable(policy.resume_note(events, now))}", file=sys.stderr)


def cli_policy(home: Path, run_ref: str, *, after_transition: str | None = None, budget_usd: str | None = None,
               as_json: bool = False) -> int:
    from tina_core.analysis import policy
    from tina_core.supervise.lifecycle import set_policy

    changes = {k: policy.parse_value(k, v) for k, v in
               (("after_transition", after_transition), ("budget_usd", budget_usd)) if v is not None}
    run_dir = find_run(home, run_ref, acting=bool(changes))
    now = set_policy(home, run_dir.run_id, by="tina policy", **changes)
    if as_json:
        print(json_text(now.as_dict()))
        return 0
    live = runstate.liveness(run_dir)
    # a policy is enforced by the run's supervisor: say when none will act on it yet
    waits = (f"; nothing enforces it until `tina resume {run_dir.run_id}`: no supervisor watches the run"
             + (f" (its trainer, pid {live.orphan_trainer_pid}, trains on unsupervised)" if live.orphan_trainer_pid
                else "") if live.supervisor_gone
             else "; the run has finished: there is nothing left for it to stop" if live.state == "finished"
             else f"; the run is {live.state}: it acts from its next `tina resume`"
             if live.state in runstate.ENDED_STATES else "")
    done = ("recorded" if waits else "changed") if changes else "is"
    print(f"{run_dir.run_id}: stop policy {done}: stop_at_step {now.stop_at_step or '-'}, after transition "
          f"{'off' if now.after_transition is None else f'+{now.after_transition} steps'}, budget "
          f"{'off' if now.budget_usd is None else f'${now.budget_usd:g}'}"
          + ("" if now.evaluate else ", no evaluations after a policy stop") + (waits if changes else ""))
    return 0


def cli_logs(home: Path, run_ref: str, *, follow: bool = False, lines: int = 40) -> int:
    run_dir = find_run(home, run_ref)
    path = run_dir.train_log
    text = tail_text(path, lines)
    if text:
        print(text, flush=True)
    if not follow:
        return 0
    try:
        offset = path.stat().st_size if path.exists() else 0
        buf = b""
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                print(redact_text(raw.decode(errors="replace")), flush=True)
            if not chunk:
                if not runstate.is_live(runstate.liveness(run_dir).state):
                    if buf:
                        print(redact_text(buf.decode(errors="replace")), flush=True)
                    return 0
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


def _money(v: float | None) -> str:
    return "-" if v is None else f"${v:.2f}" if v >= 1 else f"${v:.4f}"


def _phase(p: dict | None) -> str:
    if not p or p.get("status") in (None, "none"):
        return "-"
    conf = f", {p['confidence']} confidence" if p.get("confidence") else ""
    return f"{p.get('step')} {short(p.get('signal') or '')} ({p.get('status')}{conf})"


def why_lines(run: dict) -> list[str]:
    """What the phase marker watches and why it stands (or not): for status, watch and import."""
    return explain(run.get("phase_transition"), run.get("watch"), ended=not runstate.is_live(run.get("state")))


def cli_watch(home: Path, run_ref: str, signals: Sequence[str], *, auto: bool = False, as_json: bool = False) -> int:
    run_dir = find_run(home, run_ref, acting=bool(signals or auto))
    if signals and auto:
        raise TinaError("name the signals to watch or give --auto, not both")
    store = open_store(home)
    if signals or auto:
        keys = store.metric_keys(run_dir.run_id) if store is not None else sorted(
            {k for r in iter_jsonl(run_dir.metrics) for k in normalise_record(r) if k not in RECORD_FIELDS})
        record_watch(run_dir, None if auto else list(signals), keys, by="cli")
    [run] = list_runs(home, store, run_dirs=[run_dir])
    if as_json:
        print(json_text({"run_id": run["run_id"], "watch": run["watch"], "phase_transition": run["phase_transition"]}))
        return 0
    run = shown(run)  # names from the run's files, written out (tina_core.terminal)
    print(f"{run['run_id']}: phase transition {_phase(run['phase_transition'])}")
    for line in why_lines(run):
        print(line)
    cands = (run["watch"] or {}).get("candidates") or []
    if cands:
        print("signals:")
        for c in cands:
            print(f"  {'*' if c['watched'] else ' '} {short(c['signal']):36} {c['role']:12} {c['reason']}")
        print("(* watched; tina watch RUN SIGNAL... chooses, tina watch RUN --auto goes back)")
    return 0


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


STATE_STYLE = {"running": "green", "stopping": "yellow", "finished": "blue", "stopped": "yellow",
               "failed": "red", "crashed": "bold red", "queued": "cyan", "cancelled": "dim"}


def state_text(r: dict) -> str:
    """A run's state with what its engine adds: why it waits, its node, what killed it."""
    q = r.get("queue") or {}
    if r.get("orphan_trainer_pid"):
        return f"{r['state']} (no supervisor)"
    if r["state"] == "queued" and q.get("reason"):
        return f"queued ({q['reason']})"
    if r["state"] in ("running", "stopping") and q.get("engine") == "slurm" and q.get("node"):
        return f"{r['state']} on {q['node']}"
    if q.get("killed"):
        return f"{r['state']} (Slurm: {q['killed']})"
    return r["state"]


def _revive_daemons(home: Path, runs: Sequence[Mapping[str, Any]]) -> None:
    """A run whose evaluations have no worker alive (killed): start one, and say so; the same for a
    local sweep whose queue is gone with runs still queued."""
    if any(r.get("state") == "queued" for r in runs):
        from tina_core.sweep.local import revive_queues

        if note := revive_queues(home, runs):
            print(f"tina: {note}", file=sys.stderr)
    if any(r.get("eval_worker") == "gone" for r in runs):
        from tina_core.evaluate.worker import revive_worker

        if note := revive_worker(home):
            print(f"tina: {note}", file=sys.stderr)


def cli_ls(home: Path, *, as_json: bool = False) -> int:
    runs = list_runs(home)
    _revive_daemons(home, runs)
    if as_json:
        print(json_text(runs))
        return 0
    if not runs:
        print(f"no runs in {home} yet: tina run recipes/tiny.yaml")
        return 0
    runs = shown(runs)  # names from the runs' files, written out (tina_core.terminal)
    sweeps = any(r.get("sweep") for r in runs)
    rows = [(r["run_id"], *((r.get("sweep") or "-",) if sweeps else ()), (state_text(r), STATE_STYLE.get(r["state"])),
             f"{r['step'] if r['step'] is not None else '-'}/{r['stop_at_step'] or '?'}",
             str(r["restarts"]), _duration(r["elapsed_s"]),
             f"{r['gpu_count']}x {r['device']}" if r["gpu_count"] else r["device"] or "-",
             _money(r["cost_usd"]["total"]), _money(r["projected_cost_usd"]), _phase(r["phase_transition"]),
             str(r["recommended_checkpoint"]) if r["recommended_checkpoint"] is not None else "-")
            for r in runs]
    print(table(("run", *(("sweep",) if sweeps else ()), "state", "step", "restarts", "time", "device", "cost",
                 "projected", "phase", "recommended"),
                rows, right=("step", "restarts", "cost", "projected")))
    return 0


def cli_status(home: Path, run_ref: str, *, as_json: bool = False) -> int:
    [run] = list_runs(home, run_dirs=[find_run(home, run_ref)])
    _revive_daemons(home, [run])
    if as_json:
        print(json_text(run))
        return 0
    run = shown(run)  # names and reasons from the run's files, written out (tina_core.terminal)
    c = run["cost_usd"]
    made = "imported" if run["imported"] else run["recipe"]  # another tool's run has no recipe, device or price
    print(f"{styled(run['run_id'], 'bold')}  {styled(state_text(run), STATE_STYLE.get(run['state']))}  ({made})")
    if q := run.get("queue"):
        print(f"sweep {run['sweep']}, run {q['index']}, engine {q['engine']}"
              + (f", Slurm task {q['job']} ({q['slurm_state'] or 'forgotten by Slurm'})" if q["job"] else ""))
    if run["failure"]:
        print(styled(f"failed: {run['failure']}", "red"))
    if run.get("orphan_trainer_pid"):
        print(styled(f"its supervisor is gone; the trainer (pid {run['orphan_trainer_pid']}) trains on unsupervised, "
                   f"its time counted: `tina resume {run['run_id']}` takes it over, `tina stop` stops it at a "
                   "checkpoint", "yellow"))
    for w in run["write_errors"]:
        print(styled(f"warning: attempt {w['attempt']}: {w['error']}"
                   + (f" ({w['lost_bytes']} bytes of trainer output lost)" if w["lost_bytes"] else ""), "yellow"))
    print(f"step {run['step'] if run['step'] is not None else '-'}/{run['stop_at_step'] or '?'}"
        f"  restarts {run['restarts']}  trained {_duration(run['elapsed_s'])}"
        + (f"  {run['seconds_per_step']:.2f} s/step" if run["seconds_per_step"] else "")
        + (f"  ETA {_duration(run['eta_s'])}" if run["eta_s"] is not None else "")
        + (f"  ETA unknown: no step for {_duration(run['stalled_s'])} (stalled?)" if run.get("stalled_s") else ""))
    if not run["imported"]:
        device = f"{run['gpu_count']}x {run['device']}" if run["gpu_count"] else run["device"]
        rate = f"{_money(run['gpu_hour_usd'])}/GPU-hour" if run["gpu_count"] else f"{_money(run.get('cpu_hour_usd'))}/hour"
        print(f"{device} at {rate} ({run['price_source'] or 'no price'})")
    print(f"cost {_money(c['total'])} (train {_money(c['train'])}, eval {_money(c['eval'])})"
        f"  projected {_money(run['projected_cost_usd'])}")
    print(f"phase transition {_phase(run['phase_transition'])}  recommended checkpoint "
        f"{run['recommended_checkpoint'] if run['recommended_checkpoint'] is not None else '-'}")
    for line in why_lines(run):
        print(line)
    if run["checkpoints"] or run["base"]["evals"]:
        rows = [("base", None, run["base"]["evals"])] if run["base"]["evals"] else []
        print(table(("checkpoint", "cost at", "evals"),
                  [(name, _money(usd), "  ".join(f"{t} {s:.3f}" if isinstance(s, (int, float)) else f"{t} {s}"
                                                 for t, s in evals.items()) or "-")
                   for name, usd, evals in rows + [(str(c["step"]), c["cost_usd_at"], c["evals"])
                                                   for c in run["checkpoints"]]],
                  right=("checkpoint", "cost at")))
    if run["evals_refused"]:  # the stop policy's evaluations its budget could not pay for
        from tina_core.alerts import event_text

        for r in run["evals_refused"]:
            if said := event_text(run["name"], {**r, "event": Kind.EVAL_REFUSED}):
                print(styled(said[1], "yellow"))
    for ev in run["evaluations"]:
        if ev["state"] in ("queued", "running", "failed"):
            why = (f": {(ev['reason'] or '').splitlines()[0]}" if ev["state"] == "failed"
                   else " (no worker was alive)" if run.get("eval_worker") == "gone" else "")
            print(f"eval {ev['eval_id']} {ev['task']} {ev['state']}{why}")
    if run["last_metrics"]:
        keys = [k for k in ("rewards/format_reward/mean", "rewards/accuracy_reward/mean",
                            "completions/mean_length", "reward", "kl", "loss") if k in run["last_metrics"]]
        print("  ".join(f"{k} {run['last_metrics'][k]:.4g}" for k in keys
                      if isinstance(run["last_metrics"][k], (int, float))))
    return 0


