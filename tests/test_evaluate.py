"""Evaluation: queue, worker, merge, lighteval on CPU for real, result parsing, failures, cancel."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tina_core import evaluate
from tina_core.rundir import CHECKPOINT_COMPLETE, RunDir, TinaError, create_run_dir, write_json_atomic

REPO = Path(__file__).resolve().parents[1]


# --- helpers ----------------------------------------------------------------------------------------
def _make_run(home: Path, *, gpu_count: int = 0, recipe: Path | None = None, name: str = "ev") -> RunDir:
    rd = create_run_dir(home, name)
    write_json_atomic(rd.run_json, {"run_id": rd.run_id, "name": name, "created": time.time(), "gpu_count": gpu_count,
                                    "device": "cpu" if not gpu_count else "NVIDIA L40S"})
    if recipe is not None:
        shutil.copy(recipe, rd.recipe)
    return rd


def _fake_checkpoint(rd: RunDir, step: int, base: str, complete: bool = True) -> Path:
    """A checkpoint directory as the trainer leaves it (adapter config naming its base model)."""
    ck = rd.checkpoint_path(step)
    ck.mkdir(parents=True)
    (ck / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    if complete:
        (ck / CHECKPOINT_COMPLETE).write_text("{}")
    return ck


def _wait_states(rd: RunDir, ids: list[str], states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        evs = evaluate.evals_of(rd)
        if all(evs[i]["state"] in states for i in ids):
            return evs
        time.sleep(0.3)
    log = "\n".join(p.read_text()[-3000:] for p in rd.evals.glob("*.log"))
    raise AssertionError(f"evaluations {ids} not {states} after {timeout}s: "
                         f"{ {i: evaluate.evals_of(rd)[i]['state'] for i in ids} }\n{log}")


def _events(rd: RunDir, kind: str) -> list[dict]:
    return [e for e in rd.read_events() if e.get("event") == kind]


# --- versions: lighteval 0.13 needs the older math-verify -------------------------------------------
def test_lighteval_and_math_verify_work_together():
    from importlib.metadata import version

    import lighteval  # noqa: F401
    import math_verify
    from lighteval.metrics.metrics import Metrics

    assert version("lighteval") == "0.13.0"
    assert version("math-verify") == "0.5.2"
    assert version("latex2sympy2_extended") == "1.0.6"
    assert int(version("xxhash").split(".")[0]) < 4
    assert math_verify.verify(math_verify.parse("$\\frac{1}{2}$"), math_verify.parse("The answer is \\boxed{0.5}"))
    # lighteval's own extractive match (the metric Tina's scores come from) runs on this stack.
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.requests import Doc

    doc = Doc(query="What is 3 + 4?", choices=["7"], gold_index=0)
    fn = Metrics.expr_gold_metric.value.sample_level_fn
    assert fn.compute(doc=doc, model_response=ModelResponse(text=["so \\boxed{7}"])) == 1.0
    assert fn.compute(doc=doc, model_response=ModelResponse(text=["so \\boxed{8}"])) == 0.0


def test_custom_task_module_is_light_and_defines_the_missing_tasks():
    probe = "import sys, tina_core.eval_tasks, tina_core.evaluate; print('lighteval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # listing tina's modules stays light
    from tina_core import eval_tasks

    assert [t.name for t in eval_tasks.TASKS_TABLE] == ["tina_amc23", "tina_minerva", "tina_arith"]
    assert eval_tasks.TASKS_TABLE[2].hf_repo == str(eval_tasks.TINY_EVAL_DIR)
    rows = [json.loads(line) for line in (evaluate.EVAL_TASKS_FILE.parent / "data/tiny_eval/test.jsonl").open()]
    assert 30 <= len(rows) <= 50 and len({r["problem"] for r in rows}) == len(rows)
    import math_verify

    for r in rows:  # every gold parses, and the problem's own sum verifies against it
        a, b = (int(x) for x in r["problem"].removeprefix("What is ").rstrip("?").split(" + "))
        assert math_verify.verify(math_verify.parse(f"${r['answer']}$"), math_verify.parse(f"${a + b}$"))


# --- command lines ------------------------------------------------------------------------------------
def test_dry_run_prints_merge_and_the_six_lighteval_commands(tmp_path, capsys):
    rd = _make_run(tmp_path, gpu_count=2, recipe=REPO / "recipes/tina/open_rs2.yaml")
    _fake_checkpoint(rd, 450, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert evaluate.cli_eval(tmp_path, rd.run_id, checkpoint="450", dry_run=True) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    merges = [ln for ln in lines if " merge " in ln]
    runs = [ln for ln in lines if " vllm " in ln]
    assert len(merges) == 1 and len(runs) == 6
    merge = shlex.split(merges[0])
    assert merge[merge.index("--adapter") + 1] == str(rd.checkpoint_path(450))
    assert merge[merge.index("--dtype") + 1] == "bfloat16"
    specs = []
    for ln in runs:
        argv = shlex.split(ln)
        assert argv[0] == "CUDA_VISIBLE_DEVICES=0,1" and argv[1].endswith("lighteval") and argv[2] == "vllm"
        args = argv[3]
        assert args.startswith(f"model_name={rd.evals / 'merged' / 'checkpoint-450'},dtype=bfloat16,")
        for part in ("data_parallel_size=2", "max_model_length=32768", "gpu_memory_utilization=0.7",
                     "generation_parameters={max_new_tokens:32768,temperature:0.6,top_p:0.95}"):
            assert part in args
        assert argv[argv.index("--custom-tasks") + 1] == str(evaluate.EVAL_TASKS_FILE)
        assert "--save-details" in argv
        specs.append(argv[4])
        assert argv[argv.index("--output-dir") + 1].startswith(str(rd.evals / "checkpoint-450"))
    assert specs == ["aime24|0", "aime25|0", "tina_amc23|0", "math_500|0", "tina_minerva|0", "gpqa:diamond|0"]
    # lighteval itself accepts the model arguments as printed
    from lighteval.models.vllm.vllm_model import VLLMModelConfig

    cfg = VLLMModelConfig.from_args(shlex.split(runs[0])[3])
    assert cfg.data_parallel_size == 2 and cfg.generation_parameters.temperature == 0.6
    assert not _events(rd, "eval_queued")  # a dry run queues nothing


def test_dry_run_base_and_explicit_gpus_through_the_cli(tmp_path):
    rd = _make_run(tmp_path, gpu_count=2)
    _fake_checkpoint(rd, 50, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(tmp_path), "eval", rd.run_id,
                          "--checkpoint", "base", "--tasks", "aime24,amc23", "--gpus", "1", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if " vllm " in ln]
    assert len(lines) == 2 and " merge " not in out.stdout
    assert all(ln.startswith("CUDA_VISIBLE_DEVICES=1 ") for ln in lines)
    assert "model_name=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B,dtype=bfloat16,data_parallel_size=1," in lines[0]


def test_bad_requests_are_clear_errors(tmp_path):
    rd = _make_run(tmp_path)
    _fake_checkpoint(rd, 10, "/nowhere")
    with pytest.raises(TinaError, match="unknown evaluation task 'aime2024'.*aime24"):
        evaluate.queue_eval(tmp_path, rd.run_id, 10, ["aime2024"], start_worker=False)
    with pytest.raises(TinaError, match=r"no checkpoint-99; complete checkpoints: \[10\]"):
        evaluate.queue_eval(tmp_path, rd.run_id, 99, ["arith"], start_worker=False)
    with pytest.raises(TinaError, match="aime24.*no GPUs.*--gpus"):
        evaluate.queue_eval(tmp_path, rd.run_id, 10, ["aime24"], start_worker=False)
    with pytest.raises(TinaError, match="--gpus: expected comma-separated GPU ids"):
        evaluate.queue_eval(tmp_path, rd.run_id, 10, ["arith"], gpus="first", start_worker=False)
    with pytest.raises(TinaError, match="--checkpoint: expected a step N, recommended, all or base"):
        evaluate.cli_eval(tmp_path, rd.run_id, checkpoint="best")
    assert not _events(rd, "eval_queued")  # nothing queued by a bad request


# --- parsing lighteval 0.13's results ----------------------------------------------------------------
@pytest.mark.parametrize("task,entry,metric", [
    ("aime24", {"pass@k:k=1": 0.3, "pass@k:k=1_stderr": 0.08, "avg@n:n=1": 0.3, "avg@n:n=1_stderr": 0.08}, "pass@k:k=1"),
    ("math_500", {"pass@k:k=1&n=1": 0.8, "pass@k:k=1&n=1_stderr": 0.02}, "pass@k:k=1&n=1"),
    ("gpqa:diamond", {"gpqa_pass@k:k=1": 0.35, "gpqa_pass@k:k=1_stderr": 0.03}, "gpqa_pass@k:k=1"),
    ("amc23", {"extractive_match": 0.6, "extractive_match_stderr": 0.07}, "extractive_match"),
])
def test_parse_results_picks_the_primary_metric(tmp_path, task, entry, metric):
    lname = evaluate.lighteval_task(task)
    res = tmp_path / "results" / "w" / "merged" / "results_2025-01-01T00-00-00.json"
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps({"results": {f"{lname}|0": entry, "all": entry}, "config_general": {}}))
    det = tmp_path / "details" / "w" / "merged" / "2025-01-01T00-00-00" / f"details_{lname}|0_2025.parquet"
    det.parent.mkdir(parents=True)
    det.write_bytes(b"PAR1")
    got = evaluate.parse_results(tmp_path, task)
    assert got["metric"] == metric and got["score"] == entry[metric]
    assert got["results_path"] == str(res) and got["details_path"] == str(det)


def test_parse_results_without_a_results_file_says_where_it_looked(tmp_path):
    with pytest.raises(evaluate.EvalError, match="no results file under"):
        evaluate.parse_results(tmp_path, "arith")


# --- the worker and the queue --------------------------------------------------------------------------
def test_gpu_evaluation_waits_for_the_runs_training_then_cancel(tmp_path):
    """A queued GPU evaluation is held back while the run's training holds the GPUs (a live
    supervisor heartbeat and an open attempt); cancelling it empties the queue and the worker exits."""
    rd = _make_run(tmp_path, gpu_count=2)
    _fake_checkpoint(rd, 50, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    sup = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        rd.event("launched", gpus=2)
        rd.event("supervisor_started", pid=sup.pid)
        rd.event("attempt_started", attempt=1, pid=sup.pid, gpus=2)
        write_json_atomic(rd.supervisor, {"pid": sup.pid, "pgid": sup.pid, "heartbeat": time.time() + 60})
        assert evaluate.training_holds_gpus(rd)
        [eid] = evaluate.queue_eval(tmp_path, rd.run_id, 50, ["aime24"])
        time.sleep(4)
        assert evaluate.worker_running(tmp_path)
        assert evaluate.evals_of(rd)[eid]["state"] == "queued"
        assert [e["eval_id"] for e in evaluate.eval_queue(tmp_path)] == [eid]
        assert evaluate.cancel_eval(tmp_path, rd.run_id) == [eid]
        deadline = time.time() + 15
        while evaluate.worker_running(tmp_path) and time.time() < deadline:
            time.sleep(0.2)
        assert not evaluate.worker_running(tmp_path)
        assert evaluate.evals_of(rd)[eid]["state"] == "cancelled" and not _events(rd, "eval_started")
        assert evaluate.eval_queue(tmp_path) == []
    finally:
        sup.kill()
        sup.wait()
