"""The job: one evaluation, ``python -m tina_core.evaluate job HOME RUN EVAL_ID``.

Merges the LoRA adapter into its base model (cached per checkpoint), runs lighteval through its
Python API with a registry limited to :mod:`tina_core.evaluate.lighteval_tasks` (lighteval's CLI
imports every built-in task module, some of which need the network), and parses the results into
``eval_finished`` (or ``eval_failed`` with the reason). Generation is vLLM's, through tina's model
class (:mod:`tina_core.evaluate.vllm_model`), on GPUs and wherever vLLM's CPU build is installed;
else lighteval's transformers backend on CPU (``tasks.eval_backend``).

Heavy: torch, peft, transformers and lighteval are imported here, inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tina_core import runstate
from tina_core.evaluate.commands import looks_local, base_model
from tina_core.evaluate.tasks import (CPU_TASKS, EVAL_TASKS_FILE, TRAINING_PROMPT_TASKS, TRANSFORMERS_SETTINGS,
                                      EvalError, checkpoint_label, eval_backend, lighteval_task, log_tail, merge_dtype,
                                      merged_dir, output_dir, task_name)
from tina_core.evaluate.vllm_model import devices_for
from tina_core.events import Kind
from tina_core.rundir import CHECKPOINT_COMPLETE, RunDir, read_json, write_json_atomic

MERGED_MARK = "tina-merged.json"
JOB_HEARTBEAT_S = 5.0  # a job touches its log this often: the log's mtime is its last sign of life


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
    if looks_local(base) and not Path(base).expanduser().exists():
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


def training_system_prompt(recipe_path: str | os.PathLike | None) -> str | None:
    """The system prompt a run trained with (from its recipe snapshot), None for none."""
    if recipe_path is None or not Path(recipe_path).exists():
        return None
    from tina_core.recipe.prompts import system_prompt_for
    from tina_core.recipe.loader import load_recipe

    r = load_recipe(recipe_path)
    return system_prompt_for(str(r.get("dataset.name") or ""), r.get("dataset.system_prompt"))


def pipeline_parameters(tasks_module: Any, max_samples: int | None = None):
    """lighteval's pipeline parameters for tina's tasks. Tina's lighteval scored the whole completion;
    0.13 cuts ``<think>...</think>`` out first unless told not to (``remove_reasoning_tags``)."""
    from lighteval.pipeline import ParallelismManager, PipelineParameters

    return PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=tasks_module,
                              max_samples=max_samples, remove_reasoning_tags=False)


def run_lighteval(model: str, task: str, out: str | os.PathLike, *, backend: str, devices: list[str],
                  recipe: str | os.PathLike | None = None, max_samples: int | None = None) -> None:
    """lighteval through its Python API on a registry limited to tina's task module, generating
    with vLLM (``backend="vllm"``: one engine per device, ``vllm_model.devices_for(gpus)``) or with
    lighteval's transformers backend on CPU (``devices`` unused), with Tina's settings. The tiny
    benchmark's prompt carries the system prompt the run trained with (``recipe``): a small model
    knows no other; Tina's benchmarks, like the paper's, have none."""
    name = task_name(task)
    if name in CPU_TASKS:  # shipped data: no hub needed, and none reachable on a CPU box
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import tina_core.evaluate.lighteval_tasks as tasks_module
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.model_input import GenerationParameters
    from lighteval.models.transformers.transformers_model import TransformersModelConfig
    from lighteval.pipeline import Pipeline
    from lighteval.tasks import registry

    lname = lighteval_task(name)
    known = {c.name for c in tasks_module.TASKS_TABLE}
    if lname not in known:
        raise EvalError(f"task {lname!r} is not in {EVAL_TASKS_FILE.name} ({', '.join(sorted(known))})")
    registry.Registry.load_all_task_configs = staticmethod(
        lambda custom_tasks=None, load_multilingual=False: registry.Registry._extract_configs(tasks_module))
    out = Path(out)
    system_prompt = training_system_prompt(recipe) if name in TRAINING_PROMPT_TASKS else None
    tracker = EvaluationTracker(output_dir=str(out), save_details=True)
    params = pipeline_parameters(tasks_module, max_samples)
    if backend == "vllm":
        from tina_core.evaluate.vllm_model import build_model

        lighteval_model = build_model(model, devices, work=out / "engines", cache_dir=out / "cache",
                                      system_prompt=system_prompt)
        pipeline = Pipeline(tasks=f"{lname}|0", pipeline_parameters=params, evaluation_tracker=tracker,
                            model=lighteval_model)
    else:
        s = TRANSFORMERS_SETTINGS
        config = TransformersModelConfig(
            model_name=model, device="cpu", dtype=s["dtype"], batch_size=s["batch_size"],
            cache_dir=str(out / "cache"), system_prompt=system_prompt,
            generation_parameters=GenerationParameters(temperature=s["temperature"], seed=42,
                                                       max_new_tokens=s["max_new_tokens"]))
        pipeline = Pipeline(tasks=f"{lname}|0", pipeline_parameters=params, evaluation_tracker=tracker,
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


def _model_for(home: Path, rd: RunDir, ev: dict[str, Any], backend: str) -> str:
    if ev["checkpoint"] == "base":
        base = base_model(home, rd)
        if looks_local(base) and not Path(base).expanduser().exists():
            raise EvalError(f"base model not found: {base}")
        return base
    step = int(ev["checkpoint"])
    ckpt = rd.checkpoint_path(step)
    if not ckpt.is_dir():
        raise EvalError(f"checkpoint-{step} is missing ({ckpt})")
    if rd.checkpoint_kind(step) is None:  # a pinned snapshot is an adapter like any other
        raise EvalError(f"checkpoint-{step} is incomplete: no {CHECKPOINT_COMPLETE} (it was not fully saved)")
    try:
        return str(merge_adapter(ckpt, merged_dir(rd, step), dtype=merge_dtype(backend)))
    except Exception as e:
        what = str(e) if isinstance(e, EvalError) else f"{type(e).__name__}: {e}"
        raise EvalError(f"merging checkpoint-{step} failed: {what}") from e


def run_job(home: Path, rd: RunDir, eval_id: str) -> int:
    """Evaluate one queued evaluation; records eval_finished or eval_failed. Output goes to the
    caller's stdout (the worker points it at RUN/evals/<eval_id>.log)."""
    ev = runstate.evaluations(rd).get(eval_id)
    if ev is None:
        print(f"no evaluation {eval_id} in {rd.events}", file=sys.stderr)
        return 2
    if ev["state"] not in ("queued", "running"):
        print(f"evaluation {eval_id} is already {ev['state']}", flush=True)
        return 0
    gpus, task = ev["gpus"], ev["task"]
    backend = eval_backend(gpus)
    common = dict(eval_id=eval_id, checkpoint=ev["checkpoint"], task=task, gpus=gpus, pid=os.getpid())
    _heartbeat(rd.eval_log(eval_id))
    t0 = time.time()
    print(f"evaluation {eval_id}: run {rd.run_id}, {checkpoint_label(ev['checkpoint'])}, task {task}, "
          f"{'GPUs ' + ','.join(map(str, gpus)) if gpus else 'CPU'}, {backend}", flush=True)
    try:
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise EvalError(f"vLLM is not installed in {sys.executable} (make setup-gpu installs the GPU set)")
        model = _model_for(home, rd, ev, backend)
        out = output_dir(rd, ev["checkpoint"], task)
        out.mkdir(parents=True, exist_ok=True)
        max_samples = int(os.environ.get("TINA_EVAL_MAX_SAMPLES", "0")) or None
        try:
            run_lighteval(model, task, out, backend=backend, devices=devices_for(gpus), recipe=rd.recipe,
                          max_samples=max_samples)
        except EvalError:
            raise
        except Exception as e:  # lighteval runs in this process: its crash is ours to name
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
        rd.event(Kind.EVAL_FAILED, **common, reason=f"{msg}\n--- last lines of {rd.eval_log(eval_id).name} ---\n"
                 + log_tail(rd.eval_log(eval_id)))
        return 1
    print(f"{task}: {res['metric']} = {res['score']:.4f} ({time.time() - t0:.1f}s)", flush=True)
    rd.event(Kind.EVAL_FINISHED, **common, backend=backend, score=res["score"], metric=res["metric"], metrics=res["metrics"],
             scores={task: res["score"]}, results_path=res["results_path"], details_path=res["details_path"],
             model=model, seconds=round(time.time() - t0, 3))
    return 0


