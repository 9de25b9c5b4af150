"""The GPU box's evaluation path, for real on CPU: CI's vLLM lane (``make test-vllm``).

It runs in the environment ``make setup-vllm`` builds (vLLM's own CPU build at the GPU set's vLLM
version, beside the same pinned stack) and is skipped anywhere vLLM is not installed. The tiny model
is built with two attention heads and one KV head (head_dim 32: vLLM's CPU attention needs >= 32;
the default tiny model's is 16). Everything else is the code the GPU box runs: `tina eval`, the
worker, the job, lighteval's pipeline on tina's tasks, tina's vLLM model class and its engine
processes, results in the run's events and in DuckDB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_tiny_recipe

pytest.importorskip("vllm")

from tina_core import runstate  # noqa: E402
from tina_core.evaluate import tasks as ev_tasks  # noqa: E402
from tina_core.rundir import RunDir  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
VLLM_TINY = ("model.tiny.num_heads=2", "model.tiny.num_kv_heads=1")
RUN = (*VLLM_TINY, "grpo.max_steps=6", "grpo.save_steps=3", "stop_at_step=6")


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, tiny_cache) -> RunDir:
    """A finished tiny run (6 steps, checkpoints 3 and 6) of the head_dim-32 tiny model."""
    run = run_tiny_recipe(tmp_path_factory.mktemp("vllm-home"), tiny_cache, "tiny-vllm", RUN)
    assert run.checkpoint_steps() == [3, 6]
    return run


def _tina(home: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"tina {' '.join(args)}: {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_tina_eval_scores_a_tiny_checkpoint_with_vllm(vllm_run, tiny_cache, monkeypatch):
    """`tina eval RUN --checkpoint 6 --wait` on a CPU box with vLLM: the checkpoint is merged in bf16
    and scored by lighteval through tina's vLLM model class at Tina's settings (temperature 0.6,
    top_p 0.95, up to 32768 new tokens within the model's context, bf16, engine seed 1234), one
    engine on the CPU; the score reaches the run's events, `tina status --json` and DuckDB."""
    from tina_core.store.index import Store

    monkeypatch.setenv("TINA_CACHE", str(tiny_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = vllm_run.path.parent.parent
    assert ev_tasks.eval_backend([]) == "vllm"  # vLLM's CPU build is installed here
    plan = _tina(home, "eval", vllm_run.run_id, "--checkpoint", "6", "--tasks", "arith", "--dry-run").stdout
    assert "--dtype bfloat16" in plan and "lighteval --backend vllm" in plan
    out = _tina(home, "eval", vllm_run.run_id, "--checkpoint", "6", "--tasks", "arith", "--wait").stdout
    [ev] = runstate.evaluations(vllm_run).values()
    assert ev["state"] == "finished" and ev["metric"] == "extractive_match" and 0.0 <= ev["score"] <= 1.0, out
    [fin] = [e for e in vllm_run.read_events() if e["event"] == "eval_finished"]
    assert fin["backend"] == "vllm" and fin["gpus"] == [] and fin["scores"] == {"arith": ev["score"]}

    log = vllm_run.eval_log(ev["eval_id"]).read_text()
    assert "vLLM engine 0 on the CPU: 40 prompts" in log and "Initializing a V1 LLM engine (v0.31.0)" in log
    results = json.loads(Path(fin["results_path"]).read_text())
    cfg = results["config_general"]["model_config"]
    assert (cfg["dtype"], cfg["seed"], cfg["devices"], cfg["max_model_length"]) == ("bfloat16", 1234, ["cpu"], 256)
    gen = cfg["generation_parameters"]
    assert (gen["temperature"], gen["top_p"], gen["max_new_tokens"]) == (0.6, 0.95, 32768)
    assert cfg["model_path"] == str(vllm_run.evals / "merged" / "checkpoint-6")
    merged = json.loads((vllm_run.evals / "merged" / "checkpoint-6" / "config.json").read_text())
    assert merged["dtype"] == "bfloat16" and merged["hidden_size"] // merged["num_attention_heads"] == 32
    assert not (Path(fin["results_path"]).parents[2] / "engines").exists()  # its request files, once read

    run = json.loads(_tina(home, "status", vllm_run.run_id, "--json").stdout)
    assert {c["step"]: c["evals"] for c in run["checkpoints"]}[6] == {"arith": ev["score"]}
    samples = Store(home).eval_samples(vllm_run.run_id, ev["eval_id"])
    assert len(samples) == 40 and sum(s["score"] for s in samples) / 40 == pytest.approx(ev["score"])
    assert all(s["prompt"].startswith("What is ") and s["gold"].isdigit() for s in samples)
    # The completions are scored whole, <think> block included, as Tina's lighteval did.
    assert sum("<think>" in s["prediction"] for s in samples) > 0


def test_data_parallel_engines_answer_every_prompt_in_order(vllm_run, tiny_cache, tmp_path, monkeypatch):
    """Data parallel as on two GPUs, with two engine processes on the CPU standing for them: the
    prompts are dealt out in turn, each engine answers its share, and lighteval gets every answer
    back with its own prompt (the engines' answers are checked against the prompts' tokens) and
    scores all 40. The tiny base model, through the same call the job makes."""
    import pandas as pd

    from tina_core.evaluate.job import parse_results
    from tina_core.recipe.tiny_model import ensure_tiny_model

    monkeypatch.setenv("TINA_CACHE", str(tiny_cache))
    base = ensure_tiny_model({"num_heads": 2, "num_kv_heads": 1})  # built by vllm_run's training
    out = tmp_path / "out"
    code = ("from tina_core.evaluate.job import run_lighteval\n"
            f"run_lighteval({str(base)!r}, 'arith', {str(out)!r}, backend='vllm', devices=['cpu', 'cpu'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1200)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "vLLM engine 0 on the CPU: 20 prompts" in text and "vLLM engine 1 on the CPU: 20 prompts" in text
    res = parse_results(out, "arith")
    assert res["metric"] == "extractive_match" and 0.0 <= res["score"] <= 1.0
    details = pd.read_parquet(res["details_path"])
    assert len(details) == 40
    for doc, response in zip(details["doc"], details["model_response"]):
        assert doc["query"] in response["input"] and len(response["text"]) == 1
        assert response["text_post_processed"] is None  # scored whole, <think> and all
