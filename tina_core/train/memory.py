"""What a recipe needs of each GPU, estimated before anything launches.

``estimate(recipe, grpo)`` adds up, per training GPU: the base model's weights, the LoRA adapter with
its gradients and AdamW state (ZeRO-2 splits the optimizer's share over the ranks), DeepSpeed's
gradient reduce bucket (ZeRO-1/2: 5e8 elements, 0.93 GiB in bf16, whatever the adapter's size), the activations
of one micro-batch at the recipe's longest sequence with gradient checkpointing, vLLM's reservation
(``vllm_gpu_memory_utilization`` of the GPU, colocated; none while it sleeps or serves from another
GPU) and the CUDA/NCCL runtime. ``tina run --dry-run`` prints it; a launch that cannot fit the GPUs
it would use is refused with these numbers (``--force`` launches anyway).

The architecture comes from the model's ``config.json`` (a local folder, or the Hugging Face cache
for a hub id), else from ``KNOWN_ARCHITECTURES``, written here, so a dry run on a laptop without the
model still has the numbers. Light: no torch, no transformers.

It is a model of where the memory goes, not a measurement: the activation counts follow TRL 1.16's
training step on a Qwen2/Llama-style decoder (one micro-batch of ``per_device_train_batch_size``
completions; log-probabilities through TRL's chunked LM head, so no full logits), and
``bench/gpu_step.py`` prints it beside the peak that PyTorch measures on a real GPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

GIB = 2**30
MIB = 2**20

# config.json of models the Tina recipes use, as published (the values an estimate and
# bench/gpu_step.py's random model of the same shape need).
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": 1536,
        "initializer_range": 0.02,
        "intermediate_size": 8960,
        "max_position_embeddings": 131072,
        "max_window_layers": 21,
        "model_type": "qwen2",
        "num_attention_heads": 12,
        "num_hidden_layers": 28,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
}

# Total memory of common training GPUs as NVML reports it (MiB): what a dry run compares against
# when the machine has no GPU of its own.
KNOWN_GPUS_MIB: dict[str, int] = {
    "L40S": 46068,
    "A100 40GB": 40960,
    "A100 80GB": 81920,
    "H100 80GB": 81559,
    "H200": 143771,
    "RTX 4090": 24564,
    "L4": 23034,
}

RUNTIME_BYTES = 1 * GIB        # CUDA context, cuBLAS workspace, NCCL buffers per process
# DeepSpeed ZeRO-1/2 reduce the gradients through a bucket of ``reduce_bucket_size`` elements, one
# buffer allocated whole (stage_1_and_2.py, ``setup_buckets``; a second only with overlap_comm, off
# by default below ZeRO-3), in the engine's dtype under ZeRO-2 and fp32 under ZeRO-1. accelerate
# builds its DeepSpeed config without the key (recipes/accelerate/zero2.yaml sets none), so
# DeepSpeed's default applies: 5e8 (``DeepSpeedZeroConfig.reduce_bucket_size``, deepspeed 0.19.8,
# the version requirements/gpu.txt pins; tests/test_memory.py reads it where DeepSpeed is installed).
ZERO_REDUCE_BUCKET_ELEMENTS = 500_000_000
ZERO_DEFAULTS_READ_FROM = "0.19.8"  # the deepspeed release the default above was read from
LM_HEAD_TILE_BYTES = 4096 * 32768 * 4  # TRL's chunked log-prob tile (tokens x vocab slice, fp32)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "auto": 2}


@dataclass(frozen=True)
class Architecture:
    """The decoder's shape (Qwen2/Llama family: attention with grouped KV heads, gated MLP)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # Qwen2's q/k/v projections have biases

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Architecture":
        return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
                   intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
                   num_heads=int(cfg["num_attention_heads"]),
                   num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   attention_bias=cfg.get("model_type") == "qwen2" or bool(cfg.get("attention_bias", False)))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear projection in one layer."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def parameters(self) -> int:
        shapes = self.module_shapes()
        per_layer = sum(a * b for a, b in shapes.values()) + 2 * self.hidden_size  # two RMSNorms
        if self.attention_bias:
            per_layer += self.hidden_size + 2 * self.kv_dim
        embed = self.vocab_size * self.hidden_size
        return self.num_layers * per_layer + embed * (1 if self.tie_word_embeddings else 2) + self.hidden_size

    def lora_parameters(self, r: int, target_modules: list[str] | str | None) -> int:
        shapes = self.module_shapes()
        if target_modules in (None, "all-linear"):
            targets = list(shapes)
        else:
            targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        return self.num_layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in targets if m in shapes)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.kv_dim * dtype_bytes


def _hf_cached_config(repo_id: str) -> Path | None:
    """The hub model's config.json if it is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a name that is no repo id
        return None
    return Path(found) if isinstance(found, str) else None


def model_config(recipe) -> tuple[dict[str, Any] | None, str]:
    """(config.json values, where they came from) for the recipe's base model, or (None, why)."""
    name = str(recipe.get("model.name_or_path") or "")
    if recipe.is_tiny:
        from tina_core.recipe.tiny_model import TinyParams

        p = TinyParams(**(recipe.get("model.tiny") or {}))
        return ({"vocab_size": p.vocab_size, "hidden_size": p.hidden_size, "intermediate_size": p.intermediate_size,
                 "num_hidden_layers": p.num_layers, "num_attention_heads": p.num_heads,
                 "num_key_value_heads": p.num_kv_heads, "model_type": "qwen2"}, "the tiny model's parameters")
    local = Path(os.path.expanduser(name))
    path = local / "config.json" if local.is_dir() else _hf_cached_config(name)
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text()), str(path)
        except (OSError, ValueError) as e:
            return None, f"{path}: unreadable ({e})"
    if name in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[name], f"tina's table of known architectures ({name})"
    return None, f"no config.json for {name} here (not downloaded, and not in tina's table of known architectures)"


@dataclass(frozen=True)
class Estimate:
    """Bytes per training GPU, by part, for GPUs of ``gpu_bytes``."""

    parts: dict[str, int]
    gpu_bytes: int
    source: str                # where the architecture came from
    sequence_tokens: int       # the longest sequence a micro-batch holds
    notes: tuple[str, ...] = ()
    vllm_sleeps: bool = False  # vLLM's share and the activations are never held at once

    @property
    def total(self) -> int:
        parts = dict(self.parts)
        if self.vllm_sleeps:
            return sum(v for k, v in parts.items() if k not in ("vllm", "activations")) + max(
                parts.get("vllm", 0), parts.get("activations", 0))
        return sum(parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes

    def lines(self) -> list[str]:
        out = [f"{LABELS[k]:<24} {v / GIB:6.1f} GiB" + (f"  ({_VLLM_NOTE})" if k == "vllm" else "")
               for k, v in self.parts.items()]
        room = (self.gpu_bytes - self.total) / GIB
        out.append(f"{'total':<24} {self.total / GIB:6.1f} GiB of {self.gpu_bytes / GIB:.1f} GiB: "
                   + (f"fits, {room:.1f} GiB to spare" if room >= 0 else f"does not fit, {-room:.1f} GiB short"))
        return out + [f"({n})" for n in self.notes]


_VLLM_NOTE = "vllm_gpu_memory_utilization of the GPU"
LABELS = {"runtime": "CUDA/NCCL runtime", "weights": "weights", "lora_optimizer": "LoRA + grads + AdamW",
          "zero_bucket": "ZeRO reduce bucket", "activations": "activations", "generation_kv": "generation KV cache",
          "vllm": "vLLM reservation"}


def estimate(recipe, grpo: Mapping[str, Any], gpu_bytes: int) -> Estimate | None:
    """The per-GPU estimate of a GPU recipe on GPUs of ``gpu_bytes`` each (vLLM's share is a
    fraction of it); ``grpo`` the resolved GRPOConfig values (the recipe's over TRL's own
    defaults). None when the model's architecture is unknown here."""
    cfg, source = model_config(recipe)
    if cfg is None:
        return None
    arch = Architecture.from_config(cfg)
    notes: list[str] = []
    a = DTYPE_BYTES.get(str(recipe.get("model.dtype", "auto")), 2)
    world = max(1, recipe.gpus) * recipe.num_machines
    zero = _zero_stage(recipe)

    prompt = int(recipe.get("dataset.max_prompt_tokens") or 512)
    seq = prompt + int(grpo.get("max_completion_length") or 0)
    use_vllm = bool(grpo.get("use_vllm"))
    cap = grpo.get("vllm_max_model_length") if use_vllm else None
    if cap and int(cap) < seq:
        seq = int(cap)
        notes.append(f"vLLM ends every sequence at vllm_max_model_length, {cap} tokens with the prompt")
    micro = int(grpo.get("per_device_train_batch_size") or 8)
    tokens = micro * seq

    n_lora = arch.lora_parameters(int(recipe.get("lora.r") or 8), recipe.get("lora.target_modules"))
    # PEFT keeps adapter weights in fp32 (4 B); AdamW's two moments, the fp32 master copy and the
    # fp32 gradient (16 B) are split over the ranks under ZeRO-1/2.
    lora = n_lora * (4 + 16 / (world if zero >= 1 else 1))

    h, i, kv = arch.hidden_size, arch.intermediate_size, arch.kv_dim
    # One recomputed layer's saved tensors, per token, in hidden-size, kv and intermediate units.
    # Without dropout: two norms' outputs, q, rotated q, attention output, its o_proj input; k, v and
    # rotated k; gate, up, act(gate) and their product; the backward holds about two
    # intermediate-size gradients more. LoRA dropout adds a copy (and a mask) of each adapted
    # module's input.
    layer_h, layer_kv, layer_i = 6.0, 3.0, 6.0
    if float(recipe.get("lora.lora_dropout") or 0.0) > 0:
        layer_h, layer_i = layer_h + 8.0, layer_i + 1.5
    layer = tokens * (layer_h * h + layer_kv * kv + layer_i * i) * a
    if bool(grpo.get("gradient_checkpointing", True)):
        activations = arch.num_layers * tokens * h * a + layer  # each layer's input, then one layer
    else:
        activations = arch.num_layers * layer
        notes.append("gradient checkpointing off: every layer's activations are kept")
    if str(recipe.get("model.attn_implementation")) == "eager":
        activations += micro * arch.num_heads * seq * seq * a  # one layer's attention matrix
    activations += tokens * h * (a + 4) + LM_HEAD_TILE_BYTES  # final hidden, its fp32 gradient, a tile

    parts = {"runtime": RUNTIME_BYTES, "weights": arch.parameters() * a, "lora_optimizer": int(lora)}
    if zero in (1, 2):
        parts["zero_bucket"] = ZERO_REDUCE_BUCKET_ELEMENTS * (a if zero == 2 else 4)
    parts["activations"] = int(activations)
    sleeps = False
    if use_vllm and str(grpo.get("vllm_mode") or "colocate") == "colocate":
        parts["vllm"] = int(float(grpo.get("vllm_gpu_memory_utilization") or 0.3) * gpu_bytes)
        sleeps = bool(grpo.get("vllm_enable_sleep_mode"))
        if sleeps:
            notes.append("vLLM sleeps during the training step: its share and the activations are never held at once")
    elif use_vllm:
        notes.append("vLLM serves from a GPU of its own (vllm_mode server): nothing reserved here")
    else:
        # transformers' generate keeps a KV cache for the whole local generation batch
        batch = micro * int(grpo.get("steps_per_generation") or grpo.get("gradient_accumulation_steps") or 1)
        parts["generation_kv"] = batch * seq * arch.kv_bytes_per_token(a)
    return Estimate(parts, gpu_bytes, source, seq, tuple(notes), sleeps)


def on_known_gpus(recipe, grpo: Mapping[str, Any]) -> list[tuple[str, Estimate]]:
    """The estimate on each of the common GPUs (for a dry run on a machine without one)."""
    out = []
    for name, mib in KNOWN_GPUS_MIB.items():
        est = estimate(recipe, grpo, mib * MIB)
        if est is not None:
            out.append((name, est))
    return out


def _zero_stage(recipe) -> int:
    """The DeepSpeed ZeRO stage of the recipe's accelerate config (0 when it is not DeepSpeed)."""
    from tina_core.recipe.loader import RecipeError, accelerate_config_path, parse_yaml

    try:
        cfg = parse_yaml(accelerate_config_path(recipe).read_text()) or {}
    except (RecipeError, OSError):
        return 0
    if cfg.get("distributed_type") != "DEEPSPEED":
        return 0
    return int((cfg.get("deepspeed_config") or {}).get("zero_stage") or 0)
