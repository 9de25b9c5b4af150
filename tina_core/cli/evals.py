"""`tina eval` as printed on a terminal (queueing and running: tina_core.evaluate)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tina_core import runstate
from tina_core.evaluate.commands import plan_commands
from tina_core.evaluate.queue import check_backend, parse_gpus, run_gpus, cancel_eval, queue_eval, resolve_checkpoints
from tina_core.evaluate.tasks import TINA_TASKS, checkpoint_label, task_name
from tina_core.evaluate.worker import ensure_worker, revive_worker, worker_running
from tina_core.rundir import RunDir, TinaError, find_run, tina_home


def _fmt_ckpt(c: Any) -> str:
    return checkpoint_label(c)


def wait_for(home: Path, rd: RunDir, ids: list[str], *, poll: float = 1.0, stream=sys.stderr) -> dict[str, dict]:
    """Block until every evaluation in ``ids`` has ended; reports each end as it happens."""
    seen: dict[str, str] = {}
    while True:
        evs = runstate.evaluations(rd)
        for eid in ids:
            state = evs[eid]["state"]
            if seen.get(eid) != state:
                seen[eid] = state
                if state in ("running", "failed", "cancelled"):
                    print(f"{eid}: {state}", file=stream, flush=True)
        if all(evs[i]["state"] not in ("queued", "running") for i in ids):
            return {i: evs[i] for i in ids}
        if not worker_running(home):
            ensure_worker(home)
        time.sleep(poll)


def cli_eval(home: Path, run_ref: str, *, checkpoint: str = "recommended", tasks: str | None = None,
             dry_run: bool = False, wait: bool = False, gpus: str | None = None, cancel: bool = False,
             force: bool = False) -> int:
    h = tina_home(home)
    rd = find_run(h, run_ref, acting=not dry_run)
    if cancel:
        done = cancel_eval(h, rd.run_id)
        print("\n".join(f"cancelled {e}" for e in done) if done else f"no queued or running evaluation of {rd.run_id}")
        return 0
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    if task_list == []:
        raise TinaError(f"--tasks {tasks!r}: names no task; expected comma-separated task names, e.g. --tasks arith")
    explicit = parse_gpus(gpus)
    use_gpus = explicit if explicit is not None else run_gpus(rd)
    names = [task_name(t) for t in task_list] if task_list else (list(TINA_TASKS) if use_gpus else ["arith"])
    for t in names:
        check_backend(t, use_gpus)
    if dry_run:
        for ckpt in resolve_checkpoints(h, rd, checkpoint):
            print(f"# {rd.run_id} {checkpoint_label(ckpt)}")
            merge_printed = False
            for t in names:
                for line in plan_commands(h, rd, ckpt, t, use_gpus):
                    if " merge " in line:
                        if merge_printed:
                            continue
                        merge_printed = True
                    print(line)
        return 0
    if use_gpus:  # what tina doctor says would fail the evaluation on these GPUs, before it is queued
        from tina_core.doctor import refuse_launch
        from tina_core.recipe.loader import load_recipe

        refuse_launch(load_recipe(rd.recipe), h, force=force, tasks=names, eval_gpus=len(use_gpus), what="evaluation")
    if note := revive_worker(h):  # before queueing, which would start one without a word
        print(f"tina: {note}", file=sys.stderr)
    ids = queue_eval(h, rd.run_id, checkpoint, task_list, gpus=gpus)
    evs = runstate.evaluations(rd)
    for eid in ids:
        e = evs[eid]
        print(f"{eid}\t{_fmt_ckpt(e['checkpoint'])}\t{e['task']}\t{e['state']}")
    if not wait:
        return 0
    try:
        final = wait_for(h, rd, ids)
    except KeyboardInterrupt:
        print("stopped waiting; the evaluations go on (tina eval RUN --cancel stops them)", file=sys.stderr)
        return 130
    print()
    print(f"{'checkpoint':<16}{'task':<15}{'score':>8}  metric / reason")
    for eid in ids:
        e = final[eid]
        score = f"{e['score']:.4f}" if e["state"] == "finished" else e["state"]
        why = e["metric"] if e["state"] == "finished" else (e.get("reason") or "").split("\n")[0]
        print(f"{_fmt_ckpt(e['checkpoint']):<16}{e['task']:<15}{score:>8}  {why}")
    return 0 if all(final[i]["state"] == "finished" for i in ids) else 1


