"""The command lines an evaluation runs: the merge, then lighteval (generating with vLLM, or with
lighteval's transformers backend on a CPU box without vLLM), and the base model they start from.
The job runs both steps in its own process; these are the equivalent standalone commands, what
``tina eval --dry-run`` prints. Light: no heavy imports.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from tina_core.evaluate.tasks import CPU_TASKS, EvalError, eval_backend, merge_dtype, merged_dir, output_dir
from tina_core.rundir import RunDir, read_json


def python_executable() -> str:
    return sys.executable or "python"


def merge_command(adapter: Path, out: Path, dtype: str) -> list[str]:
    return [python_executable(), "-m", "tina_core.evaluate", "merge", "--adapter", str(adapter), "--out", str(out),
            "--dtype", dtype]


def lighteval_command(model: str, task: str, out: Path, gpus: list[int], recipe: Path | None = None) -> list[str]:
    extra = ["--recipe", str(recipe)] if recipe is not None and recipe.exists() else []
    devices = ["--gpus", ",".join(str(g) for g in gpus)] if gpus else []
    return [python_executable(), "-m", "tina_core.evaluate", "lighteval", "--backend", eval_backend(gpus),
            "--model", model, "--task", task, "--output-dir", str(out), *devices, *extra]


def child_env(**extra: str) -> dict[str, str]:
    """Our environment for a worker or job, with this checkout importable from any cwd."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root, **extra}


def gpu_env(gpus: list[int]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


def plan_commands(home: Path, rd: RunDir, checkpoint: int | str, task: str, gpus: list[int]) -> list[str]:
    """The shell lines an evaluation runs (what ``--dry-run`` prints)."""
    lines = []
    if checkpoint == "base":
        model = base_model(home, rd)
    else:
        model = str(merged_dir(rd, int(checkpoint)))
        dtype = merge_dtype(eval_backend(gpus))
        lines.append(shlex.join(merge_command(rd.checkpoint_path(int(checkpoint)), Path(model), dtype)))
    out = output_dir(rd, checkpoint, task)
    env = gpu_env(gpus) if gpus else {}
    if task in CPU_TASKS:
        env["HF_HUB_OFFLINE"] = "1"
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    lines.append(f"{prefix} {shlex.join(lighteval_command(model, task, out, gpus, rd.recipe))}".strip())
    return lines


def _adapter_base(adapter: Path) -> str | None:
    cfg = read_json(adapter / "adapter_config.json")
    return cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None


def looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()


def base_model(home: Path, rd: RunDir) -> str:
    """The run's base model: what its checkpoints' adapter_config.json names, else the recipe's."""
    for step in reversed(rd.checkpoint_steps(evaluable=True)):
        base = _adapter_base(rd.checkpoint_path(step))
        if base and (not looks_local(base) or Path(base).expanduser().exists()):
            return base
    if rd.recipe.exists():
        from tina_core.recipe.loader import load_recipe, resolve_base_model

        return resolve_base_model(load_recipe(rd.recipe), home)
    raise EvalError(f"cannot tell the base model of run {rd.run_id}: no checkpoint names one and "
                    f"{rd.recipe} is missing")


