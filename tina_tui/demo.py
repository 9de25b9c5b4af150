"""Deterministic synthetic run directories, written exactly as the supervisor and trainer write them
(run.json, events.jsonl, metrics.jsonl, system.jsonl, train.log, complete checkpoints).

Used by the cockpit's tests and benchmark, and by ``tina-tui --demo DIR`` to look around without
training anything. Everything derives from the arguments: the same call writes the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tina_core.rundir import CHECKPOINT_COMPLETE, RunDir, runs_root

EPOCH_START = 1767225600.0  # 2026-01-01T00:00:00Z: fixed so synthetic runs render the same everywhere
FORMAT = "rewards/format_reward/mean"
ACCURACY = "rewards/accuracy_reward/mean"
LENGTH = "completions/mean_length"


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"


@dataclass
class SyntheticRun:
    """The shape of one synthetic run; ``write`` lays it out under ``home/runs/<run_id>``."""

    run_id: str
    name: str = "demo"
    recipe: str = "recipes/tina/open_rs2.yaml"
    steps: int = 300                   # steps already trained
    stop_at_step: int = 300
    max_steps: int = 600
    save_steps: int = 50
    dataset_size: int = 2400           # one epoch = dataset_size / 8 steps
    transition: int | None = 120       # step of the format phase transition
    state: str = "finished"            # finished | stopped | failed | crashed | running
    seed: int = 0
    start_ts: float = EPOCH_START
    step_s: float = 30.0               # wall seconds per step
    gpu_count: int = 2
    gpu_hour_usd: float = 1.0
    device: str = "NVIDIA L40S"
    restarts: list[int] = field(default_factory=list)   # steps at which an attempt crashed
    evals: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> {task: score}
    base_evals: dict[str, float] = field(default_factory=dict)        # the base model's {task: score}
    log_lines_per_step: int = 1
    overrides: tuple[str, ...] = ()   # --set values of its recipe snapshot (an ablation's axis)

    @property
    def epoch_steps(self) -> float:
        return self.dataset_size / 8

    def metrics_at(self, step: int, rng: random.Random) -> dict[str, float]:
        t = self.transition if self.transition is not None else 10 ** 9
        x = (step - t) / 6.0
        fmt = 0.08 + 0.85 / (1 + math.exp(-max(min(x, 50), -50)))
        fmt = min(1.0, max(0.0, fmt + rng.gauss(0, 0.04)))
        length = 2400 - 1300 / (1 + math.exp(-max(min(x, 50), -50))) + rng.gauss(0, 60)
        acc = min(1.0, max(0.0, 0.25 + 0.3 * (1 - math.exp(-step / 400)) + rng.gauss(0, 0.05)))
        warm = max(1, int(0.1 * self.max_steps))
        if step < warm:
            lr = 1e-6 * step / warm
        else:
            p = (step - warm) / max(1, self.max_steps - warm)
            lr = 1e-6 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        return {
            "loss": round(rng.gauss(0.01, 0.005), 6),
            "grad_norm": round(abs(rng.gauss(0.3, 0.1)), 6),
            "learning_rate": lr,
            "num_tokens": float(step * 8 * 4 * 2600),
            "completions/mean_length": round(length, 2),
            ACCURACY: round(acc, 6),
            FORMAT: round(fmt, 6),
            "reward": round(acc + fmt, 6),
            "reward_std": round(abs(rng.gauss(0.4, 0.05)), 6),
            "kl": round(0.0005 * step ** 0.5 + abs(rng.gauss(0, 0.0005)), 6),
            "entropy": round(0.6 + rng.gauss(0, 0.02), 6),
            "epoch": round(step / self.epoch_steps, 6),
        }

    def recipe_snapshot(self) -> str:
        """The resolved recipe as `tina run` writes it, from the repository's recipe file with this
        run's steps (and ``overrides``); a stand-in where the file is not there."""
        from tina_core.recipe.loader import REPO_ROOT, load_recipe

        path = REPO_ROOT / self.recipe
        sets = [f"grpo.max_steps={self.max_steps}", f"grpo.save_steps={self.save_steps}",
                f"stop_at_step={self.stop_at_step}", f"launch.gpus={self.gpu_count}", *self.overrides]
        if path.is_file():
            return load_recipe(path, sets).to_yaml()
        return "".join(f"# {s}\n" for s in sets)

    def write(self, home: Path) -> RunDir:
        rd = RunDir(runs_root(home) / self.run_id)
        rd.checkpoints.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed)
        info = {
            "run_id": self.run_id, "name": self.name, "recipe": self.recipe,
            "created": _iso(self.start_ts), "hardware": f"{self.gpu_count}x {self.device}",
            "device": self.device, "gpu_count": self.gpu_count, "gpu_hour_usd": self.gpu_hour_usd,
            "command": ["python", "-m", "tina_core.train", f"runs/{self.run_id}"],
            "stop_at_step": self.stop_at_step, "max_steps": self.max_steps,
            "save_steps": self.save_steps, "dataset_size": self.dataset_size, "imported": False,
        }
        rd.run_json.write_text(json.dumps(info, indent=2) + "\n")
        rd.recipe.write_text(self.recipe_snapshot())
        ev, met, sysl, log = [], [], [], []
        ts = self.start_ts

        def event(kind: str, **f: Any) -> None:
            ev.append(_line({"time": _iso(ts), "ts": ts, "event": kind, **f}))

        event("launched", recipe=self.recipe, command=info["command"], gpus=self.gpu_count,
              gpu_hour_usd=self.gpu_hour_usd, device=self.device)
        event("supervisor_started", pid=1000)
        attempt = 1
        event("attempt_started", attempt=attempt, pid=1001, gpus=self.gpu_count, resume_from=None)
        crash_at = sorted(self.restarts)
        step = 1
        while step <= self.steps:
            ts += self.step_s
            m = self.metrics_at(step, rng)
            met.append(_line({"step": step, "attempt": attempt, "time": _iso(ts), "ts": ts, **m}))
            for i in range(self.log_lines_per_step):
                log.append(f"{{'loss': {m['loss']}, 'reward': {m['reward']}, 'epoch': {m['epoch']}}}"
                           f" step {step}/{self.max_steps}" + (f" [{i}]" if i else "") + "\n")
            if step % 10 == 0 and self.gpu_count:  # one line per sample, as the supervisor writes
                sysl.append(_line({"time": _iso(ts), "ts": ts, "gpus": [
                    {"index": g, "util": round(80 + 15 * rng.random()), "mem_used": 38000 + g * 1500,
                     "mem_total": 46068, "power_w": round(250 + 40 * rng.random(), 1)}
                    for g in range(self.gpu_count)]}))
            if step % self.save_steps == 0:
                ck = rd.checkpoint_path(step)
                ck.mkdir(exist_ok=True)
                (ck / CHECKPOINT_COMPLETE).write_text(_line({"step": step, "time": _iso(ts)}))
            if crash_at and step == crash_at[0]:
                crash_at.pop(0)
                event("attempt_exited", attempt=attempt, code=-9, signal=9, step=step)
                event("restarted", attempt=attempt + 1, delay_s=10, reason="exit code -9")
                log.append("Traceback (most recent call last):\nRuntimeError: CUDA error: an illegal memory access\n")
                ts += 60
                attempt += 1
                resume = (step // self.save_steps) * self.save_steps or None
                event("attempt_started", attempt=attempt, pid=1000 + attempt, gpus=self.gpu_count,
                      resume_from=resume)
                step = (resume or 0) + 1
                continue
            step += 1
        if self.state == "finished":
            event("attempt_exited", attempt=attempt, code=0, signal=None, step=self.steps)
            event("finished")
        elif self.state == "stopped":
            event("stop_requested")
            event("attempt_exited", attempt=attempt, code=75, signal=None, step=self.steps)
            event("stopped")
        elif self.state == "failed":
            event("attempt_exited", attempt=attempt, code=1, signal=None, step=self.steps)
            event("failed", reason="exit code 1 after 3 restarts")
        evals = [(None, self.base_evals)] if self.base_evals else []
        for ck_step, scores in evals + sorted(self.evals.items()):
            for task, score in sorted(scores.items()):  # one evaluation per checkpoint x task
                ts += 120
                eid = f"{'base' if ck_step is None else f'ckpt{ck_step}'}-{task}-{self.seed:06x}"
                common = {"eval_id": eid, "checkpoint": ck_step, "task": task}
                event("eval_queued", **common, tasks=[task], gpus=[0] if self.gpu_count else [])
                event("eval_started", **common, gpus=min(1, self.gpu_count), pid=2000 + (ck_step or 0))
                ts += 600
                event("eval_finished", **common, score=score, metric="pass@1", scores={task: score})
        rd.events.write_text("".join(ev))
        rd.metrics.write_text("".join(met))
        rd.system.write_text("".join(sysl))
        rd.train_log.write_text("".join(log))
        if self.state == "running":
            self.heartbeat(rd)
        return rd

    @staticmethod
    def heartbeat(rd: RunDir, pid: int | None = None) -> None:
        """Mark the run as live: a supervisor heartbeat naming a process that exists (ours)."""
        import time

        pid = pid or os.getpid()
        rec = {"pid": pid, "pgid": os.getpgid(pid), "started": time.time(), "heartbeat": time.time(),
               "trainer_pid": pid, "attempt": 1}
        tmp = rd.supervisor.with_name(".supervisor.json.tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, rd.supervisor)


def demo_runs(steps: int = 300) -> list[SyntheticRun]:
    """Three runs covering what the cockpit shows: a confirmed transition with evaluations and a
    restart, a stopped run, a failed CPU run without a transition."""
    save = max(10, steps // 6)
    return [
        SyntheticRun("open-rs2-20260101-000000-a1b2", name="open-rs2", steps=steps, stop_at_step=steps,
                     max_steps=2 * steps, save_steps=save, transition=int(steps * 0.4), seed=1,
                     restarts=[int(steps * 0.7)],
                     evals={int(steps * 0.4) // save * save: {"aime24": 0.433, "math_500": 0.812, "amc23": 0.675},
                            steps // save * save: {"aime24": 0.367, "math_500": 0.798, "amc23": 0.650}}),
        SyntheticRun("open-rs3-20260102-000000-c3d4", name="open-rs3", recipe="recipes/tina/open_rs3.yaml",
                     steps=int(steps * 0.6), stop_at_step=steps, max_steps=2 * steps, save_steps=save,
                     state="stopped", transition=int(steps * 0.5), seed=2, start_ts=EPOCH_START + 86400),
        SyntheticRun("tiny-20260103-000000-e5f6", name="tiny", recipe="recipes/tiny.yaml", steps=60,
                     stop_at_step=100, max_steps=200, save_steps=20, dataset_size=800, transition=None,
                     state="failed", seed=3, start_ts=EPOCH_START + 2 * 86400, step_s=0.2, gpu_count=0,
                     gpu_hour_usd=0.0, device="cpu"),
    ]


def make_workspace(home: Path, runs: list[SyntheticRun] | None = None) -> list[RunDir]:
    home.mkdir(parents=True, exist_ok=True)
    return [r.write(home) for r in (runs if runs is not None else demo_runs())]
