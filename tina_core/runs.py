"""The run object of `tina ls/status --json` and the TUI: state, progress, cost, phase, checkpoints.

Built from the run directory (the truth) and, when the store is available, from its index for the
phase transition, the recommendation and evaluation scores. Light: no heavy imports.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from tina_core import cost
from tina_core.rundir import RunDir, find_run, iter_jsonl, list_run_dirs
from tina_core.supervisor import liveness

LIVE = ("running", "stopping")
LIVE_PHASE_MAX_AGE_S = 5.0  # a live run gains a step a second; detection reads all of them
_SUMMARY_KEYS = ("train_runtime", "train_loss")  # the trainer's final summary log, not a step


def _normalise(metrics: dict[str, Any]) -> dict[str, Any]:
    try:
        from tina_core.metric_keys import normalise_key
    except ImportError:
        return metrics
    return {normalise_key(k): v for k, v in metrics.items()}


def _evals_from_events(events: list[dict[str, Any]]) -> tuple[dict[Any, dict[str, float]], int]:
    """``({checkpoint: {task: score}}, pending)`` from the eval events alone."""
    target: dict[Any, Any] = {}
    done: set = set()
    scores: dict[Any, dict[str, float]] = {}
    for e in events:
        kind, eid = e.get("event"), e.get("eval_id")
        if kind == "eval_queued":
            target[eid] = e.get("checkpoint")
        elif kind == "eval_finished":
            done.add(eid)
            if isinstance(e.get("scores"), dict):
                scores.setdefault(target.get(eid), {}).update(e["scores"])
        elif kind in ("eval_failed", "eval_cancelled"):
            done.add(eid)
    return scores, len(set(target) - done)


def _evaluations(run_dir: RunDir, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every evaluation with its state, score or failure reason (tina_core.evaluate, light)."""
    from tina_core.evaluate import evals_of

    keep = ("eval_id", "checkpoint", "task", "state", "score", "metric", "reason", "gpus")
    return [{k: e.get(k) for k in keep} for e in evals_of(run_dir, events).values()]


def _store_call(store: Any, method: str, run_id: str, **kw: Any) -> Any:
    if store is None:
        return None
    try:
        return getattr(store, method)(run_id, **kw)
    except Exception as e:  # the index is an optimisation; the run directory still answers
        print(f"tina: warning: store.{method}({run_id}): {e}", file=sys.stderr)
        return None


def describe(home: Path, run_dir: RunDir, store: Any = None, *, now: float | None = None) -> dict[str, Any]:
    """The run object (design.md fields, plus a few more)."""
    now = time.time() if now is None else now
    info = run_dir.info()
    events = run_dir.read_events()
    live = liveness(run_dir, events, now)
    state = live["state"]
    last_ts = max((e.get("ts", 0) for e in events), default=0) or None
    # A dead supervisor's open attempt counts up to its last heartbeat, not up to now.
    open_until = now if state in LIVE else (live["heartbeat"] or last_ts or now)
    # The step clock from the index when there is one: re-reading metrics.jsonl costs seconds.
    clock = _store_call(store, "step_clock", run_dir.run_id)
    last_metrics = _store_call(store, "last_metrics", run_dir.run_id)
    records = [] if clock is not None and last_metrics is not None else list(iter_jsonl(run_dir.metrics))
    steps = [r for r in records if isinstance(r.get("step"), int)]
    if clock is not None:
        times, step = clock
    else:
        times, step = cost.step_times(records), (steps[-1]["step"] if steps else None)
    meter = cost.Meter(info, events, times, open_until=open_until,
                       eval_ends=cost.open_eval_ends(run_dir, events, now))
    if last_metrics is None:
        per_step = [r for r in steps if not any(k in r for k in _SUMMARY_KEYS)]
        last_metrics = _normalise({k: v for k, v in (per_step[-1] if per_step else {}).items()
                                   if k not in ("time", "ts", "attempt")})
    # A live run's phase may lag its newest steps by a few seconds (see Store.phase).
    age = {"max_age_s": LIVE_PHASE_MAX_AGE_S} if state in LIVE else {}
    phase = _store_call(store, "phase", run_dir.run_id, **age)
    rec = _store_call(store, "recommendation", run_dir.run_id, **age) or {}
    event_scores, pending = _evals_from_events(events)
    listed = _store_call(store, "checkpoints", run_dir.run_id)
    if listed is None:
        listed = [{"step": s, "evals": event_scores.get(s, {})} for s in run_dir.checkpoint_steps()]
    checkpoints = [{"step": c["step"], "cost_usd_at": meter.cost_at_step(c["step"]), "evals": c.get("evals") or {}}
                   for c in listed]
    # The base model is its own entry: Tina reports gains over it.
    base = _store_call(store, "base_evals", run_dir.run_id)
    base = dict(sorted(((event_scores.get("base") or {}) if base is None else base).items()))

    trains = [iv for iv in meter.intervals if iv.kind == "train"]
    stop_at = info.get("stop_at_step") or info.get("max_steps")
    failed = [e for e in events if e.get("event") == "failed"]
    lost = {e.get("attempt"): e["lost_log_bytes"] for e in events
            if e.get("event") == "attempt_exited" and e.get("lost_log_bytes")}
    return {
        "run_id": run_dir.run_id,
        "name": info.get("name", run_dir.run_id),
        "recipe": info.get("recipe"),
        "state": state,
        "step": step,
        "stop_at_step": stop_at,
        "max_steps": info.get("max_steps"),
        "restarts": sum(1 for e in events if e.get("event") == "restarted"),
        "attempts": len(trains),
        "started_at": info.get("created"),
        "elapsed_s": round(meter.seconds("train"), 1),
        "device": info.get("device", "cpu"),
        "gpu_count": info.get("gpu_count", 0),
        "gpu_hour_usd": info.get("gpu_hour_usd"),
        "cpu_hour_usd": info.get("cpu_hour_usd", 0.0),
        "price_source": info.get("price_source"),
        "cost_usd": meter.cost_usd(),
        "usd_per_hour_now": round(meter.usd_per_hour_now(), 4) if state in LIVE else 0.0,
        "projected_cost_usd": meter.projected_usd(step, finished=state == "finished"),
        "seconds_per_step": meter.seconds_per_step(),
        "eta_s": meter.eta_s(step) if state in LIVE else None,
        "phase_transition": phase,
        "recommended_checkpoint": rec.get("recommended"),
        "best_evaluated_checkpoint": rec.get("best_evaluated"),
        "recommendation_disagrees": bool(rec.get("disagree", False)),
        "checkpoints": checkpoints,
        "base": {"evals": base, "avg": sum(base.values()) / len(base) if base else None},
        "evals_pending": pending,
        "evaluations": _evaluations(run_dir, events),
        "last_metrics": last_metrics,
        "failure": failed[-1].get("reason") if state == "failed" and failed else None,
        # writes a full disk refused (the supervisor's own: what the trainer could not write ends it)
        "write_errors": [{"file": e.get("file"), "error": e.get("error"), "attempt": e.get("attempt"),
                          "lost_bytes": lost.get(e.get("attempt")) if e.get("file") == "train.log" else None}
                         for e in events if e.get("event") == "write_failed"],
        "supervisor_pid": live["supervisor_pid"] if state in LIVE else None,
        "imported": bool(info.get("imported", False)),
        "path": str(run_dir.path),
    }


def open_store(home: Path) -> Any:
    """The ingested store, or None when it is unavailable (``tina ls`` still works without it)."""
    try:
        from tina_core.store import Store
    except ImportError:
        return None
    try:
        store = Store(home)
        store.ingest()
        return store
    except Exception as e:
        print(f"tina: warning: the index at {home} is unavailable ({e}); showing run directories only",
              file=sys.stderr)
        return None


def list_runs(home: Path, store: Any = None) -> list[dict[str, Any]]:
    run_dirs = list_run_dirs(home)
    if store is None and run_dirs:
        store = open_store(home)
    now = time.time()
    with _session(store):
        return [describe(home, rd, store, now=now) for rd in run_dirs]


def _session(store: Any):
    """One database connection for all the queries of one listing (opening one costs ~0.2 s)."""
    if store is not None and hasattr(store, "session"):
        try:
            return store.session()
        except Exception:
            pass
    return contextlib.nullcontext()


# --- output ---------------------------------------------------------------------------------------
def _money(v: float | None) -> str:
    return "-" if v is None else f"${v:.2f}" if v >= 1 else f"${v:.4f}"


def _phase(p: dict | None) -> str:
    if not p or p.get("status") in (None, "none"):
        return "-"
    return f"{p.get('step')} {p.get('signal', '')} ({p.get('status')})"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _console():
    from rich.console import Console

    # Piped output (scripts, CI logs) is not cut to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 220)


STATE_STYLE = {"running": "green", "stopping": "yellow", "finished": "blue", "stopped": "yellow",
               "failed": "red", "crashed": "bold red"}


def cli_ls(home: Path, *, as_json: bool = False) -> int:
    runs = list_runs(home)
    if as_json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    from rich.table import Table

    console = _console()
    if not runs:
        console.print(f"no runs in {home} yet: tina run recipes/tiny.yaml")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("run", "state", "step", "restarts", "time", "device", "cost", "projected", "phase", "recommended"):
        table.add_column(col, justify="right" if col in ("step", "restarts", "cost", "projected") else "left")
    for r in runs:
        style = STATE_STYLE.get(r["state"], "")
        table.add_row(r["run_id"], f"[{style}]{r['state']}[/{style}]" if style else r["state"],
                      f"{r['step'] if r['step'] is not None else '-'}/{r['stop_at_step'] or '?'}",
                      str(r["restarts"]), _duration(r["elapsed_s"]),
                      f"{r['gpu_count']}x {r['device']}" if r["gpu_count"] else r["device"],
                      _money(r["cost_usd"]["total"]), _money(r["projected_cost_usd"]),
                      _phase(r["phase_transition"]),
                      str(r["recommended_checkpoint"]) if r["recommended_checkpoint"] is not None else "-")
    console.print(table)
    return 0


def cli_status(home: Path, run_ref: str, *, as_json: bool = False) -> int:
    run_dir = find_run(home, run_ref)
    store = open_store(home)
    with _session(store):
        run = describe(home, run_dir, store)
    if as_json:
        print(json.dumps(run, indent=2, default=str))
        return 0
    from rich.table import Table

    console = _console()
    c = run["cost_usd"]
    style = STATE_STYLE.get(run["state"], "")
    console.print(f"[bold]{run['run_id']}[/bold]  [{style}]{run['state']}[/{style}]  ({run['recipe']})")
    if run["failure"]:
        console.print(f"failed: {run['failure']}", markup=False, style="red")
    for w in run["write_errors"]:
        console.print(f"warning: attempt {w['attempt']}: {w['error']}"
                      + (f" ({w['lost_bytes']} bytes of trainer output lost)" if w["lost_bytes"] else ""),
                      markup=False, style="yellow")
    console.print(f"step {run['step'] if run['step'] is not None else '-'}/{run['stop_at_step'] or '?'}"
                  f"  restarts {run['restarts']}  trained {_duration(run['elapsed_s'])}"
                  + (f"  {run['seconds_per_step']:.2f} s/step" if run["seconds_per_step"] else "")
                  + (f"  ETA {_duration(run['eta_s'])}" if run["eta_s"] is not None else ""))
    device = f"{run['gpu_count']}x {run['device']}" if run["gpu_count"] else run["device"]
    rate = f"{_money(run['gpu_hour_usd'])}/GPU-hour" if run["gpu_count"] else f"{_money(run.get('cpu_hour_usd'))}/hour"
    console.print(f"{device} at {rate} ({run['price_source'] or 'no price'})")
    console.print(f"cost {_money(c['total'])} (train {_money(c['train'])}, eval {_money(c['eval'])})"
                  f"  projected {_money(run['projected_cost_usd'])}")
    console.print(f"phase transition {_phase(run['phase_transition'])}  recommended checkpoint "
                  f"{run['recommended_checkpoint'] if run['recommended_checkpoint'] is not None else '-'}")
    if run["checkpoints"] or run["base"]["evals"]:
        table = Table(box=None, header_style="bold")
        table.add_column("checkpoint", justify="right")
        table.add_column("cost at", justify="right")
        table.add_column("evals")
        rows = [("base", None, run["base"]["evals"])] if run["base"]["evals"] else []
        for name, usd, evals in rows + [(str(c["step"]), c["cost_usd_at"], c["evals"]) for c in run["checkpoints"]]:
            table.add_row(name, _money(usd), "  ".join(f"{t} {s:.3f}" if isinstance(s, (int, float)) else f"{t} {s}"
                                                       for t, s in evals.items()) or "-")
        console.print(table)
    for ev in run["evaluations"]:
        if ev["state"] in ("queued", "running", "failed"):
            why = f": {(ev['reason'] or '').splitlines()[0]}" if ev["state"] == "failed" else ""
            console.print(f"eval {ev['eval_id']} {ev['task']} {ev['state']}{why}", markup=False)
    if run["last_metrics"]:
        keys = [k for k in ("rewards/format_reward/mean", "rewards/accuracy_reward/mean",
                            "completions/mean_length", "reward", "kl", "loss") if k in run["last_metrics"]]
        console.print("  ".join(f"{k} {run['last_metrics'][k]:.4g}" for k in keys
                                if isinstance(run["last_metrics"][k], (int, float))))
    return 0
