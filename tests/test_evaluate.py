"""Evaluation: queue, worker, merge, lighteval on CPU for real, result parsing, failures, cancel."""

from __future__ import annotations

import json
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
    rows = [json.loads(line) for line in (evaluate.EVAL_TASKS_FILE.parent / "tiny_data/tiny_eval/test.jsonl").open()]
    assert len(rows) == 40 and len({r["problem"] for r in rows}) == len(rows)
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


def test_missing_base_model_and_incomplete_checkpoint_fail_with_the_reason(home):
    rd = _make_run(home)
    _fake_checkpoint(rd, 2, "/nowhere/base")
    _fake_checkpoint(rd, 4, "/nowhere/base", complete=False)
    ids = evaluate.queue_eval(home, rd.run_id, 2, ["arith"]) + evaluate.queue_eval(home, rd.run_id, 4, ["arith"])
    evs = _wait_states(rd, ids, ("failed",), 60)
    assert evs[ids[0]]["reason"].startswith("merging checkpoint-2 failed: base model not found: /nowhere/base (named by ")
    assert evs[ids[1]]["reason"].startswith("checkpoint-4 is incomplete: no tina-complete.json")
    assert "--- last lines of" in evs[ids[1]]["reason"]


def test_timeout_fails_the_evaluation_with_its_log(home, monkeypatch, tmp_path):
    rd = _make_run(home)
    _fake_checkpoint(rd, 2, str(tmp_path))  # an existing base: the job goes on to load torch
    monkeypatch.setenv("TINA_EVAL_TIMEOUT_S", "0.5")
    [eid] = evaluate.queue_eval(home, rd.run_id, 2, ["arith"])
    evs = _wait_states(rd, [eid], ("failed",), 60)
    assert evs[eid]["reason"].startswith("timed out after 0.5s")
    started, failed = _events(rd, "eval_started")[0], _events(rd, "eval_failed")[0]
    assert started["gpus"] == [] and isinstance(started["pid"], int) and failed["gpus"] == []
    assert evaluate.log_path(rd, eid).exists()


# --- for real: the shared tiny run on CPU -------------------------------------------------------------
def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_tiny_run_checkpoint_and_base_for_real(home, tiny_run, capsys):
    """The tiny run's recommended (else latest) checkpoint and its base model are evaluated on CPU
    by the real worker and lighteval; a cancelled evaluation and a corrupt adapter fail cleanly
    without disturbing the others; queueing again retries; the store ingests the scores."""
    from tina_core.store import Store

    shutil.copytree(tiny_run.path, home / "runs" / tiny_run.run_id)
    rd = RunDir(home / "runs" / tiny_run.run_id)
    rec = Store(home).recommendation(rd.run_id)["recommended"]
    if rec is None:  # too short a run for a phase transition: the request says so
        with pytest.raises(TinaError, match="no recommended checkpoint yet"):
            evaluate.queue_eval(home, rd.run_id, "recommended", ["arith"], start_worker=False)
    target = rec if rec is not None else rd.checkpoint_steps()[-1]
    # A corrupt copy of a checkpoint, complete in every other way.
    broken = rd.checkpoint_path(target + 1)
    shutil.copytree(rd.checkpoint_path(target), broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00not a safetensors file")
    before = {p: _sha(p) for p in rd.checkpoints.rglob("adapter_model.safetensors")}

    # Cancel a running evaluation: its process group dies, the event says cancelled.
    [first] = evaluate.queue_eval(home, rd.run_id, "base", ["arith"])
    pid = _wait_states(rd, [first], ("running",), 60)[first]["pid"]
    assert evaluate.cancel_eval(home, rd.run_id, first) == [first]
    deadline = time.time() + 10
    while time.time() < deadline and evaluate._pid_alive(pid):
        time.sleep(0.1)
    assert not evaluate._pid_alive(pid)

    ids = evaluate.queue_eval(home, rd.run_id, target, ["arith"])
    ids += evaluate.queue_eval(home, rd.run_id, target + 1, ["arith"])
    ids += evaluate.queue_eval(home, rd.run_id, "base", ["arith"])  # the retry of the cancelled one
    good, bad, base = ids
    # --wait on one of them: the foreground waits for the worker and prints the score table.
    assert evaluate.cli_eval(home, rd.run_id, checkpoint=str(target), tasks="arith", wait=True) == 0
    assert f"checkpoint-{target}" in capsys.readouterr().out
    evs = _wait_states(rd, ids, ("finished", "failed", "cancelled"), 400)

    assert evs[first]["state"] == "cancelled"
    assert not [e for e in _events(rd, "eval_failed") if e["eval_id"] == first]
    assert evs[bad]["state"] == "failed"
    assert evs[bad]["reason"].startswith(f"merging checkpoint-{target + 1} failed: ")
    assert "adapter_model.safetensors is corrupt" in evs[bad]["reason"]
    assert "last lines of" in evs[bad]["reason"] and evaluate.log_path(rd, bad).exists()
    for eid in (good, base):
        e = evs[eid]
        assert e["state"] == "finished", e
        assert e["metric"] == "extractive_match" and 0.0 <= e["score"] <= 1.0
        fin = [x for x in _events(rd, "eval_finished") if x["eval_id"] == eid][0]
        assert fin["scores"] == {"arith": e["score"]} and fin["gpus"] == [] and isinstance(fin["pid"], int)
        assert Path(fin["results_path"]).is_file()
        import pyarrow.parquet as pq

        assert pq.read_table(fin["details_path"]).num_rows == 40  # one row per problem
    assert (rd.evals / "merged" / f"checkpoint-{target}" / evaluate.MERGED_MARK).exists()
    # Nothing else disturbed: the checkpoints, and the run's own lifecycle.
    assert {p: _sha(p) for p in rd.checkpoints.rglob("adapter_model.safetensors")} == before
    assert [e["event"] for e in rd.read_events() if not e["event"].startswith("eval_")] == \
        [e["event"] for e in tiny_run.read_events() if not e["event"].startswith("eval_")]
    assert evaluate.eval_queue(home) == []

    from tina_core.runs import describe

    shown = {e["eval_id"]: e for e in describe(home, rd)["evaluations"]}  # what `tina status` prints
    assert shown[bad]["state"] == "failed" and "is corrupt" in shown[bad]["reason"]
    assert shown[good]["score"] == evs[good]["score"]

    store = Store(home)
    store.ingest()
    scores = {(e["checkpoint"], e["task"]): e["score"] for e in store.evals(rd.run_id)}
    assert scores == {(target, "arith"): evs[good]["score"], ("base", "arith"): evs[base]["score"]}


def test_evaluation_gpu_time_counts_as_eval_cost(tmp_path):
    from tina_core.cost import intervals

    rd = _make_run(tmp_path, gpu_count=2)
    rd.event("eval_started", eval_id="e1", gpus=[0, 1], pid=1)
    rd.event("eval_failed", eval_id="e1", gpus=[0, 1], pid=1, reason="x")
    [iv] = intervals(rd.read_events())
    assert iv.kind == "eval" and iv.gpus == 2 and iv.end is not None
