"""`tina eval`: from a checkpoint to benchmark scores, one evaluation at a time.

An evaluation is one (run, checkpoint, task). Its whole life is in the run's ``events.jsonl``:
``eval_queued`` -> ``eval_started`` -> ``eval_finished`` | ``eval_failed`` | ``eval_cancelled``, so
the queue is simply the evaluations without a terminal event, across the workspace's runs.

Processes (none of them is the CLI or the cockpit, which only queue and read):

- the worker, ``python -m tina_core.evaluate worker HOME``: detached, one per workspace (an fcntl
  lock), started by :func:`queue_eval` when none runs, exits when the queue is empty. It runs
  evaluations one after the other, each as a job in its own process group (so cancelling kills the
  whole tree), enforces the timeout, and records the failures a job cannot record itself (a crash,
  an OOM kill, a timeout). It holds back a GPU evaluation while the run's own training holds the
  GPUs, unless the user assigned GPUs explicitly.
- the job, ``python -m tina_core.evaluate job HOME RUN EVAL_ID``: merges the LoRA adapter into its
  base model (cached per checkpoint), runs lighteval, parses the results into ``eval_finished``.
  On GPU that is Tina's ``lighteval vllm`` command line per task; on CPU lighteval's transformers
  backend through its Python API, offline, with a registry limited to :mod:`tina_core.eval_tasks`
  (lighteval's CLI imports every built-in task module, some of which need the network).

Output: ``RUN/evals/<eval_id>.log`` (the job's output), ``RUN/evals/<checkpoint-N|base>/<task>/``
(lighteval's results JSON and per-sample details parquet), merged models under
``RUN/evals/merged/checkpoint-N/``.

Kept free of heavy imports at module level: the CLI imports this for ``tina eval``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Sequence

from tina_core.rundir import (
    CHECKPOINT_COMPLETE,
    RunDir,
    TinaError,
    find_run,
    list_run_dirs,
    read_json,
    redact_text,
    tina_home,
    write_json_atomic,
)

# --- tasks ----------------------------------------------------------------------------------------
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
# Tasks lighteval lacks, defined in eval_tasks.py under names that never clash with built-ins.
CUSTOM_TASKS = {"amc23": "tina_amc23", "minerva": "tina_minerva", "arith": "tina_arith"}
EVAL_TASKS_FILE = Path(__file__).resolve().parent / "eval_tasks.py"

# Tina's evaluation settings (scripts/eval/eval_post_train.sh), in lighteval 0.13's spelling.
GPU_SETTINGS = {"dtype": "bfloat16", "max_model_length": 32768, "gpu_memory_utilization": 0.7,
                "max_new_tokens": 32768, "temperature": 0.6, "top_p": 0.95}
# The tiny model answers in a few dozen tokens; greedy decoding keeps CPU scores reproducible.
CPU_SETTINGS = {"dtype": "float32", "max_new_tokens": 64, "temperature": 0.0, "batch_size": 16}

TERMINAL = ("eval_finished", "eval_failed", "eval_cancelled")
LOG_TAIL_LINES = 12
MERGED_MARK = "tina-merged.json"
WORKER_LOCK = "eval-worker.lock"
WORKER_LOG = "eval-worker.log"
BLOCKED_POLL_S = 3.0
JOB_HEARTBEAT_S = 5.0  # a job touches its log this often: the log's mtime is its last sign of life


class EvalError(Exception):
    """An evaluation failed for a reason worth showing as is (no traceback needed)."""


def task_name(task: str) -> str:
    """Canonical user-facing task name (accepts lighteval's ``tina_amc23`` spelling too)."""
    t = task.strip()
    for name, lname in CUSTOM_TASKS.items():
        if t == lname:
            return name
    if t not in TASKS:
        raise TinaError(f"unknown evaluation task {t!r}; known tasks: {', '.join(TASKS)}")
    return t


def lighteval_task(task: str) -> str:
    return CUSTOM_TASKS.get(task, task)


def default_tasks(recipe: Any) -> list[str]:
    """Tina's six benchmarks for a GPU recipe, the tiny arithmetic benchmark on CPU."""
    gpus = getattr(recipe, "gpus", None)
    if gpus is None and isinstance(recipe, dict):
        gpus = (recipe.get("launch") or {}).get("gpus")
    return list(TINA_TASKS) if int(gpus or 0) > 0 else ["arith"]


def _task_slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", task)


# --- the queue, folded from events ----------------------------------------------------------------
def evals_of(rd: RunDir, events: Iterable[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every evaluation of a run by id: ``{eval_id, run_id, checkpoint, task, state, gpus, ...}``
    with ``state`` queued, running, finished, failed or cancelled (the first terminal event wins)."""
    out: dict[str, dict[str, Any]] = {}
    for ev in rd.read_events() if events is None else events:
        kind, eid = ev.get("event"), ev.get("eval_id")
        if not (isinstance(kind, str) and kind.startswith("eval_")) or not eid:
            continue
        if kind == "eval_queued":
            out[eid] = {"eval_id": eid, "run_id": rd.run_id, "checkpoint": ev.get("checkpoint"),
                        "task": ev.get("task"), "state": "queued", "gpus": ev.get("gpus") or [],
                        "gpus_explicit": bool(ev.get("gpus_explicit")), "queued_ts": ev.get("ts"),
                        "started_ts": None, "ended_ts": None, "pid": None, "score": None,
                        "metric": None, "reason": None}
            continue
        rec = out.get(eid)
        if rec is None or rec["state"] not in ("queued", "running"):
            continue
        if kind == "eval_started":
            rec.update(state="running", started_ts=ev.get("ts"), pid=ev.get("pid"))
        elif kind in TERMINAL:
            rec.update(state=kind.removeprefix("eval_"), ended_ts=ev.get("ts"),
                       score=ev.get("score"), metric=ev.get("metric"), reason=ev.get("reason"),
                       results_path=ev.get("results_path"), details_path=ev.get("details_path"))
    return out


def eval_queue(home: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Queued and running evaluations across the workspace, oldest first."""
    h = tina_home(home)
    items = [e for rd in list_run_dirs(h) for e in evals_of(rd).values() if e["state"] in ("queued", "running")]
    return sorted(items, key=lambda e: (e.get("queued_ts") or 0, e["eval_id"]))


# --- what to evaluate -----------------------------------------------------------------------------
def _run_gpus(rd: RunDir) -> list[int]:
    return list(range(int(rd.info().get("gpu_count") or 0)))


def _parse_gpus(gpus: str | Sequence[int] | None) -> list[int] | None:
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
    from tina_core.store import Store

    store = Store(home)
    store.ingest([rd.run_id])
    return store


def _recommended(home: Path, rd: RunDir) -> int:
    step = _store(home, rd).recommendation(rd.run_id).get("recommended")
    if step is None:
        raise TinaError(f"run {rd.run_id} has no recommended checkpoint yet; "
                        f"pass --checkpoint N, all or base (complete checkpoints: {rd.checkpoint_steps() or 'none'})")
    return int(step)


def resolve_checkpoints(home: Path, rd: RunDir, checkpoint: int | str) -> list[int | str]:
    """``N``, ``"recommended"``, ``"all"`` or ``"base"`` -> checkpoint steps (or ``"base"``).
    A step with no directory at all is a user error; an incomplete one is queued and fails with
    that reason (it may still be being written)."""
    if isinstance(checkpoint, str):
        c = checkpoint.strip().lower()
        if c == "base":
            return ["base"]
        if c == "all":
            steps = rd.checkpoint_steps()
            if not steps:
                raise TinaError(f"run {rd.run_id} has no complete checkpoint yet")
            return list(steps)
        if c == "recommended":
            return [_recommended(home, rd)]
        if not c.removeprefix("checkpoint-").isdigit():
            raise TinaError(f"--checkpoint: expected a step N, recommended, all or base, got {checkpoint!r}")
        checkpoint = int(c.removeprefix("checkpoint-"))
    step = int(checkpoint)
    if not rd.checkpoint_path(step).is_dir():
        raise TinaError(f"run {rd.run_id} has no checkpoint-{step}; complete checkpoints: "
                        f"{rd.checkpoint_steps() or 'none'}")
    return [step]


def _label(checkpoint: int | str) -> str:
    return "base" if checkpoint == "base" else f"checkpoint-{checkpoint}"


def _check_backend(task: str, gpus: list[int]) -> None:
    if not gpus and task not in CUSTOM_TASKS:
        raise TinaError(f"task {task!r} is evaluated with vLLM on GPUs (lighteval's built-in task needs the hub); "
                        f"this run has no GPUs: pass --gpus ids, or use a CPU task ({', '.join(CUSTOM_TASKS)})")


def queue_eval(home: str | os.PathLike | None, run_ref: str, checkpoint: int | str = "recommended",
               tasks: Sequence[str] | None = None, *, gpus: str | Sequence[int] | None = None,
               start_worker: bool = True) -> list[str]:
    """Queue evaluations of a run's checkpoint(s) x tasks; returns their eval ids (an identical
    evaluation already queued or running is reused, not queued twice). Starts the worker."""
    h = tina_home(home)
    rd = find_run(h, run_ref)
    explicit = _parse_gpus(gpus)
    use_gpus = explicit if explicit is not None else _run_gpus(rd)
    names = [task_name(t) for t in tasks] if tasks else (list(TINA_TASKS) if use_gpus else ["arith"])
    for t in names:
        _check_backend(t, use_gpus)
    active = {(e["checkpoint"], e["task"]): e["eval_id"] for e in evals_of(rd).values()
              if e["state"] in ("queued", "running")}
    ids = []
    for ckpt in resolve_checkpoints(h, rd, checkpoint):
        for t in dict.fromkeys(names):
            if (ckpt, t) in active:
                ids.append(active[(ckpt, t)])
                continue
            eid = f"{'base' if ckpt == 'base' else f'ckpt{ckpt}'}-{_task_slug(t)}-{secrets.token_hex(3)}"
            rd.event("eval_queued", eval_id=eid, checkpoint=ckpt, task=t, tasks=[t], gpus=use_gpus,
                     gpus_explicit=explicit is not None)
            ids.append(eid)
    if start_worker:
        ensure_worker(h)
    return ids


def cancel_eval(home: str | os.PathLike | None, run_ref: str, eval_id: str | None = None) -> list[str]:
    """Cancel one queued or running evaluation of a run (all of them when ``eval_id`` is None);
    a running one has its whole process group killed. Returns the ids cancelled."""
    rd = find_run(tina_home(home), run_ref)
    evs = evals_of(rd)
    if eval_id is not None and eval_id not in evs:
        raise TinaError(f"run {rd.run_id} has no evaluation {eval_id!r}")
    targets = [e for e in evs.values() if e["state"] in ("queued", "running")
               and (eval_id is None or e["eval_id"] == eval_id)]
    for e in targets:
        # The event first: the worker then knows the job's death was asked for, not a failure.
        rd.event("eval_cancelled", eval_id=e["eval_id"], checkpoint=e["checkpoint"], task=e["task"],
                 gpus=e["gpus"] if e["state"] == "running" else [], was=e["state"])
        if e["state"] == "running" and isinstance(e.get("pid"), int):
            _kill_group(e["pid"])
    return [e["eval_id"] for e in targets]


def _kill_group(pgid: int, grace: float = 5.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM a process group, SIGKILL whatever is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        if proc is not None:
            proc.poll()  # reap our child: a zombie leader keeps the group "alive"
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- command lines --------------------------------------------------------------------------------
def _python() -> str:
    return sys.executable or "python"


def _lighteval_exe() -> str:
    beside = Path(_python()).parent / "lighteval"
    return str(beside) if beside.exists() else "lighteval"


def merged_dir(rd: RunDir, step: int) -> Path:
    return rd.evals / "merged" / f"checkpoint-{step}"


def output_dir(rd: RunDir, checkpoint: int | str, task: str) -> Path:
    return rd.evals / _label(checkpoint) / _task_slug(task)


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
    root = str(Path(__file__).resolve().parents[1])
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


# --- models ---------------------------------------------------------------------------------------
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
        from tina_core.recipe import load_recipe, resolve_base_model

        return resolve_base_model(load_recipe(rd.recipe), home)
    raise EvalError(f"cannot tell the base model of run {rd.run_id}: no checkpoint names one and "
                    f"{rd.recipe} is missing")


def _adapter_stamp(adapter: Path) -> dict[str, Any]:
    f = adapter / "adapter_model.safetensors"
    if not f.exists():
        f = adapter / "adapter_model.bin"
    st = f.stat() if f.exists() else None
    return {"adapter": str(adapter), "file": f.name, "size": st.st_size if st else None,
            "mtime": st.st_mtime if st else None}


def check_safetensors(path: Path) -> None:
    """A cheap look at a safetensors file's header (8-byte length + JSON), so a truncated or
    corrupt adapter is named before torch is even imported."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            size = path.stat().st_size
            if not 0 < n <= size - 8:
                raise EvalError(f"{path} is corrupt: header length {n} does not fit a {size}-byte file")
            json.loads(f.read(n))
    except ValueError:
        raise EvalError(f"{path} is corrupt: its header is not JSON") from None


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike, *, base: str | None = None,
                  dtype: str = "bfloat16") -> Path:
    """Merge a LoRA checkpoint into its base model and save it with the base tokenizer (Tina's
    merge_post_trained_models.py). Reuses ``out`` when it was completed from this very adapter."""
    adapter, out = Path(adapter), Path(out)
    stamp = _adapter_stamp(adapter)
    if read_json(out / MERGED_MARK) == {**stamp, "dtype": dtype}:
        print(f"merged model up to date: {out}", flush=True)
        return out
    cfg = read_json(adapter / "adapter_config.json")
    if not isinstance(cfg, dict):
        raise EvalError(f"{adapter / 'adapter_config.json'}: missing or not valid JSON")
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise EvalError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path")
    if _looks_local(base) and not Path(base).expanduser().exists():
        raise EvalError(f"base model not found: {base} (named by {adapter / 'adapter_config.json'})")
    if stamp["file"].endswith(".safetensors") and stamp["size"] is not None:
        check_safetensors(adapter / stamp["file"])

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"merging {adapter} into {base} ({dtype})", flush=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
    write_json_atomic(tmp / MERGED_MARK, {**stamp, "dtype": dtype})
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    print(f"merged in {time.time() - t0:.1f}s -> {out}", flush=True)
    return out


# --- lighteval ------------------------------------------------------------------------------------
def training_system_prompt(recipe_path: str | os.PathLike | None) -> str | None:
    """The system prompt a run trained with (from its recipe snapshot), None for none."""
    if recipe_path is None or not Path(recipe_path).exists():
        return None
    from tina_core.prompts import system_prompt_for
    from tina_core.recipe import load_recipe

    r = load_recipe(recipe_path)
    return system_prompt_for(str(r.get("dataset.name") or ""), r.get("dataset.system_prompt"))


def run_lighteval_cpu(model: str, task: str, out: str | os.PathLike, *, recipe: str | os.PathLike | None = None,
                      max_new_tokens: int | None = None, max_samples: int | None = None) -> None:
    """lighteval's transformers backend through its Python API, offline, on a registry limited to
    tina's custom task module (its CLI would import every built-in task, some need the network).
    The prompt carries the system prompt the run trained with (``recipe``): a small model knows
    no other; Tina's GPU evaluation, like the paper's, uses none."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import tina_core.eval_tasks as tasks_module
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.model_input import GenerationParameters
    from lighteval.models.transformers.transformers_model import TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
    from lighteval.tasks import registry

    known = {c.name for c in tasks_module.TASKS_TABLE}
    if task not in known:
        raise EvalError(f"task {task!r} is not in {EVAL_TASKS_FILE.name} ({', '.join(sorted(known))}); "
                        "lighteval's built-in tasks run on GPU")
    registry.Registry.load_all_task_configs = staticmethod(
        lambda custom_tasks=None, load_multilingual=False: registry.Registry._extract_configs(tasks_module))
    out = Path(out)
    s = CPU_SETTINGS
    tracker = EvaluationTracker(output_dir=str(out), save_details=True)
    params = PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=tasks_module,
                                max_samples=max_samples)
    config = TransformersModelConfig(
        model_name=model, device="cpu", dtype=s["dtype"], batch_size=s["batch_size"],
        cache_dir=str(out / "cache"), system_prompt=training_system_prompt(recipe),
        generation_parameters=GenerationParameters(temperature=s["temperature"], seed=42,
                                                   max_new_tokens=max_new_tokens or s["max_new_tokens"]))
    pipeline = Pipeline(tasks=f"{task}|0", pipeline_parameters=params, evaluation_tracker=tracker,
                        model_config=config)
    pipeline.evaluate()
    pipeline.show_results()
    pipeline.save_and_push_results()


# Preference for the score a task is summarised by: Tina's extractive match, then lighteval 0.13's
# pass@1 spellings (pass@k:k=1, pass@k:k=1&n=1, gpqa_pass@k:k=1, math_pass@1:1_samples...).
_PRIMARY = [r"^extractive_match$", r"^([a-z_]+_)?pass@k:k=1(&n=1)?$", r"pass@1\b", r"pass@k:k=1", r"^avg@n",
            r"pass@", r"acc", r"match"]


def primary_metric(metrics: dict[str, Any]) -> str:
    names = sorted(k for k, v in metrics.items()
                   if not k.endswith("_stderr") and isinstance(v, (int, float)) and not isinstance(v, bool))
    if not names:
        raise EvalError(f"no numeric metric in lighteval's results ({sorted(metrics)})")
    for pat in _PRIMARY:
        for n in names:
            if re.search(pat, n):
                return n
    return names[0]


def parse_results(out: str | os.PathLike, task: str, since: float = 0.0) -> dict[str, Any]:
    """Score of ``task`` from lighteval's newest ``results/<model>/results_<date>.json`` under
    ``out`` written after ``since``: ``{score, metric, metrics, results_path, details_path}``."""
    out = Path(out)
    files = [p for p in out.glob("results/**/results_*.json") if p.stat().st_mtime >= since - 1]
    if not files:
        raise EvalError(f"lighteval wrote no results file under {out / 'results'}")
    path = max(files, key=lambda p: p.stat().st_mtime)
    try:
        results = json.loads(path.read_text())["results"]
    except (ValueError, KeyError, TypeError) as e:
        raise EvalError(f"{path}: not a lighteval results file ({e})") from None
    lname = lighteval_task(task)
    keys = [k for k in results if k != "all"]
    # 0.13 keys results by "task|fewshot"; older versions by "suite|task|fewshot".
    match = [k for k in keys if lname in k.split("|")] or keys
    if not match:
        raise EvalError(f"{path}: no results for task {lname!r} (keys: {sorted(results)})")
    metrics = {k: v for k, v in results[match[0]].items() if isinstance(v, (int, float))}
    metric = primary_metric(metrics)
    details = [p for p in out.glob("details/**/*.parquet") if p.stat().st_mtime >= since - 1]
    return {"score": float(metrics[metric]), "metric": metric, "metrics": metrics, "results_path": str(path),
            "details_path": str(max(details, key=lambda p: p.stat().st_mtime)) if details else None}


# --- the job: one evaluation ----------------------------------------------------------------------
def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    # Progress bars redraw with \r: keep each line's last state.
    rows = [r.split("\r")[-1].rstrip()[:400] for r in text.split("\n")]
    return redact_text("\n".join([r for r in rows if r.strip()][-lines:]))


def log_path(rd: RunDir, eval_id: str) -> Path:
    return rd.evals / f"{eval_id}.log"


def _heartbeat(path: Path) -> threading.Event:
    """Touch the job's log every JOB_HEARTBEAT_S from a daemon thread, so that its mtime says when
    the job was last alive even through an hour of silent vLLM generation (see last_alive).
    Setting the returned event stops it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                os.utime(path)
            except OSError:
                pass
            stop.wait(JOB_HEARTBEAT_S)

    threading.Thread(target=beat, name="tina-eval-heartbeat", daemon=True).start()
    return stop


def last_alive(rd: RunDir, ev: dict[str, Any], now: float | None = None) -> float:
    """When a running evaluation's job was last alive: now while its process lives, else its log's
    last write (the heartbeat), never before it started. A dead worker's evaluation costs up to
    there, not up to whenever a later worker reaps it."""
    now = time.time() if now is None else now
    start = float(ev.get("started_ts") or now)
    if _pid_alive(ev.get("pid")):
        return now
    try:
        seen = log_path(rd, ev["eval_id"]).stat().st_mtime
    except OSError:
        return start
    return max(start, min(seen, now))


def _model_for(home: Path, rd: RunDir, ev: dict[str, Any]) -> str:
    if ev["checkpoint"] == "base":
        base = base_model(home, rd)
        if _looks_local(base) and not Path(base).expanduser().exists():
            raise EvalError(f"base model not found: {base}")
        return base
    step = int(ev["checkpoint"])
    ckpt = rd.checkpoint_path(step)
    if not ckpt.is_dir():
        raise EvalError(f"checkpoint-{step} is missing ({ckpt})")
    if not (ckpt / CHECKPOINT_COMPLETE).exists():
        raise EvalError(f"checkpoint-{step} is incomplete: no {CHECKPOINT_COMPLETE} (it was not fully saved)")
    dtype = GPU_SETTINGS["dtype"] if ev["gpus"] else CPU_SETTINGS["dtype"]
    try:
        return str(merge_adapter(ckpt, merged_dir(rd, step), dtype=dtype))
    except Exception as e:
        what = str(e) if isinstance(e, EvalError) else f"{type(e).__name__}: {e}"
        raise EvalError(f"merging checkpoint-{step} failed: {what}") from e


def run_job(home: Path, rd: RunDir, eval_id: str) -> int:
    """Evaluate one queued evaluation; records eval_finished or eval_failed. Output goes to the
    caller's stdout (the worker points it at RUN/evals/<eval_id>.log)."""
    ev = evals_of(rd).get(eval_id)
    if ev is None:
        print(f"no evaluation {eval_id} in {rd.events}", file=sys.stderr)
        return 2
    if ev["state"] not in ("queued", "running"):
        print(f"evaluation {eval_id} is already {ev['state']}", flush=True)
        return 0
    gpus, task = ev["gpus"], ev["task"]
    common = dict(eval_id=eval_id, checkpoint=ev["checkpoint"], task=task, gpus=gpus, pid=os.getpid())
    _heartbeat(log_path(rd, eval_id))
    t0 = time.time()
    print(f"evaluation {eval_id}: run {rd.run_id}, {_label(ev['checkpoint'])}, task {task}, "
          f"{'GPUs ' + ','.join(map(str, gpus)) if gpus else 'CPU'}", flush=True)
    try:
        model = _model_for(home, rd, ev)
        out = output_dir(rd, ev["checkpoint"], task)
        out.mkdir(parents=True, exist_ok=True)
        if gpus:
            cmd = vllm_command(model, task, out, gpus)
            print("$ " + shlex.join(cmd), flush=True)
            rc = subprocess.call(cmd, env={**os.environ, **_gpu_env(gpus)})
            if rc != 0:
                raise EvalError(f"lighteval exited with code {rc}" if rc > 0 else f"lighteval killed by signal {-rc}")
        else:
            max_samples = int(os.environ.get("TINA_EVAL_MAX_SAMPLES", "0")) or None
            try:
                run_lighteval_cpu(model, lighteval_task(task), out, recipe=rd.recipe, max_samples=max_samples)
            except EvalError:
                raise
            except Exception as e:  # lighteval runs in this process on CPU: its crash is ours to name
                traceback.print_exc()
                raise EvalError(f"lighteval crashed: {type(e).__name__}: {e}") from e
        res = parse_results(out, task, since=t0)
    except Exception as e:
        if not isinstance(e, EvalError):
            traceback.print_exc()
        msg = str(e) if isinstance(e, EvalError) else f"{type(e).__name__}: {e}"
        print(f"evaluation failed: {msg}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        rd.event("eval_failed", **common, reason=f"{msg}\n--- last lines of {log_path(rd, eval_id).name} ---\n"
                 + log_tail(log_path(rd, eval_id)))
        return 1
    print(f"{task}: {res['metric']} = {res['score']:.4f} ({time.time() - t0:.1f}s)", flush=True)
    rd.event("eval_finished", **common, score=res["score"], metric=res["metric"], metrics=res["metrics"],
             scores={task: res["score"]}, results_path=res["results_path"], details_path=res["details_path"],
             model=model, seconds=round(time.time() - t0, 3))
    return 0


# --- the worker -----------------------------------------------------------------------------------
def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        import psutil

        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and "tina_core.evaluate" in " ".join(p.cmdline())
    except Exception:
        return False


def training_holds_gpus(rd: RunDir) -> bool:
    """Whether the run's own training is running on GPUs right now (heartbeat fresh, an attempt
    started and not exited)."""
    if int(rd.info().get("gpu_count") or 0) <= 0:
        return False
    from tina_core.supervisor import liveness

    if liveness(rd).get("state") not in ("running", "stopping"):
        return False
    last = [e.get("event") for e in rd.read_events() if e.get("event") in ("attempt_started", "attempt_exited")]
    return bool(last) and last[-1] == "attempt_started"


def _timeout_s(ev: dict[str, Any]) -> float:
    default = 6 * 3600 if ev["gpus"] else 1800
    try:
        return float(os.environ.get("TINA_EVAL_TIMEOUT_S") or default)
    except ValueError:
        return default


class _Lock:
    """The workspace's worker lock (fcntl, released by the kernel if the worker dies)."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / WORKER_LOCK
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def worker_running(home: str | os.PathLike | None = None) -> bool:
    lock = _Lock(tina_home(home))
    if lock.acquire():
        lock.release()
        return False
    return True


def ensure_worker(home: str | os.PathLike | None = None) -> bool:
    """Start the detached worker unless one runs; True when one was started."""
    h = tina_home(home)
    if worker_running(h):
        return False
    with open(h / WORKER_LOG, "ab") as log:
        subprocess.Popen([_python(), "-m", "tina_core.evaluate", "worker", str(h)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                         cwd=str(h), env=_child_env())
    return True


def _wlog(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


def _run_one(home: Path, rd: RunDir, ev: dict[str, Any]) -> None:
    eid = ev["eval_id"]
    log = log_path(rd, eid)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = _child_env(**_gpu_env(ev["gpus"]), PYTHONUNBUFFERED="1")
    with open(log, "ab") as f:
        proc = subprocess.Popen([_python(), "-m", "tina_core.evaluate", "job", str(home), rd.run_id, eid],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=str(rd.path))
    common = dict(eval_id=eid, checkpoint=ev["checkpoint"], task=ev["task"], gpus=ev["gpus"], pid=proc.pid)
    rd.event("eval_started", **common, device="gpu" if ev["gpus"] else "cpu", log=str(log))
    _wlog(f"started {rd.run_id}/{eid} pid {proc.pid}")
    timeout = _timeout_s(ev)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, proc=proc)
        proc.wait()
        if evals_of(rd)[eid]["state"] == "running":
            rd.event("eval_failed", **common, reason=f"timed out after {timeout:g}s\n--- last lines of {log.name} ---\n"
                     + log_tail(log))
        _wlog(f"timed out {rd.run_id}/{eid}")
        return
    _kill_group(proc.pid, grace=0.5)  # anything the job left behind in its group
    if evals_of(rd)[eid]["state"] == "running":  # the job died before recording its end
        why = f"exited with code {rc}" if rc >= 0 else f"killed by signal {signal.Signals(-rc).name}"
        hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
        rd.event("eval_failed", **common, reason=f"evaluation process {why}{hint}\n--- last lines of {log.name} ---\n"
                 + log_tail(log))
    _wlog(f"ended {rd.run_id}/{eid} rc {rc} -> {evals_of(rd)[eid]['state']}")


def _reap_orphans(home: Path, items: list[dict[str, Any]]) -> bool:
    """Running evaluations left by a previous worker: wait for a live job, fail a vanished one.
    Returns True if one is still alive (the GPUs are not free)."""
    alive = False
    for ev in items:
        if ev["state"] != "running":
            continue
        rd = RunDir(tina_home(home) / "runs" / ev["run_id"])
        if _pid_alive(ev.get("pid")):
            alive = True
            continue
        if evals_of(rd).get(ev["eval_id"], {}).get("state") == "running":
            rd.event("eval_failed", eval_id=ev["eval_id"], checkpoint=ev["checkpoint"], task=ev["task"],
                     gpus=ev["gpus"], pid=ev.get("pid"), end_ts=last_alive(rd, ev),
                     reason="evaluation process ended without recording a result (its worker stopped)\n"
                            + log_tail(log_path(rd, ev["eval_id"])))
    return alive


def worker_main(home: str | os.PathLike) -> int:
    h = tina_home(home)
    lock = _Lock(h)
    if not lock.acquire():
        return 0
    _wlog("worker up")
    try:
        while True:
            items = eval_queue(h)
            if _reap_orphans(h, items):
                time.sleep(BLOCKED_POLL_S)
                continue
            pending = [e for e in items if e["state"] == "queued"]
            if not pending:
                # Release, then look once more: an evaluation queued while we were deciding to
                # exit saw the lock held and started no worker.
                lock.release()
                if not any(e["state"] == "queued" for e in eval_queue(h)) or not lock.acquire():
                    break
                continue
            for ev in pending:
                rd = RunDir(h / "runs" / ev["run_id"])
                if ev["gpus"] and not ev["gpus_explicit"] and training_holds_gpus(rd):
                    continue
                _run_one(h, rd, ev)
                break
            else:
                time.sleep(BLOCKED_POLL_S)  # every queued GPU evaluation waits for its training
    finally:
        lock.release()
        _wlog("worker exits: queue empty")
    return 0


# --- CLI ------------------------------------------------------------------------------------------
def _fmt_ckpt(c: Any) -> str:
    return _label(c)


def wait_for(home: Path, rd: RunDir, ids: list[str], *, poll: float = 1.0, stream=sys.stderr) -> dict[str, dict]:
    """Block until every evaluation in ``ids`` has ended; reports each end as it happens."""
    seen: dict[str, str] = {}
    while True:
        evs = evals_of(rd)
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
             dry_run: bool = False, wait: bool = False, gpus: str | None = None, cancel: bool = False) -> int:
    h = tina_home(home)
    rd = find_run(h, run_ref)
    if cancel:
        done = cancel_eval(h, rd.run_id)
        print("\n".join(f"cancelled {e}" for e in done) if done else f"no queued or running evaluation of {rd.run_id}")
        return 0
    task_list = [t for t in (tasks or "").split(",") if t.strip()] or None
    if dry_run:
        explicit = _parse_gpus(gpus)
        use_gpus = explicit if explicit is not None else _run_gpus(rd)
        names = [task_name(t) for t in task_list] if task_list else (list(TINA_TASKS) if use_gpus else ["arith"])
        for t in names:
            _check_backend(t, use_gpus)
        for ckpt in resolve_checkpoints(h, rd, checkpoint):
            print(f"# {rd.run_id} {_label(ckpt)}")
            merge_printed = False
            for t in names:
                for line in plan_commands(h, rd, ckpt, t, use_gpus):
                    if " merge " in line:
                        if merge_printed:
                            continue
                        merge_printed = True
                    print(line)
        return 0
    ids = queue_eval(h, rd.run_id, checkpoint, task_list, gpus=gpus)
    evs = evals_of(rd)
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tina_core.evaluate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run the workspace's evaluation queue until it is empty")
    w.add_argument("home")
    j = sub.add_parser("job", help="run one queued evaluation")
    j.add_argument("home")
    j.add_argument("run")
    j.add_argument("eval_id")
    m = sub.add_parser("merge", help="merge a LoRA checkpoint into its base model")
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--base", default=None, help="base model (default: adapter_config.json's)")
    m.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    c = sub.add_parser("lighteval-cpu", help="lighteval's transformers backend on CPU, offline")
    c.add_argument("--model", required=True)
    c.add_argument("--task", required=True, help="a task of eval_tasks.py, e.g. tina_arith")
    c.add_argument("--output-dir", required=True)
    c.add_argument("--recipe", default=None, help="the run's recipe: its system prompt is used")
    c.add_argument("--max-new-tokens", type=int, default=None)
    c.add_argument("--max-samples", type=int, default=None)
    a = p.parse_args(argv)
    try:
        if a.cmd == "worker":
            return worker_main(a.home)
        if a.cmd == "job":
            h = tina_home(a.home)
            rc = run_job(h, RunDir(h / "runs" / a.run), a.eval_id)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)  # the result is recorded: skip seconds of torch/lighteval teardown
        if a.cmd == "merge":
            merge_adapter(a.adapter, a.out, base=a.base, dtype=a.dtype)
            return 0
        run_lighteval_cpu(a.model, a.task, a.output_dir, recipe=a.recipe, max_new_tokens=a.max_new_tokens,
                          max_samples=a.max_samples)
        return 0
    except (EvalError, TinaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
