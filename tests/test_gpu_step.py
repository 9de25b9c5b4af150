"""bench/gpu_step.py, the GPU smoke run: its model is the distilled model's exact architecture, its
tokenizer has the requested vocabulary size, its overrides keep Open-RS2's recipe, and its CPU dry
mode (a scaled-down shape through the same `tina run`, trainer and supervisor) prints every figure."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.train import memory

ROOT = RECIPES_DIR.parent
sys.path.insert(0, str(ROOT / "bench"))
import gpu_step  # noqa: E402


def test_the_model_has_the_distilled_model_s_exact_architecture():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = {k: v for k, v in memory.KNOWN_ARCHITECTURES[gpu_step.MODEL_ID].items() if k != "architectures"}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    arch = memory.Architecture.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == arch.parameters() == 1_777_088_000
    assert model.lm_head.weight.shape == (151936, 1536) and model.lm_head.weight is not model.model.embed_tokens.weight


def test_the_synthetic_tokenizer_has_the_vocabulary_size(tmp_path):
    tok = gpu_step.synthetic_tokenizer(4096, tmp_path)
    assert len(tok) == 4096 and type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.pad_token_id != tok.eos_token_id
    text = "what is the sum of these numbers?"
    assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.parametrize("gpus, accumulation", [(1, 8), (2, 4)])
def test_the_gpu_overrides_keep_open_rs2_and_its_8_prompts_a_step(tmp_path, gpus, accumulation):
    sets = gpu_step.overrides(tmp_path / "m", tmp_path / "d", 3, gpus, dry=False, use_vllm=False)
    recipe = load_recipe(gpu_step.RECIPE, sets)
    assert recipe.grpo["gradient_accumulation_steps"] == accumulation and recipe.prompts_per_step == 8
    g = recipe.grpo
    assert (g["bf16"], g["gradient_checkpointing"], g["max_completion_length"], g["num_generations"]) == (True, True, 3584, 6)
    assert g["use_vllm"] is False and recipe.stop_at_step == 3 and recipe.gpus == gpus
    assert load_recipe(gpu_step.RECIPE, gpu_step.overrides(tmp_path, tmp_path, 3, 2, False, True)).grpo["use_vllm"]


@pytest.mark.extended
def test_cpu_dry_mode_prints_every_figure(tiny_cache):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--cpu-dry", "--steps", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-3000:]
    assert "model: scaled-down (CPU dry mode): 2 layers, hidden 64, vocab 4096" in out
    assert "generation: transformers generate" in out
    assert float(re.search(r"s/step ([\d.]+)", out).group(1)) > 0
    assert int(re.search(r"generated tokens/s: (\d+) \(6 completions a step", out).group(1)) > 0
    assert "peak GPU memory: - (no GPU sampled)" in out
    assert re.search(r"tina's estimate for the full shape on an L40S: [\d.]+ GiB per GPU", out)
    m = re.search(r"\$([\d.]+) at \$1\.00/GPU-hour \(tina's convention\), \$([\d.]+) at \$1\.00 per 2-GPU machine-hour; "
                  r"the paper: \$15 training", out)
    assert m and float(m.group(1)) == pytest.approx(2 * float(m.group(2)), abs=0.011)
