"""Deterministic synthetic run directories, written through the writers the real run uses: the
recipe snapshot is ``Recipe.to_yaml()`` of the real recipe, ``run.json`` comes from the same
builder as ``tina run``'s, events go through ``RunDir.event``, metrics through the trainer's
``RunDir.log_metrics``, GPU samples through the supervisor's ``RunDir.log_system`` and checkpoints
are marked complete as the trainer marks them (``tests/test_tui_demo.py`` compares them with a
real tiny run). Only the numbers are made up.

Used by the cockpit's tests and benchmark, and by ``tina-tui --demo`` to look around without
training anything. Everything derives from the arguments: the same call writes the same bytes.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tina_core import runstate
from tina_core.events import EXIT_STOPPED, Kind
from tina_core.rundir import RunDir, now_iso, runs_root, write_json_atomic

EPOCH_START = 1767225600.0  # 2026-01-01T00:00:00Z: fixed so synthetic runs render the same everywhere
FORMAT = "rewards/format_reward/mean"
ACCURACY = "rewards/accuracy_reward/mean"
LENGTH = "completions/mean_length"


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

    def _recipe(self):
        """The repository's recipe this run names, resolved with the run's steps, GPUs and price
        (and ``overrides``), as `tina run` resolves it."""
        from tina_core.recipe.loader import REPO_ROOT, load_recipe

        return load_recipe(REPO_ROOT / self.recipe, [
            f"grpo.max_steps={self.max_steps}", f"grpo.save_steps={self.save_steps}",
            f"stop_at_step={self.stop_at_step}", f"launch.gpus={self.gpu_count}",
            f"price.gpu_hour_usd={self.gpu_hour_usd}", *self.overrides])

    def recipe_snapshot(self) -> str:
        """The resolved recipe as `tina run` writes it (``recipe.yaml``)."""
        return self._recipe().to_yaml()

    def write(self, home: Path) -> RunDir:
        from tina_core.analysis import cost
        from tina_core.supervise.lifecycle import run_info
        from tina_core.train.launcher import launch_command

        rd = RunDir(runs_root(home) / self.run_id)
        for path in (rd.events, rd.metrics, rd.system, rd.supervisor):  # written again from the start
            path.unlink(missing_ok=True)
        shutil.rmtree(rd.checkpoints, ignore_errors=True)
        rd.checkpoints.mkdir(parents=True)
        rng = random.Random(self.seed)
        recipe = self._recipe()
        rd.recipe.write_text(recipe.to_yaml())
        device = self.device if self.gpu_count else "cpu"
        price = cost.resolve_price(home, device, recipe_gpu_hour_usd=self.gpu_hour_usd if self.gpu_count else None)
        command = launch_command(rd, recipe)
        hardware = {"gpus": [{"index": g, "name": device, "memory_total_mib": 46068} for g in range(self.gpu_count)],
                    "cpu_count": 16, "host": "demo"}
        info = run_info(rd, recipe, self.recipe, name=self.name, overrides=list(self.overrides), gpu_hour_usd=None,
                        hardware=hardware,
                        device=device, price=price, command=command, dataset_size=self.dataset_size,
                        created=now_iso(self.start_ts), cwd=str(home))
        rd.write_info(info)
        log: list[str] = []
        ts = self.start_ts

        def event(kind: Kind, **f: Any) -> None:
            rd.event(kind, at=ts, **f)

        event(Kind.LAUNCHED, recipe=self.recipe, command=command, gpus=self.gpu_count,
              gpu_hour_usd=price.gpu_hour_usd, device=device)
        event(Kind.SUPERVISOR_STARTED, pid=1000, resume=False)
        attempt = 1
        event(Kind.ATTEMPT_STARTED, attempt=attempt, pid=1001, gpus=self.gpu_count, resume_from=None)
        crash_at = sorted(self.restarts)
        step = 1
        while step <= self.steps:
            ts += self.step_s
            m = self.metrics_at(step, rng)
            rd.log_metrics(step, attempt, m, at=ts)
            for i in range(self.log_lines_per_step):
                # the trainer's own line per step
                log.append(f"step {step}/{self.stop_at_step} format_reward {m[FORMAT]:.3f} accuracy_reward "
                           f"{m[ACCURACY]:.3f} reward {m['reward']:.4g} kl {m['kl']:.4g} len {m[LENGTH]:.4g} "
                           f"loss {m['loss']:.4g} lr {m['learning_rate']:.4g}" + (f" [{i}]" if i else "") + "\n")
            if step % 10 == 0 and self.gpu_count:  # one line per sample, as the supervisor writes
                rd.log_system([{"index": g, "util": round(80 + 15 * rng.random()), "mem_used": 38000 + g * 1500,
                                "mem_total": 46068, "power_w": round(250 + 40 * rng.random(), 1)}
                               for g in range(self.gpu_count)], at=ts)
            if step % self.save_steps == 0:
                rd.checkpoint_path(step).mkdir(exist_ok=True)
                rd.mark_complete(step, attempt, at=ts)
                log.append(f"saved checkpoint-{step}\n")
            if crash_at and step == crash_at[0]:
                crash_at.pop(0)
                event(Kind.ATTEMPT_EXITED, attempt=attempt, code=-9, signal="SIGKILL", step=step, cpu_s=step * self.step_s)
                event(Kind.RESTARTED, attempt=attempt + 1, delay_s=10, reason="killed by SIGKILL")
                log.append("Traceback (most recent call last):\nRuntimeError: CUDA error: an illegal memory access\n")
                ts += 60
                attempt += 1
                resume = (step // self.save_steps) * self.save_steps or None
                event(Kind.ATTEMPT_STARTED, attempt=attempt, pid=1000 + attempt, gpus=self.gpu_count,
                      resume_from=resume)
                step = (resume or 0) + 1
                continue
            step += 1
        cpu_s = self.steps * self.step_s
        if self.state == "finished":
            event(Kind.ATTEMPT_EXITED, attempt=attempt, code=0, signal=None, step=self.steps, cpu_s=cpu_s)
            event(Kind.FINISHED, step=self.steps, supervisor_cpu_s=1.0)
        elif self.state == "stopped":
            event(Kind.STOP_REQUESTED, by="tina stop", attempt=attempt)
            event(Kind.ATTEMPT_EXITED, attempt=attempt, code=EXIT_STOPPED, signal=None, step=self.steps, cpu_s=cpu_s)
            event(Kind.STOPPED, step=self.steps, supervisor_cpu_s=1.0)
        elif self.state == "failed":
            event(Kind.ATTEMPT_EXITED, attempt=attempt, code=1, signal=None, step=self.steps, cpu_s=cpu_s)
            event(Kind.FAILED, reason="gave up after 3 restarts; last attempt exit code 1", supervisor_cpu_s=1.0)
        gpus = [0] if self.gpu_count else []
        evals = [(None, self.base_evals)] if self.base_evals else []
        for ck_step, scores in evals + sorted(self.evals.items()):
            for task, score in sorted(scores.items()):  # one evaluation per checkpoint (or the base) x task
                ts += 120
                eid = f"{'base' if ck_step is None else f'ckpt{ck_step}'}-{task}-{self.seed:06x}"
                common = {"eval_id": eid, "checkpoint": ck_step, "task": task}
                pid = 2000 + (ck_step or 0)
                event(Kind.EVAL_QUEUED, **common, tasks=[task], gpus=gpus, gpus_explicit=False)
                event(Kind.EVAL_STARTED, **common, gpus=gpus, pid=pid, device="gpu" if gpus else "cpu",
                      log=str(rd.eval_log(eid)))
                ts += 600
                # the backend a GPU box (vLLM) or a plain CPU box (lighteval's transformers) generates with
                event(Kind.EVAL_FINISHED, **common, gpus=gpus, pid=pid, backend="vllm" if gpus else "transformers",
                      score=score, metric="pass@1",
                      metrics={"pass@1": score}, scores={task: score}, results_path=str(rd.evals / eid / "results.json"),
                      details_path=None, model=str(rd.evals / eid / "merged"), seconds=600.0)
        rd.train_log.write_text("".join(log))
        if self.state == "running":
            self.heartbeat(rd)
        return rd

    @staticmethod
    def heartbeat(rd: RunDir, pid: int | None = None) -> None:
        """Mark the run as live: a supervisor heartbeat naming a process that exists (ours)."""
        pid = pid or os.getpid()
        now = time.time()
        write_json_atomic(rd.supervisor, runstate.heartbeat_record(pid=pid, started=now, now=now, trainer_pid=pid,
                                                                   trainer_started=now, attempt=1))


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
