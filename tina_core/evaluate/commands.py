"""The command lines an evaluation runs: the merge, then lighteval (vLLM on GPU, transformers on
CPU), and the base model they start from. Light: what ``tina eval --dry-run`` prints comes from here.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from tina_core.evaluate.tasks import (CPU_SETTINGS, EVAL_TASKS_FILE, GPU_SETTINGS, EvalError, lighteval_task,
                                      merged_dir, output_dir)
from tina_core.rundir import RunDir, read_json


def _python() -> str:
    return sys.executable or "python"


def _lighteval_exe() -> str:
    beside = Path(_python()).parent / "lighteval"
    return str(beside) if beside.exists() else "lighteval"


def merge_command(adapter: Path, out: Path, dtype: str) -> list[str]:
    return [_python(), "-m", "tina_core.evaluate", "merge", "--adapter", str(adapter), "--out", str(out),
            "--dtype", dtype]


def vllm_command(model: str, task: str, out: Path, gpus: list[int]) -> list[str]:
    s = GPU_SETTINGS
    if "," in model:
        raise EvalError(f"model path {model!r} contains a comma, which lighteval's model arguments cannot carry")
    model_args = (f"model_name={model},dtype={s['dtype']},data_parallel_size={max(1, len(gpus))},"
                  f"max_model_length={s['max_model_length']},gpu_memory_utilization={s['gpu_memory_utilization']},"
                  f"cache_dir={out / 'cache'},"
                  f"generation_parameters={{max_new_tokens:{s['max_new_tokens']},temperature:{s['temperature']},"
                  f"top_p:{s['top_p']}}}")
    return [_lighteval_exe(), "vllm", model_args, f"{lighteval_task(task)}|0", "--custom-tasks", str(EVAL_TASKS_FILE),
            "--output-dir", str(out), "--save-details"]


def cpu_command(model: str, task: str, out: Path, recipe: Path | None = None) -> list[str]:
    extra = ["--recipe", str(recipe)] if recipe is not None and recipe.exists() else []
    return [_python(), "-m", "tina_core.evaluate", "lighteval-cpu", "--model", model, "--task", lighteval_task(task),
            "--output-dir", str(out), *extra]


def _child_env(**extra: str) -> dict[str, str]:
    """Our environment for a worker or job, with this checkout importable from any cwd."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root, **extra}


def _gpu_env(gpus: list[int]) -> dict[str, str]:
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


def plan_commands(home: Path, rd: RunDir, checkpoint: int | str, task: str, gpus: list[int]) -> list[str]:
    """The shell lines an evaluation runs (what ``--dry-run`` prints)."""
    lines = []
    if checkpoint == "base":
        model = base_model(home, rd)
    else:
        model = str(merged_dir(rd, int(checkpoint)))
        dtype = GPU_SETTINGS["dtype"] if gpus else CPU_SETTINGS["dtype"]
        lines.append(shlex.join(merge_command(rd.checkpoint_path(int(checkpoint)), Path(model), dtype)))
    out = output_dir(rd, checkpoint, task)
    if gpus:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _gpu_env(gpus).items())
        lines.append(f"{env} {shlex.join(vllm_command(model, task, out, gpus))}")
    else:
        lines.append(f"HF_HUB_OFFLINE=1 {shlex.join(cpu_command(model, task, out, rd.recipe))}")
    return lines


def _adapter_base(adapter: Path) -> str | None:
    cfg = read_json(adapter / "adapter_config.json")
    return cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()


def base_model(home: Path, rd: RunDir) -> str:
    """The run's base model: what its checkpoints' adapter_config.json names, else the recipe's."""
    for step in reversed(rd.checkpoint_steps()):
        base = _adapter_base(rd.checkpoint_path(step))
        if base and (not _looks_local(base) or Path(base).expanduser().exists()):
            return base
    if rd.recipe.exists():
        from tina_core.recipe.loader import load_recipe, resolve_base_model

        return resolve_base_model(load_recipe(rd.recipe), home)
    raise EvalError(f"cannot tell the base model of run {rd.run_id}: no checkpoint names one and "
                    f"{rd.recipe} is missing")


