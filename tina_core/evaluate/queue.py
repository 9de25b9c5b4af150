"""Queueing evaluations: what to evaluate (a step, the recommended checkpoint, all, the base model),
on which GPUs, and cancelling. The CLI and the cockpit only queue and read; the worker runs them.

A run's ``stop.budget_usd`` is a cap on what it spends, the evaluations its stop policy starts
included: each of those is priced before it is queued (``analysis.cost.eval_price``: this
workspace's own time for the task, else Tina's) against what is left of the budget (spent so far,
and what the run's evaluations still queued or running will take), and one that does not fit is
not queued but recorded as ``eval_refused``. What a person queues with `tina eval` is theirs to
spend; its price is said.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

from tina_core import runstate
from tina_core.evaluate.tasks import CPU_TASKS, TINA_TASKS, task_slug, task_name
from tina_core.events import MARKED, Kind, marker
from tina_core.rundir import RunDir, RunInfo, TinaError, find_run, tina_home


def run_gpus(rd: RunDir) -> list[int]:
    return list(range(RunInfo.read(rd).gpu_count or 0))


def parse_gpus(gpus: str | Sequence[int] | None) -> list[int] | None:
    if gpus is None:
        return None
    parts = gpus.split(",") if isinstance(gpus, str) else list(gpus)
    try:
        ids = [int(str(p).strip()) for p in parts if str(p).strip() != ""]
    except ValueError:
        raise TinaError(f"--gpus: expected comma-separated GPU ids such as 0,1, got {gpus!r}") from None
    if not ids or any(i < 0 for i in ids):
        raise TinaError(f"--gpus: expected comma-separated GPU ids such as 0,1, got {gpus!r}")
    return ids


def _store(home: Path, rd: RunDir):
    """The index with this run caught up: nothing ingests behind a headless ``tina run``, so an
    index read as it stands may not know the run's transition or newest checkpoints at all."""
    from tina_core.store.index import Store

    store = Store(home)
    store.ingest([rd.run_id])
    return store


def _recommended(home: Path, rd: RunDir) -> int:
    step = _store(home, rd).recommendation(rd.run_id).get("recommended")
    if step is None:
        raise TinaError(f"run {rd.run_id} has no recommended checkpoint yet; "
                        f"pass --checkpoint N, all or base (checkpoints: {rd.checkpoint_steps(evaluable=True) or 'none'})")
    return int(step)


def _transition_brackets(home: Path, rd: RunDir) -> list[int]:
    """The checkpoints bracketing the run's marker: the one the supervisor acted on (its
    ``transition`` events), else the index's (an imported run)."""
    from tina_core.analysis import policy

    m = marker(rd.read_events()) or _store(home, rd).phase(rd.run_id) or {}
    if m.get("status") not in MARKED:
        raise TinaError(f"run {rd.run_id} has no phase transition yet; pass --checkpoint N, recommended, all or base")
    sides = [s for s in policy.brackets(int(m["step"]), rd.checkpoint_steps(evaluable=True)) if s is not None]
    if not sides:
        raise TinaError(f"run {rd.run_id} has no checkpoint near its phase transition at step {m['step']}")
    return sides


def resolve_checkpoints(home: Path, rd: RunDir, checkpoint: int | str) -> list[int | str]:
    """``N``, ``"recommended"``, ``"all"``, ``"base"`` or ``"transition"`` (the checkpoints
    bracketing the phase-transition marker, and the base model) -> checkpoint steps (or ``"base"``).
    A step with no directory at all is a user error; an incomplete one is queued and fails with
    that reason (it may still be being written)."""
    if isinstance(checkpoint, str):
        c = checkpoint.strip().lower()
        if c == "base":
            return ["base"]
        if c == "transition":
            return [*_transition_brackets(home, rd), "base"]
        if c == "all":
            steps = rd.checkpoint_steps(evaluable=True)
            if not steps:
                raise TinaError(f"run {rd.run_id} has no complete checkpoint yet")
            return list(steps)
        if c == "recommended":
            return [_recommended(home, rd)]
        if not c.removeprefix("checkpoint-").isdigit():
            raise TinaError(f"--checkpoint: expected a step N, recommended, all, base or transition, got {checkpoint!r}")
        checkpoint = int(c.removeprefix("checkpoint-"))
    step = int(checkpoint)
    if not rd.checkpoint_path(step).is_dir():
        raise TinaError(f"run {rd.run_id} has no checkpoint-{step}; complete checkpoints: "
                        f"{rd.checkpoint_steps(evaluable=True) or 'none'}")
    return [step]


def check_backend(task: str, gpus: list[int]) -> None:
    if not gpus and task not in CPU_TASKS:
        raise TinaError(f"task {task!r} is evaluated with vLLM on GPUs (32768-token completions, data from the hub); "
                        f"this run has no GPUs: pass --gpus ids, or use a CPU task ({', '.join(CPU_TASKS)})")


def queue_eval(home: str | os.PathLike | None, run_ref: str, checkpoint: int | str = "recommended",
               tasks: Sequence[str] | None = None, *, gpus: str | Sequence[int] | None = None,
               start_worker: bool = True, why: str | None = None) -> list[str]:
    """Queue evaluations of a run's checkpoint(s) x tasks; returns their eval ids (an identical
    evaluation already queued or running is reused, not queued twice). Starts the worker.
    ``why``: what asked for them, if not a person (``transition``: the stop policy)."""
    h = tina_home(home)
    rd = find_run(h, run_ref, acting=True)
    explicit = parse_gpus(gpus)
    use_gpus = explicit if explicit is not None else run_gpus(rd)
    names = [task_name(t) for t in tasks] if tasks else (list(TINA_TASKS) if use_gpus else list(CPU_TASKS))
    for t in names:
        check_backend(t, use_gpus)
    evals = runstate.evaluations(rd)
    # an evaluation queued or running is not queued twice; nor, for the checkpoints around the
    # marker, one that already finished (a second `--checkpoint transition`, a second policy stop)
    kept = ("queued", "running", "finished") if str(checkpoint).strip().lower() == "transition" else ("queued", "running")
    active = {("base" if e["checkpoint"] is None else e["checkpoint"], e["task"]): e["eval_id"]  # None: base too
              for e in evals.values() if e["state"] in kept}
    cap = BudgetLeft.of(h, rd, evals) if why == "transition" else None
    ids = []
    for ckpt in resolve_checkpoints(h, rd, checkpoint):
        for t in dict.fromkeys(names):
            if (ckpt, t) in active:
                ids.append(active[(ckpt, t)])
                continue
            if cap is not None and not cap.take(rd, ckpt, t, use_gpus, why):
                continue
            eid = f"{'base' if ckpt == 'base' else f'ckpt{ckpt}'}-{task_slug(t)}-{secrets.token_hex(3)}"
            extra: dict[str, Any] = {"why": why} if why else {}
            rd.event(Kind.EVAL_QUEUED, eval_id=eid, checkpoint=ckpt, task=t, tasks=[t], gpus=use_gpus,
                     gpus_explicit=explicit is not None, **extra)
            ids.append(eid)
    if start_worker:
        from tina_core.evaluate.worker import ensure_worker

        ensure_worker(h)
    return ids


class BudgetLeft:
    """What is left of a run's ``stop.budget_usd`` for the evaluations its stop policy queues: the
    budget, less what the run has spent (training and evaluations) and what its evaluations still
    queued or running will take at their projected price."""

    def __init__(self, home: Path, info: RunInfo, budget: float, left: float) -> None:
        self.home, self.info, self.budget, self.left = home, info, budget, left

    @classmethod
    def of(cls, home: Path, rd: RunDir, evals: dict[str, dict]) -> "BudgetLeft | None":
        from tina_core.analysis import cost, policy

        budget = policy.for_run(rd).budget_usd
        if budget is None:
            return None
        info, now = RunInfo.read(rd), time.time()
        left = budget - cost.Meter.for_run(rd).cost_usd()["total"]
        for e in evals.values():
            if e["state"] in ("queued", "running"):
                price = cost.eval_price(home, info, e["task"], e["gpus"])
                done = now - e["started_ts"] if e["state"] == "running" and e.get("started_ts") else 0.0
                left -= price.usd * max(0.0, 1 - done / price.seconds) if price.seconds else price.usd
        return cls(home, info, budget, left)

    def take(self, rd: RunDir, checkpoint: int | str, task: str, gpus: list[int], why: str | None) -> bool:
        """Whether this evaluation fits what is left (it is then counted against it); one that
        does not is recorded as ``eval_refused``, with its price and what was left."""
        from tina_core.analysis import cost

        price = cost.eval_price(self.home, self.info, task, gpus)
        if price.usd <= self.left:
            self.left -= price.usd
            return True
        rd.event(Kind.EVAL_REFUSED, checkpoint=checkpoint, task=task, why=why, projected_usd=price.usd,
                 left_usd=round(max(self.left, 0.0), 6), budget_usd=self.budget)
        return False


def cancel_eval(home: str | os.PathLike | None, run_ref: str, eval_id: str | None = None) -> list[str]:
    """Cancel one queued or running evaluation of a run (all of them when ``eval_id`` is None);
    a running one has its whole process group killed. Returns the ids cancelled."""
    rd = find_run(tina_home(home), run_ref, acting=True)
    evs = runstate.evaluations(rd)
    if eval_id is not None and eval_id not in evs:
        raise TinaError(f"run {rd.run_id} has no evaluation {eval_id!r}")
    targets = [e for e in evs.values() if e["state"] in ("queued", "running")
               and (eval_id is None or e["eval_id"] == eval_id)]
    for e in targets:
        # The event first: the worker then knows the job's death was asked for, not a failure.
        rd.event(Kind.EVAL_CANCELLED, eval_id=e["eval_id"], checkpoint=e["checkpoint"], task=e["task"],
                 gpus=e["gpus"] if e["state"] == "running" else [], was=e["state"])
        if e["state"] == "running" and isinstance(e.get("pid"), int):
            runstate.end_group(e["pid"], 5.0)
    return [e["eval_id"] for e in targets]


