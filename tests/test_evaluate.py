"""Evaluation: queue, worker, merge, lighteval on CPU for real, result parsing, failures, cancel."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_tiny_recipe

from tina_core.cli import evals as cli_evals
from tina_core.evaluate import job as ev_job
from tina_core.evaluate import queue as ev_queue
from tina_core.evaluate import tasks as ev_tasks
from tina_core.evaluate import worker as ev_worker
from tina_core import runstate
from tina_core.events import Kind, of_kind
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
        evs = runstate.evaluations(rd)
        if all(evs[i]["state"] in states for i in ids):
            return evs
        time.sleep(0.3)
    log = "\n".join(p.read_text()[-3000:] for p in rd.evals.glob("*.log"))
    raise AssertionError(f"evaluations {ids} not {states} after {timeout}s: "
                         f"{ {i: runstate.evaluations(rd)[i]['state'] for i in ids} }\n{log}")


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


def test_task_module_is_light_and_defines_every_task():
    probe = "import sys, tina_core.evaluate.lighteval_tasks, tina_core.evaluate.queue; print('lighteval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # listing tina's modules stays light
    from tina_core.evaluate import lighteval_tasks as eval_tasks

    names = [t.name for t in eval_tasks.TASKS_TABLE]
    assert sorted(names) == sorted(ev_tasks.LIGHTEVAL_TASKS.values())  # every task tina runs is its own
    assert sorted(ev_tasks.LIGHTEVAL_TASKS) == sorted(ev_tasks.TINA_TASKS + ev_tasks.CPU_TASKS)
    assert dict(zip(names, eval_tasks.TASKS_TABLE))["tina_arith"].hf_repo == str(eval_tasks.TINY_EVAL_DIR)
    rows = [json.loads(line) for line in (eval_tasks.TINY_EVAL_DIR / "test.jsonl").open()]
    assert len(rows) == 40 and len({r["problem"] for r in rows}) == len(rows)
    import math_verify

    for r in rows:  # every gold parses, and the problem's own sum verifies against it
        a, b = (int(x) for x in r["problem"].removeprefix("What is ").rstrip("?").split(" + "))
        assert math_verify.verify(math_verify.parse(f"${r['answer']}$"), math_verify.parse(f"${a + b}$"))


# Two rows per benchmark, in its hub dataset's own columns (Tina's task file reads these), with
# the boxed answer a correct completion ends on.
HUB_ROWS = {
    "tina_aime24": [({"problem": "Find $x$ if $x - 200 = 4$.", "answer": "204"}, "204"),
                    ({"problem": "Find $y$ if $2y = 6$.", "answer": "3"}, "3")],
    "tina_aime25": [({"problem": "Compute $7 \\cdot 11$.", "answer": "77"}, "77"),
                    ({"problem": "Compute $3^3$.", "answer": "27"}, "27")],
    "tina_amc23": [({"problem": "What is $1+1$?", "answer": 2.0}, "2"), ({"problem": "What is $5-1$?", "answer": 4.0}, "4")],
    "tina_math_500": [({"problem": "Write $1/2$ as a decimal.", "solution": "It is $\\boxed{0.5}$.", "answer": "0.5"},
                       "\\frac{1}{2}"),
                      ({"problem": "Simplify $\\frac{2}{4}$.", "solution": "We get $\\boxed{\\frac{1}{2}}$.",
                        "answer": "\\frac{1}{2}"}, "0.5")],
    "tina_minerva": [({"problem": "Speed of 10 m in 2 s, in m/s?", "solution": "$10/2 = \\boxed{5}$"}, "5"),
                     ({"problem": "Area of a 3 by 4 rectangle?", "solution": "Hence \\boxed{12}."}, "12")],
    "tina_gpqa_diamond": [({"Question": "Which is a noble gas?", "Correct Answer": "Argon", "Incorrect Answer 1": "Iron",
                            "Incorrect Answer 2": "Sodium", "Incorrect Answer 3": "Carbon"}, None),
                          ({"Question": "Which is a prime?", "Correct Answer": "7", "Incorrect Answer 1": "8",
                            "Incorrect Answer 2": "9", "Incorrect Answer 3": "10"}, None)],
}


def _tina_docs(tmp_path: Path, monkeypatch) -> dict:
    """Tina's six tasks as lighteval 0.13 loads them, from local copies in the hubs' schemas."""
    from lighteval.tasks.lighteval_task import LightevalTask

    from tina_core.evaluate import lighteval_tasks as eval_tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name, rows in HUB_ROWS.items():
        folder = tmp_path / name
        folder.mkdir()
        split = eval_tasks.DATA[name][2]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
        monkeypatch.setitem(eval_tasks.DATA, name, (str(folder), "default", split))
    tasks = {c.name: LightevalTask(c) for c in eval_tasks._build_tasks_table() if c.name in HUB_ROWS}
    LightevalTask.load_datasets(tasks, 1)
    return {name: (task, task.get_docs()) for name, task in tasks.items()}


def _score(task, doc, text: str) -> float:
    from lighteval.models.model_output import ModelResponse

    [metric] = task.metrics
    assert metric.metric_name == "extractive_match"
    return metric.sample_level_fn.compute(doc=doc, model_response=ModelResponse(text=[text]))


def test_tinas_benchmarks_prompt_and_score_as_tina_did(tmp_path, monkeypatch):
    """Tina's prompts (simple-evals' boxed template; GPQA's 'Answer: $LETTER'), her golds and her
    extractive-match metrics, where lighteval 0.13's built-in math tasks ask for an 'ANSWER:' line
    and score with pass@k; and her GPQA letter match, which finds a letter without an anchor."""
    import random

    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
    from lighteval.metrics.utils.extractive_match_utils import IndicesExtractionConfig
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.tasks.math_500 import math_500 as builtin_math_500

    from tina_core.evaluate import lighteval_tasks as eval_tasks

    random.seed(1234)  # as lighteval's pipeline does before it builds the prompts
    loaded = _tina_docs(tmp_path, monkeypatch)
    assert sorted(loaded) == sorted(HUB_ROWS)
    for name, (task, docs) in loaded.items():
        assert len(docs) == 2 and task.generation_size == 32768, name
        if name == "tina_gpqa_diamond":
            continue
        gold_column = eval_tasks.MATH_TASKS[name][0]
        for doc in docs:
            [(row, answer)] = [(r, a) for r, a in HUB_ROWS[name] if doc.query.endswith(r["problem"])]
            assert doc.query == eval_tasks.MATH_QUERY_TEMPLATE.format(question=row["problem"])
            assert "$\\boxed{ANSWER}$" in doc.query and "ANSWER: $ANSWER" not in doc.query
            assert doc.get_golds() == [str(row[gold_column])]
            right = f"<think>\nwork\n</think>\nTherefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"
            assert _score(task, doc, right) == 1.0, (name, doc.get_golds(), answer)
            assert _score(task, doc, "Therefore, the final answer is: $\\boxed{999}$.") == 0.0, name
    # lighteval 0.13's own math_500 prompts and scores otherwise.
    builtin = builtin_math_500.prompt_function(HUB_ROWS["tina_math_500"][0][0], "math_500")
    assert "ANSWER: $ANSWER" in builtin.query and "boxed" not in builtin.query
    assert [m.metric_name for m in builtin_math_500.metrics] != ["extractive_match"]

    gpqa, docs = loaded["tina_gpqa_diamond"]
    for doc in docs:
        [row] = [r for r, _ in HUB_ROWS["tina_gpqa_diamond"] if r["Question"] in doc.query]
        letter = "ABCD"[doc.gold_index]
        assert doc.choices == ["A", "B", "C", "D"]
        assert f"\n{letter}) {row['Correct Answer']}\n" in doc.query + "\n"
        assert doc.query.startswith("Answer the following multiple choice question.")
        assert _score(gpqa, doc, f"Thinking it over... Answer: {letter}") == 1.0
        assert _score(gpqa, doc, f"Answer: {'ABCD'[(doc.gold_index + 1) % 4]}") == 0.0
        # No anchor: Tina's lighteval found the letter anyway; 0.13's default no longer does.
        bare = f"The right option is {letter}"
        assert _score(gpqa, doc, bare) == 1.0
        default = IndicesExtractionConfig(prefix_for_extraction="NativeLetters")
        fn = MultilingualExtractiveMatchMetric(gold_extraction_target=[default], pred_extraction_target=[default],
                                              precision=5)
        assert fn.compute(doc=doc, model_response=ModelResponse(text=[bare])) == 0.0


def test_the_pipeline_scores_the_whole_completion_as_tinas_lighteval_did():
    """lighteval 0.13 cuts <think>...</think> out before scoring unless told not to; Tina's lighteval
    scored the whole completion."""
    import torch

    grad = torch.is_grad_enabled()
    try:
        from lighteval.pipeline import ParallelismManager, PipelineParameters
    finally:
        torch.set_grad_enabled(grad)  # importing lighteval's pipeline turns autograd off process-wide

    from tina_core.evaluate import lighteval_tasks as eval_tasks

    assert ev_job.pipeline_parameters(eval_tasks).remove_reasoning_tags is False
    assert PipelineParameters(launcher_type=ParallelismManager.NONE).remove_reasoning_tags is True


def test_vllm_requests_carry_tinas_settings(tiny_model, tmp_path):
    """What tina's vLLM model class asks of each engine, built for real on the tiny model (building
    the requests needs no vLLM): Tina's sampling, the context capped at the model's own, the
    tokenizer's special tokens, one engine per GPU on its device; on CPU one engine, its KV cache
    from VLLM_CPU_KVCACHE_SPACE and eager execution."""
    from lighteval.tasks.requests import Doc

    from tina_core.evaluate import vllm_model

    model = vllm_model.build_model(str(tiny_model), vllm_model.devices_for([0, 1]), work=tmp_path / "engines",
                                   cache_dir=tmp_path / "cache", system_prompt=None)
    cfg = model.config
    assert cfg.devices == ["0", "1"] and cfg.dtype == "bfloat16" and cfg.seed == 1234
    assert cfg.max_model_length == 256  # the tiny model's context: shorter than Tina's 32768
    gen = cfg.generation_parameters
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.6, 0.95, 32768)
    assert cfg.model_name == tiny_model.name  # lighteval files results and its cache under this name
    assert model.use_chat_template  # the tiny model, like Tina's, has a chat template

    doc = Doc(query="What is 3 + 4?", choices=["7"], gold_index=0, task_name="tina_arith|0", generation_size=64)
    ids = model.tokenizer(model.prompt_manager.prepare_prompt(doc), add_special_tokens=True)["input_ids"]
    req = model._request(doc, ids)
    assert req["prompt_token_ids"] == ids
    assert req["sampling"] == {"temperature": 0.6, "top_p": 0.95, "n": 1, "max_tokens": 256 - len(ids), "stop": []}
    with pytest.raises(ev_tasks.EvalError, match="its prompt has 300 tokens, the model's context 256"):
        model._request(doc, [1] * 300)

    assert vllm_model.devices_for([]) == ["cpu"]
    assert vllm_model.engine_env("1") == {"CUDA_VISIBLE_DEVICES": "1"}
    assert vllm_model.engine_args("m", 32768, "1") == {"model": "m", "dtype": "bfloat16", "seed": 1234,
                                                       "max_model_len": 32768, "gpu_memory_utilization": 0.7}
    assert vllm_model.engine_args("m", 256, "cpu")["enforce_eager"] is True
    assert vllm_model.engine_env("cpu") == {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE") or "1"}


# --- command lines ------------------------------------------------------------------------------------
def test_dry_run_prints_merge_and_the_six_lighteval_commands(tmp_path, capsys):
    rd = _make_run(tmp_path, gpu_count=2, recipe=REPO / "recipes/tina/open_rs2.yaml")
    _fake_checkpoint(rd, 450, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    assert cli_evals.cli_eval(tmp_path, rd.run_id, checkpoint="450", dry_run=True) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    merges = [ln for ln in lines if " merge " in ln]
    runs = [ln for ln in lines if " lighteval " in ln]
    assert len(merges) == 1 and len(runs) == 6
    merge = shlex.split(merges[0])
    assert merge[merge.index("--adapter") + 1] == str(rd.checkpoint_path(450))
    assert merge[merge.index("--dtype") + 1] == "bfloat16"
    tasks = []
    for ln in runs:
        argv = shlex.split(ln)
        assert argv[0] == "CUDA_VISIBLE_DEVICES=0,1" and argv[2:5] == ["-m", "tina_core.evaluate", "lighteval"]
        opt = dict(zip(argv[5::2], argv[6::2]))
        assert opt["--backend"] == "vllm" and opt["--gpus"] == "0,1"
        assert opt["--model"] == str(rd.evals / "merged" / "checkpoint-450")
        assert opt["--output-dir"].startswith(str(rd.evals / "checkpoint-450"))
        tasks.append(opt["--task"])
    assert tasks == ev_tasks.TINA_TASKS
    assert not _events(rd, "eval_queued")  # a dry run queues nothing


def test_dry_run_base_and_explicit_gpus_through_the_cli(tmp_path):
    rd = _make_run(tmp_path, gpu_count=2)
    _fake_checkpoint(rd, 50, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(tmp_path), "eval", rd.run_id,
                          "--checkpoint", "base", "--tasks", "aime24,amc23", "--gpus", "1", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if " lighteval " in ln]
    assert len(lines) == 2 and " merge " not in out.stdout
    assert all(ln.startswith("CUDA_VISIBLE_DEVICES=1 ") and "--backend vllm" in ln for ln in lines)
    assert "--model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --task aime24" in lines[0] and "--gpus 1" in lines[0]


def test_bad_requests_are_clear_errors(tmp_path):
    rd = _make_run(tmp_path)
    _fake_checkpoint(rd, 10, "/nowhere")
    with pytest.raises(TinaError, match="unknown evaluation task 'aime2024'.*aime24"):
        ev_queue.queue_eval(tmp_path, rd.run_id, 10, ["aime2024"], start_worker=False)
    with pytest.raises(TinaError, match=r"no checkpoint-99; complete checkpoints: \[10\]"):
        ev_queue.queue_eval(tmp_path, rd.run_id, 99, ["arith"], start_worker=False)
    with pytest.raises(TinaError, match="aime24.*no GPUs.*--gpus"):
        ev_queue.queue_eval(tmp_path, rd.run_id, 10, ["aime24"], start_worker=False)
    with pytest.raises(TinaError, match="--gpus: expected comma-separated GPU ids"):
        ev_queue.queue_eval(tmp_path, rd.run_id, 10, ["arith"], gpus="first", start_worker=False)
    with pytest.raises(TinaError, match="--checkpoint: expected a step N, recommended, all, base or transition"):
        cli_evals.cli_eval(tmp_path, rd.run_id, checkpoint="best")
    assert not _events(rd, "eval_queued")  # nothing queued by a bad request


# --- parsing lighteval 0.13's results ----------------------------------------------------------------
@pytest.mark.parametrize("task,entry,metric", [
    ("aime24", {"pass@k:k=1": 0.3, "pass@k:k=1_stderr": 0.08, "avg@n:n=1": 0.3, "avg@n:n=1_stderr": 0.08}, "pass@k:k=1"),
    ("math_500", {"pass@k:k=1&n=1": 0.8, "pass@k:k=1&n=1_stderr": 0.02}, "pass@k:k=1&n=1"),
    ("gpqa:diamond", {"gpqa_pass@k:k=1": 0.35, "gpqa_pass@k:k=1_stderr": 0.03}, "gpqa_pass@k:k=1"),
    ("amc23", {"extractive_match": 0.6, "extractive_match_stderr": 0.07}, "extractive_match"),
])
def test_parse_results_picks_the_primary_metric(tmp_path, task, entry, metric):
    lname = ev_tasks.lighteval_task(task)
    res = tmp_path / "results" / "w" / "merged" / "results_2025-01-01T00-00-00.json"
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps({"results": {f"{lname}|0": entry, "all": entry}, "config_general": {}}))
    det = tmp_path / "details" / "w" / "merged" / "2025-01-01T00-00-00" / f"details_{lname}|0_2025.parquet"
    det.parent.mkdir(parents=True)
    det.write_bytes(b"PAR1")
    got = ev_job.parse_results(tmp_path, task)
    assert got["metric"] == metric and got["score"] == entry[metric]
    assert got["results_path"] == str(res) and got["details_path"] == str(det)


def test_parse_results_without_a_results_file_says_where_it_looked(tmp_path):
    with pytest.raises(ev_tasks.EvalError, match="no results file under"):
        ev_job.parse_results(tmp_path, "arith")


def test_unreadable_details_are_quarantined_and_the_score_kept(tmp_path):
    from tina_core.store.index import Store

    rd = _make_run(tmp_path)
    details = rd.evals / "details_tina_arith|0_x.parquet"
    details.parent.mkdir(parents=True)
    details.write_bytes(b"PAR1 cut short")
    rd.event("eval_finished", eval_id="e1", checkpoint=2, task="arith", score=0.5, metric="extractive_match",
             scores={"arith": 0.5}, details_path=str(details))
    store = Store(tmp_path)
    store.ingest()
    assert [e["score"] for e in store.evals(rd.run_id)] == [0.5] and store.eval_samples(rd.run_id, "e1") == []
    [q] = store.quarantine(rd.run_id)
    assert q["file"] == "events.jsonl" and q["text"] == str(details)
    assert q["reason"].startswith("per-sample details not readable: ")


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
        assert runstate.training_holds_gpus(rd)
        [eid] = ev_queue.queue_eval(tmp_path, rd.run_id, 50, ["aime24"])
        time.sleep(4)
        assert ev_worker.worker_running(tmp_path)
        assert runstate.evaluations(rd)[eid]["state"] == "queued"
        assert [e["eval_id"] for e in runstate.eval_queue(tmp_path)] == [eid]
        assert ev_queue.cancel_eval(tmp_path, rd.run_id) == [eid]
        deadline = time.time() + 15
        while ev_worker.worker_running(tmp_path) and time.time() < deadline:
            time.sleep(0.2)
        assert not ev_worker.worker_running(tmp_path)
        assert runstate.evaluations(rd)[eid]["state"] == "cancelled" and not _events(rd, "eval_started")
        assert runstate.eval_queue(tmp_path) == []
    finally:
        sup.kill()
        sup.wait()


def test_missing_base_model_and_incomplete_checkpoint_fail_with_the_reason(home):
    rd = _make_run(home)
    _fake_checkpoint(rd, 2, "/nowhere/base")
    _fake_checkpoint(rd, 4, "/nowhere/base", complete=False)
    ids = ev_queue.queue_eval(home, rd.run_id, 2, ["arith"]) + ev_queue.queue_eval(home, rd.run_id, 4, ["arith"])
    evs = _wait_states(rd, ids, ("failed",), 60)
    assert evs[ids[0]]["reason"].startswith("merging checkpoint-2 failed: base model not found: /nowhere/base (named by ")
    assert evs[ids[1]]["reason"].startswith("checkpoint-4 is incomplete: no tina-complete.json")
    assert "--- last lines of" in evs[ids[1]]["reason"]


def test_timeout_fails_the_evaluation_with_its_log(home, monkeypatch, tmp_path):
    rd = _make_run(home)
    _fake_checkpoint(rd, 2, str(tmp_path))  # an existing base: the job goes on to load torch
    monkeypatch.setenv("TINA_EVAL_TIMEOUT_S", "0.5")
    [eid] = ev_queue.queue_eval(home, rd.run_id, 2, ["arith"])
    evs = _wait_states(rd, [eid], ("failed",), 60)
    assert evs[eid]["reason"].startswith("timed out after 0.5s")
    started, failed = _events(rd, "eval_started")[0], _events(rd, "eval_failed")[0]
    assert started["gpus"] == [] and isinstance(started["pid"], int) and failed["gpus"] == []
    assert rd.eval_log(eid).exists()


# --- for real: a tiny run long enough for its phase transition, on CPU ----------------------------------
# The whole tiny recipe (100 steps, ~15 s): its format reward turns near step 47, and checkpoints
# every 20 steps bracket the turn, so the recommended checkpoint is a real one before it.
TRANSITION_RUN = ("grpo.save_steps=20",)


def _tina(home: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `tina` command line (TINA_CACHE and HF_HUB_OFFLINE come from the `home` fixture)."""
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"tina {' '.join(args)}: {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


# The tests on this trained run are CI's second lane (make test-extended): training it and evaluating
# it for real take about a minute of the 5 that make test may use on 2 cores.
@pytest.fixture(scope="module")
def transition_run(tmp_path_factory, tiny_model, tiny_cache) -> RunDir:
    """A finished headless `tina run recipes/tiny.yaml`, trained once for this module. Read-only:
    tests evaluate copies (_copy_run)."""
    run = run_tiny_recipe(tmp_path_factory.mktemp("transition-home"), tiny_cache, "tiny-full", TRANSITION_RUN)
    # the save grid, and a checkpoint for each tentative marker the live watch asked one for (unless
    # it fell on the grid): how many is a function of the metrics, however loaded the machine
    assert [s for s in run.checkpoint_steps() if s % 20 == 0] == [20, 40, 60, 80, 100]
    asked = of_kind(run.read_events(), Kind.CHECKPOINT_REQUESTED)
    assert len([s for s in run.checkpoint_steps() if s % 20]) <= len(asked) == 1
    return run


def _copy_run(home: Path, src: RunDir, run_id: str | None = None) -> RunDir:
    """A copy of a finished run in this test's workspace, under another id when given."""
    rd = RunDir(home / "runs" / (run_id or src.run_id))
    shutil.copytree(src.path, rd.path)
    if run_id:
        write_json_atomic(rd.run_json, {**rd.info(), "run_id": run_id, "name": run_id})
    return rd


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _untouched(rd: RunDir) -> tuple:
    """What an evaluation must never change: the run's own lifecycle and its adapters."""
    return ([e["event"] for e in rd.read_events() if not e["event"].startswith("eval_")],
            {p.name: _sha(p) for p in rd.checkpoints.rglob("adapter_model.safetensors")})


def _wait_log(rd: RunDir, eid: str, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while text not in (rd.eval_log(eid).read_text(errors="replace")
                       if rd.eval_log(eid).exists() else ""):
        assert time.time() < deadline, f"{text!r} not in the log of {eid} after {timeout}s"
        time.sleep(0.05)


@pytest.mark.extended
@pytest.mark.slow
def test_recommended_checkpoint_and_base_for_real(home, transition_run):
    """After a headless `tina run`, `tina eval RUN` evaluates the recommended checkpoint (the latest
    at or before the detected transition) and `--checkpoint base` the base model, on CPU by the real
    worker and lighteval; the scores reach `tina status --json` and `tina report`, the per-sample
    details reach the index and come back the same from `tina ingest --rebuild`. A cancelled
    evaluation and a corrupt adapter fail cleanly without disturbing the others; queueing retries."""
    from tina_core.store.index import Store

    rd = _copy_run(home, transition_run)
    assert not (home / "tina.duckdb").exists()  # nothing has indexed the run, as after a headless run
    steps = rd.checkpoint_steps(evaluable=True)  # the grid's and the snapshots pinned at the transition
    # A corrupt copy of the last checkpoint, complete in every other way (after the turn, so it
    # cannot be the recommended one).
    bad_step = steps[-1] + 1
    broken = rd.checkpoint_path(bad_step)
    shutil.copytree(rd.checkpoint_path(steps[-1]), broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file")
    before = _untouched(rd)

    # Cancel a running evaluation: its process group dies, the event says cancelled.
    [first] = ev_queue.queue_eval(home, rd.run_id, "base", ["arith"])
    pid = _wait_states(rd, [first], ("running",), 60)[first]["pid"]
    assert ev_queue.cancel_eval(home, rd.run_id, first) == [first]
    deadline = time.time() + 10
    while time.time() < deadline and runstate.eval_process_alive(pid):
        time.sleep(0.1)
    assert not runstate.eval_process_alive(pid)

    # The default checkpoint is the recommended one; --wait prints the score table.
    out = _tina(home, "eval", rd.run_id, "--tasks", "arith", "--wait").stdout
    good = out.split("\t")[0]
    [bad] = ev_queue.queue_eval(home, rd.run_id, bad_step, ["arith"])
    [base] = ev_queue.queue_eval(home, rd.run_id, "base", ["arith"])  # the retry of the cancelled one
    evs = _wait_states(rd, [first, good, bad, base], ("finished", "failed", "cancelled"), 300)

    run = json.loads(_tina(home, "status", rd.run_id, "--json").stdout)
    ph, rec = run["phase_transition"], run["recommended_checkpoint"]
    assert ph["status"] == "confirmed" and ph["signal"] == "rewards/format_reward/mean" and ph["direction"] == "up"
    assert rec in steps and rec <= ph["step"] < min(s for s in steps if s > rec)  # the latest before the turn
    assert evs[good]["checkpoint"] == rec and f"checkpoint-{rec}" in out and "extractive_match" in out

    assert evs[first]["state"] == "cancelled"
    assert not [e for e in _events(rd, "eval_failed") if e["eval_id"] == first]
    assert evs[bad]["state"] == "failed"
    assert evs[bad]["reason"].startswith(f"merging checkpoint-{bad_step} failed: ")
    assert "adapter_model.safetensors is corrupt" in evs[bad]["reason"]
    assert "last lines of" in evs[bad]["reason"] and rd.eval_log(bad).exists()
    for eid in (good, base):
        e = evs[eid]
        assert e["state"] == "finished", e
        assert e["metric"] == "extractive_match" and 0.0 <= e["score"] <= 1.0
        fin = [x for x in _events(rd, "eval_finished") if x["eval_id"] == eid][0]
        assert fin["scores"] == {"arith": e["score"]} and fin["gpus"] == [] and isinstance(fin["pid"], int)
        assert Path(fin["results_path"]).is_file()
    assert (rd.evals / "merged" / f"checkpoint-{rec}" / ev_job.MERGED_MARK).exists()
    assert _untouched(rd) == before  # the checkpoints and the run's own lifecycle
    assert runstate.eval_queue(home) == []
    score, base_score = evs[good]["score"], evs[base]["score"]

    # tina status --json: the checkpoint's score, and the base model as its own entry.
    cks = {c["step"]: c["evals"] for c in run["checkpoints"]}
    assert cks[rec] == {"arith": score} and cks[bad_step] == {}
    assert all(not v for s, v in cks.items() if s != rec)
    assert run["base"] == {"evals": {"arith": base_score}, "avg": base_score}
    shown = {e["eval_id"]: e for e in run["evaluations"]}
    assert shown[bad]["state"] == "failed" and "is corrupt" in shown[bad]["reason"]

    # tina report: JSON, CSV and Markdown carry the base model beside the checkpoint, and the gain.
    [row] = json.loads(_tina(home, "report", "--json").stdout)["runs"]
    assert row["recommended"]["step"] == rec and row["recommended"]["scores"] == {"arith": score}
    assert row["base"] == {"scores": {"arith": base_score}, "avg": base_score}
    assert row["recommended"]["vs_base"] == pytest.approx(score - base_score, abs=1e-4)
    rows = list(csv.DictReader(io.StringIO(_tina(home, "report", "--csv").stdout)))
    assert [(r["source"], r["recommended_step"], r["arith"]) for r in rows if r["source"] != "paper"] == \
        [("ours", str(rec), str(score)), ("base", "", str(base_score))]
    md = _tina(home, "report", "--md").stdout
    assert f"| tiny-full | base | {base_score:.4f} | {base_score:.4f} | - |" in md
    assert f"| tiny-full | checkpoint-{rec} (recommended) | {score:.4f} | {score:.4f} | {score - base_score:+.4f} |" in md

    # Per-sample details in the index: one row per problem, scoring as the whole did.
    store = Store(home)
    for eid, s in ((good, score), (base, base_score)):
        samples = store.eval_samples(rd.run_id, eid)
        assert len(samples) == 40 and sum(x["score"] for x in samples) / 40 == pytest.approx(s)
        assert all(x["prompt"].startswith("What is ") and x["gold"].isdigit() and x["prediction"] for x in samples)
    assert store.eval_samples(rd.run_id, bad) == []
    dump = ("SELECT eval_id, checkpoint, task, sample, doc_id, prompt, gold, prediction, score, metrics::VARCHAR "
            "FROM eval_samples ORDER BY eval_id, sample")
    indexed = store.query(dump)
    assert {(r[0], r[1]) for r in indexed} == {(good, rec), (base, None)}
    _tina(home, "ingest", "--rebuild")
    assert Store(home).query(dump) == indexed
    # A moved workspace: the details are found inside the run directory again.
    moved = home.parent / "moved"
    shutil.copytree(home / "runs", moved / "runs")
    shutil.rmtree(rd.evals)
    moved_store = Store(moved)
    moved_store.ingest()
    assert moved_store.query(dump) == indexed


@pytest.mark.extended
@pytest.mark.slow
def test_a_lighteval_crash_and_an_oom_kill_fail_only_their_evaluation(home, transition_run, tiny_model, tmp_path):
    """Run B's base model is half written: the real lighteval crashes loading it and its job exits
    non-zero. Run A's base evaluation is killed with SIGKILL, as the OOM killer does. Each fails with
    its reason; A's checkpoint evaluation, queued behind them, finishes; neither run changes. Once
    B's base model is whole again, and for the killed one at once, queueing again succeeds."""
    a = _copy_run(home, transition_run)
    b = _copy_run(home, transition_run, "b-" + transition_run.run_id)
    model = tmp_path / "base-model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    for cfg in b.checkpoints.glob("checkpoint-*/adapter_config.json"):
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "base_model_name_or_path": str(model)}))
    before = {rd.run_id: _untouched(rd) for rd in (a, b)}

    [crash] = ev_queue.queue_eval(home, b.run_id, "base", ["arith"])
    [oom] = ev_queue.queue_eval(home, a.run_id, "base", ["arith"])
    [other] = ev_queue.queue_eval(home, a.run_id, 40, ["arith"])
    pid = _wait_states(a, [oom], ("running",), 120)[oom]["pid"]
    _wait_log(a, oom, f"evaluation {oom}: ")  # the job is up and loading lighteval
    os.kill(pid, signal.SIGKILL)
    evs = {**_wait_states(b, [crash], ("failed",), 60), **_wait_states(a, [oom, other], ("failed", "finished"), 120)}

    reason = evs[crash]["reason"]
    assert reason.startswith("lighteval crashed: SafetensorError: ") and "--- last lines of" in reason, reason
    assert evs[oom]["reason"].startswith("evaluation process killed by signal SIGKILL (out of memory?)")
    assert evs[other]["state"] == "finished" and 0.0 <= evs[other]["score"] <= 1.0
    worker_log = (home / ev_worker.WORKER_LOG).read_text()
    assert f"ended {b.run_id}/{crash} rc 1 -> failed" in worker_log  # the crash: a non-zero exit
    assert f"ended {a.run_id}/{oom} rc -9 -> failed" in worker_log
    assert set(runstate.evaluations(a)) == {oom, other} and set(runstate.evaluations(b)) == {crash}
    assert {rd.run_id: _untouched(rd) for rd in (a, b)} == before

    weights.write_bytes(whole)  # the cause of the crash fixed
    retries = [*ev_queue.queue_eval(home, b.run_id, "base", ["arith"]), *ev_queue.queue_eval(home, a.run_id, "base", ["arith"])]
    done = {**_wait_states(b, retries[:1], ("finished", "failed"), 120), **_wait_states(a, retries[1:], ("finished", "failed"), 120)}
    assert [done[e]["state"] for e in retries] == ["finished", "finished"], done
    assert done[retries[0]]["score"] == done[retries[1]]["score"]  # the same base model, greedy


@pytest.mark.extended
@pytest.mark.slow
def test_a_dead_worker_is_noticed_restarted_and_its_orphan_closed(home, transition_run):
    """Attack 6: worker and job both die (kill -9) mid-evaluation, with another evaluation queued.
    Nobody records the end, yet the next `tina status` says no worker is alive (not "running" and
    "queued" forever), costs the dead evaluation up to the job's last sign of life (its log, touched
    by the job's heartbeat), and starts a worker, which closes the dead one as failed with the
    reason at that end and runs the queued one."""
    from tina_core.analysis import cost

    rd = _copy_run(home, transition_run)
    write_json_atomic(rd.run_json, {**rd.info(), "cpu_hour_usd": 3600.0})  # $1 a second: dollars read as seconds
    [eid] = ev_queue.queue_eval(home, rd.run_id, "base", ["arith"])
    ev = _wait_states(rd, [eid], ("running",), 60)[eid]
    [queued] = ev_queue.queue_eval(home, rd.run_id, rd.checkpoint_steps()[0], ["arith"])
    _wait_log(rd, eid, f"evaluation {eid}: ")
    assert runstate.open_eval_ends(rd)[eid] == pytest.approx(time.time(), abs=1)  # alive: it costs up to now
    worker = runstate.eval_worker_pid(home)
    assert worker == int((home / ev_worker.WORKER_LOCK).read_text())
    os.kill(worker, signal.SIGKILL)
    os.killpg(ev["pid"], signal.SIGKILL)
    while runstate.eval_process_alive(ev["pid"]) or runstate.pid_alive(worker):
        time.sleep(0.05)
    last = rd.eval_log(eid).stat().st_mtime
    time.sleep(1.5)
    assert runstate.evaluations(rd)[eid]["state"] == "running" and runstate.eval_worker_pid(home) is None

    out = _tina(home, "status", rd.run_id, "--json")
    run = json.loads(out.stdout)
    assert run["eval_worker"] == "gone" and "no evaluation worker was alive" in out.stderr
    assert run["cost_usd"]["eval"] == pytest.approx(last - ev["started_ts"], abs=2e-4)
    charged = run["cost_usd"]["eval"]
    _wait_states(rd, [eid], ("failed",), 60)  # the worker it started reaps the dead job...
    failed = _events(rd, "eval_failed")[-1]
    assert failed["end_ts"] == pytest.approx(last, abs=1e-3) and failed["ts"] > last + 1.5
    assert "its worker stopped or was killed" in failed["reason"]
    [closed] = [iv for iv in cost.intervals(rd.read_events()) if iv.key == eid]
    assert closed.end - closed.start == pytest.approx(charged, abs=2e-4)  # what status charged, for good
    _wait_states(rd, [queued], ("running", "finished"), 60)  # ...and takes up the queue
    ev_queue.cancel_eval(home, rd.run_id, queued)
    assert json.loads(_tina(home, "status", rd.run_id, "--json").stdout)["eval_worker"] is None


def test_the_jobs_heartbeat_keeps_its_log_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(ev_job, "JOB_HEARTBEAT_S", 0.05)
    log = tmp_path / "e.log"
    log.write_text("output\n")
    os.utime(log, (1000.0, 1000.0))
    stop = ev_job._heartbeat(log)
    try:
        deadline = time.monotonic() + 30
        while log.stat().st_mtime == 1000.0:  # touched again and again, whatever the machine's load
            assert time.monotonic() < deadline, "the job's heartbeat never touched its log"
            time.sleep(0.05)
        seen = log.stat().st_mtime
        while log.stat().st_mtime == seen:
            assert time.monotonic() < deadline, "the job's heartbeat touched its log only once"
            time.sleep(0.05)
        assert log.read_text() == "output\n"
    finally:
        stop.set()


def test_evaluation_gpu_time_counts_as_eval_cost(tmp_path):
    from tina_core.analysis.cost import intervals

    rd = _make_run(tmp_path, gpu_count=2)
    rd.event("eval_started", eval_id="e1", gpus=[0, 1], pid=1)
    rd.event("eval_failed", eval_id="e1", gpus=[0, 1], pid=1, reason="x")
    [iv] = intervals(rd.read_events())
    assert iv.kind == "eval" and iv.gpus == 2 and iv.end is not None
