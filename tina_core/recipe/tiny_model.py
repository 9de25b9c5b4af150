"""A tiny Qwen2 "distilled base" built offline, so the whole Tina pipeline runs on a CPU.

The build: a byte-level BPE tokenizer (Qwen2Tokenizer's own pipeline) trained on the arithmetic
corpus, a random 2-layer Qwen2, and a short SFT warm start on single-digit additions whose targets are
almost never well formatted (only ``formatted_fraction`` close their think block with
"\\n</think>\\n"). The result answers sums but rarely formats its answers: GRPO with a format reward
then shows the paper's phase transition (format reward flat near 0, then a jump) within minutes.

Built models are cached under ``$TINA_CACHE`` (default ``$TINA_HOME/cache``) keyed by a hash of the
build parameters and ``BUILD_VERSION``; a file lock lets concurrent builders wait for one another.
Heavy imports stay inside the build functions.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tina_core.rundir import TinaError, cache_root

# Bump when the build below changes what it produces: cached models are then rebuilt.
BUILD_VERSION = 1
MANIFEST = "tina-tiny.json"
DATA_DIR = Path(__file__).resolve().parents[1] / "tiny_data" / "tiny_arith"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Plain (not special) added tokens: TRL decodes completions with skip_special_tokens=True, and the
# format reward must see the tags.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# A user turn as CHAT_TEMPLATE renders it, for the tokenizer's training corpus (the tokenizer does
# not exist yet then; everywhere else the template itself is applied).
CHAT_TEMPLATE_RENDER = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class TinyParams:
    """Build parameters (a recipe's ``model.tiny`` mapping)."""

    vocab_size: int = 512  # at most: the arithmetic corpus yields about 300 tokens
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    sft_steps: int = 600
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    formatted_fraction: float = 0.02
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"params": dataclasses.asdict(self), "build": BUILD_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- the arithmetic task ----------------------------------------------------------------------------
def problem_text(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def completion_text(a: int, b: int, formatted: bool, rng: random.Random) -> str:
    """A worked answer. Well formatted: the think block closes with "\\n</think>\\n" (what Tina's
    format reward checks); otherwise one of two near misses."""
    work = f"{a}+{b}={a + b}"
    if formatted:
        return f"<think>\n{work}\n</think>\n<answer>{a + b}</answer>"
    if rng.random() < 0.5:
        return f"<think>\n{work}</think>\n<answer>{a + b}</answer>"
    return f"<think>\n{work}\n</think> <answer>{a + b}</answer>"


def arith_rows() -> list[dict[str, str]]:
    """The GRPO dataset: every single-digit sum, in a fixed shuffled order."""
    rows = [{"problem": problem_text(a, b), "answer": str(a + b)} for a in range(10) for b in range(10)]
    random.Random(0).shuffle(rows)
    return rows


def write_arith_data(folder: Path = DATA_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in arith_rows()))
    return path


# --- cache ----------------------------------------------------------------------------------------
def tiny_model_dir(params: TinyParams, home: str | os.PathLike | None = None) -> Path:
    return cache_root(home) / "tiny" / f"tiny-{params.key()}"


def _params(params: TinyParams | dict | None) -> TinyParams:
    if isinstance(params, TinyParams):
        return params
    try:
        return TinyParams(**(params or {}))
    except TypeError as e:
        fields = ", ".join(f.name for f in dataclasses.fields(TinyParams))
        raise TinaError(f"model.tiny: {e}; expected some of: {fields}") from None


def ensure_tiny_model(params: TinyParams | dict | None = None, home: str | os.PathLike | None = None,
                      log=print) -> Path:
    """The cached tiny model's folder, building it first if needed (safe across processes)."""
    p = _params(params)
    final = tiny_model_dir(p, home)
    if (final / MANIFEST).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same model
        if (final / MANIFEST).exists():
            return final
        tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_model(p, tmp, log=log)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


# --- the build ------------------------------------------------------------------------------------
def _train_tokenizer(p: TinyParams, corpus: list[str], out: Path):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, AutoTokenizer, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # The same normaliser and pre-tokeniser as Qwen2Tokenizer: transformers rebuilds that pipeline on
    # load, so a tokenizer trained with any other would give different ids.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=p.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    qwen = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", padding_side="left")
    qwen.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    qwen.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    qwen.chat_template = CHAT_TEMPLATE
    qwen.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)  # what training will load: ids must match it


def build_tiny_model(params: TinyParams | dict | None, out: Path, log=print) -> dict[str, Any]:
    """Build tokenizer + model + SFT warm start into ``out``; returns the manifest."""
    import torch

    p = _params(params)
    torch.set_flush_denormal(True)  # denormals in softmax gradients slow CPU steps ~40x
    # Ops this small are slower split over threads (3-4x slower on 2 busy cores than on one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(p, out, log)
    finally:
        torch.set_num_threads(threads)


def _build(p: TinyParams, out: Path, log) -> dict[str, Any]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(p.seed)
    torch.manual_seed(p.seed)
    pairs = [(a, b) for a in range(10) for b in range(10)]

    def chat(a: int, b: int) -> str:
        return CHAT_TEMPLATE_RENDER.format(user=problem_text(a, b))

    corpus = [chat(a, b) + completion_text(a, b, f, rng) for a, b in pairs for f in (True, False)]
    tok = _train_tokenizer(p, corpus, out)
    # The chat prompt as training will render it, tokenised once per problem / completion.
    prompts = {(a, b): tok.apply_chat_template([{"role": "user", "content": problem_text(a, b)}],
                                               add_generation_prompt=True, tokenize=True, return_dict=False)
               for a, b in pairs}
    completions: dict[str, list[int]] = {}

    def completion_ids(text: str) -> list[int]:
        if text not in completions:
            completions[text] = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return completions[text]

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                      num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
                      num_key_value_heads=p.num_kv_heads, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, use_cache=True, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=p.sft_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / p.sft_steps))
    n_formatted = 0
    loss_v = float("nan")
    for step in range(p.sft_steps):
        seqs, labels = [], []
        for _ in range(p.sft_batch_size):
            a, b = rng.choice(pairs)
            formatted = rng.random() < p.formatted_fraction
            n_formatted += formatted
            pr = prompts[(a, b)]
            co = completion_ids(completion_text(a, b, formatted, rng))
            seqs.append(pr + co)
            labels.append([-100] * len(pr) + co)  # learn the answer, not the question
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_v = loss.item()
        if step % 100 == 0 or step == p.sft_steps - 1:
            log(f"tiny: sft step {step + 1}/{p.sft_steps} loss {loss_v:.3f}")
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    manifest = {"params": dataclasses.asdict(p), "build_version": BUILD_VERSION, "vocab": len(tok),
                "parameters": sum(x.numel() for x in model.parameters()), "sft_final_loss": round(loss_v, 4),
                "sft_formatted_targets": n_formatted, "sft_targets": p.sft_steps * p.sft_batch_size,
                "build_seconds": round(time.time() - t0, 1)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"tiny: built tiny-{p.key()} ({manifest['parameters']} parameters) in {manifest['build_seconds']} s")
    return manifest


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build the tiny model, or rewrite the shipped GRPO data.")
    ap.add_argument("--write-data", action="store_true", help=f"write {DATA_DIR}/train.jsonl")
    args = ap.parse_args()
    if args.write_data:
        print(write_arith_data())
    else:
        print(ensure_tiny_model())
