"""A GPU smoke run, ready for the day a GPU is there: Open-RS2's resolved GRPO/LoRA recipe (bf16,
gradient checkpointing, 3,584-token completions, 6 generations) on a model of
DeepSeek-R1-Distill-Qwen-1.5B's exact architecture (its config.json values are in
tina_core/train/memory.py), random weights, a synthetic byte-level BPE tokenizer of the same
vocabulary size, synthetic prompts (no hub), through tina's own trainer process and supervisor
(`tina run`), for a few steps on the GPUs present. vLLM generates when it is installed, else
transformers' generate (``use_vllm: false``).

    .venv/bin/python bench/gpu_step.py [--steps 3] [--keep DIR]
    .venv/bin/python bench/gpu_step.py --cpu-dry [--steps 2]

Prints s/step (the first step apart: it warms up), peak GPU memory per GPU (NVML samples from the
run's system.jsonl, beside tina's own estimate, tina_core.train.memory), generated tokens/s
(completions x their mean length over the step's wall time) and the projected cost to step 850 on
2 x L40S, by both price conventions, beside the paper's Open-RS2 training dollars. A random model
never writes EOS, so every completion runs to its full length: a worst case for time and memory.

The projection assumes a step on one L40S takes as long as one here with the same work per GPU (on
one GPU, gradient accumulation doubles to keep Tina's 8 prompts per optimizer step, and the time
per step is halved for two). An L40S is slower than an H100 or H200; nothing here measures by how
much.

--cpu-dry runs the same code path with a scaled-down shape on the CPU (no bf16, no vLLM, short
completions); CI runs it (tests/test_gpu_step.py, an extended test).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tina_core.train import memory  # noqa: E402

MODEL_ID = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
RECIPE = ROOT / "recipes" / "tina" / "open_rs2.yaml"
STEPS_TO_PROJECT = 850  # Open-RS2's stop_at_step
TINA_GPUS = 2
# The distilled model's tokenizer: 151,643 BPE entries, then its special tokens up to 151,935.
SPECIALS = {"eos": "<｜end▁of▁sentence｜>", "user": "<｜User｜>", "assistant": "<｜Assistant｜>",
            "bos": "<｜begin▁of▁sentence｜>", "pad": "<|fim_pad|>"}
DRY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 4096}


def synthetic_tokenizer(vocab_size: int, out: Path):
    """A byte-level BPE with ``vocab_size`` ids: the 256 byte symbols, merges of letters and digits
    into two- and three-character tokens, then the special tokens (as the distilled model's: BPE
    first, specials last). Built for Qwen2Tokenizer's own pipeline, which transformers rebuilds on load."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer, Qwen2Tokenizer

    n_special = max(len(SPECIALS), 293 if vocab_size == 151936 else len(SPECIALS))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    base = string.ascii_lowercase + string.ascii_uppercase + string.digits
    merges: list[tuple[str, str]] = []
    target = vocab_size - n_special
    pairs = [(a, b) for a in base for b in base]
    triples = ((a + b, c) for a in base for b in base for c in base)
    for left, right in [*pairs, *triples]:
        if len(vocab) >= target:
            break
        vocab[left + right] = len(vocab)
        merges.append((left, right))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token=SPECIALS["eos"],
                         bos_token=SPECIALS["bos"], pad_token=SPECIALS["pad"], padding_side="left")
    extra = [SPECIALS["user"], SPECIALS["assistant"]]
    extra += [f"<|extra_{i}|>" for i in range(vocab_size - len(tok) - len(extra))]
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == vocab_size, (len(loaded), vocab_size)
    return loaded


def build_model(out: Path, dry: bool) -> dict:
    """The random-weight model and its tokenizer in ``out``; returns its config.json values."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = dict(memory.KNOWN_ARCHITECTURES[MODEL_ID])
    if dry:
        cfg.update(DRY_SHAPE, torch_dtype="float32")
    tok = synthetic_tokenizer(cfg["vocab_size"], out)
    cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = Qwen2Config(**{k: v for k, v in cfg.items() if k != "architectures"})
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    dtype = torch.float32 if dry else torch.bfloat16
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return cfg


def write_prompts(out: Path, rows: int, words: int = 40) -> Path:
    """Synthetic problems of ``words`` words (40: a few sentences, as Open-RS's) with numeric golds."""
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.jsonl").open("w") as f:
        for _ in range(rows):
            text = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(words))
            f.write(json.dumps({"problem": text + "?", "answer": str(rng.randint(0, 999))}) + "\n")
    return out


def gpus_present() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def overrides(model: Path, data: Path, steps: int, gpus: int, dry: bool, use_vllm: bool) -> list[str]:
    out = [f"model.name_or_path={model}", f"dataset.name={data}", "dataset.system_prompt=open_rs",
           f"stop_at_step={steps}", "grpo.save_steps=100000", f"grpo.use_vllm={str(use_vllm).lower()}"]
    if dry:
        return out + ["launch.gpus=0", "model.dtype=float32", "grpo.bf16=false", "grpo.max_completion_length=16",
                      "grpo.gradient_accumulation_steps=1", "launch.env.OMP_NUM_THREADS=1"]
    # Tina's 8 prompts per optimizer step on the GPUs present (per-GPU work as on Tina's two)
    accumulation = 4 * TINA_GPUS // gpus if TINA_GPUS % gpus == 0 else 4
    return out + [f"launch.gpus={gpus}", f"grpo.gradient_accumulation_steps={accumulation}"]


def tina(home: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cpu-dry", action="store_true", help="scaled-down shape on the CPU, same code path")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (model, data, run)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    a = ap.parse_args()

    gpus = 0 if a.cpu_dry else gpus_present()
    if not a.cpu_dry and gpus == 0:
        print("no GPU here: run with --cpu-dry for the scaled-down shape on the CPU", file=sys.stderr)
        return 2
    use_vllm = not a.cpu_dry and importlib.util.find_spec("vllm") is not None
    work = a.keep or Path(tempfile.mkdtemp(prefix="tina-gpu-step-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cfg = build_model(work / "model", a.cpu_dry)
        data = write_prompts(work / "data", rows=8 * (a.steps + 1), words=10 if a.cpu_dry else 40)
        sets = overrides(work / "model", data, a.steps, gpus, a.cpu_dry, use_vllm)
        home = work / "home"
        proc = tina(home, "run", str(RECIPE), "--name", "gpu-step", *[x for s in sets for x in ("--set", s)],
                    timeout=a.timeout)
        runs = sorted((home / "runs").glob("*")) if (home / "runs").exists() else []
        if proc.returncode != 0 or not runs:
            log = (runs[0] / "train.log").read_text()[-4000:] if runs and (runs[0] / "train.log").exists() else ""
            print(f"tina run failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{log}", file=sys.stderr)
            return 1
        return report(runs[0], cfg, gpus, use_vllm, a.cpu_dry, sets)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def report(run: Path, cfg: dict, gpus: int, use_vllm: bool, dry: bool, sets: list[str]) -> int:
    from tina_core.recipe.configs import resolved_grpo
    from tina_core.recipe.loader import load_recipe
    from tina_core.recipe import paper

    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "reward" in r and "step_time" in r]
    recipe = load_recipe(run / "recipe.yaml")
    shape = "scaled-down (CPU dry mode)" if dry else f"{MODEL_ID}'s architecture, random weights"
    print(f"model: {shape}: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}")
    print(f"device: {'CPU' if dry else f'{gpus} GPU(s)'}; generation: {'vLLM (colocated)' if use_vllm else 'transformers generate'}")
    times = [float(r["step_time"]) for r in rows]
    if not times:
        print("no step was logged", file=sys.stderr)
        return 1
    warm = times[1:] or times
    s_step = statistics.median(warm)
    print(f"steps: {len(times)}; first {times[0]:.2f} s; s/step {s_step:.2f} (median of the rest)")
    completions = int(recipe.prompts_per_step * int(recipe.grpo["num_generations"]))
    lengths = [float(r["completions/mean_length"]) for r in rows]
    tokens = [completions * n / t for n, t in zip(lengths, times)][1:] or [completions * lengths[0] / times[0]]
    print(f"generated tokens/s: {statistics.median(tokens):.0f} ({completions} completions a step, "
          f"mean length {statistics.mean(lengths):.0f} of {recipe.grpo['max_completion_length']})")
    samples = read_jsonl(run / "system.jsonl")
    if samples:
        peak = {}
        for s in samples:
            for g in s.get("gpus", []):
                peak[g["index"]] = max(peak.get(g["index"], 0), g["mem_used"])
        total = samples[-1]["gpus"][0]["mem_total"] * memory.MIB
        print("peak GPU memory (NVML): " + ", ".join(f"GPU {i} {mib / 1024:.1f} GiB" for i, mib in sorted(peak.items()))
              + f" of {total / memory.GIB:.1f} GiB")
        est = memory.estimate(recipe, resolved_grpo(recipe), total)
        if est is not None:
            print(f"tina's estimate for this run: {est.total / memory.GIB:.1f} GiB per GPU")
    else:
        print("peak GPU memory: - (no GPU sampled)")
    if dry:
        full = load_recipe(RECIPE)
        est = memory.estimate(full, resolved_grpo(full), memory.KNOWN_GPUS_MIB["L40S"] * memory.MIB)
        print(f"tina's estimate for the full shape on an L40S: {est.total / memory.GIB:.1f} GiB per GPU")
    # Per-GPU work here equals one of Tina's two GPUs' (see the docstring): two share the step's time.
    per_step_on_two = s_step * (max(gpus, 1) / TINA_GPUS) if not dry else s_step
    hours = per_step_on_two * STEPS_TO_PROJECT / 3600
    price = float(recipe.get("price.gpu_hour_usd") or 1.0)
    by_gpu_hour, by_machine_hour = hours * TINA_GPUS * price, hours * price
    paper_usd = paper.rows_for("open_rs2")["cost"]["train"]
    print(f"projected to step {STEPS_TO_PROJECT} on 2 x L40S{' (CPU dry mode: the arithmetic only)' if dry else ''} "
          f"({hours:.1f} h): ${by_gpu_hour:.2f} at "
          f"${price:.2f}/GPU-hour (tina's convention), ${by_machine_hour:.2f} at ${price:.2f} per 2-GPU "
          f"machine-hour; the paper: ${paper_usd} training")
    print(f"overrides of {RECIPE.relative_to(ROOT)}: --set {' --set '.join(sets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
