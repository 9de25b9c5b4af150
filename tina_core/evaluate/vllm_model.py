"""tina's lighteval model class for vLLM: how the GPU box evaluates, and CI's vLLM lane on CPU.

lighteval 0.13's own vLLM backend was written for vllm 0.10 (its ``vllm`` extra pins
``>=0.10.0,<0.10.2``) and calls what later vLLM removed (``vllm.transformers_utils.tokenizer``,
``EngineArgs(swap_space=...)``, ``LLM.generate(prompt_token_ids=...)``); its import-time probe even
reports vLLM missing when the installed one is outside that range. Training pins vLLM inside TRL's
range. So lighteval keeps what it is good at (tasks, prompts through its ``PromptManager`` and the
model's chat template, metrics, results and details files) and this class generates with the pinned
vLLM's offline API, the way lighteval's vLLM backend did in the version Tina evaluated with:
prompts tokenized with the tokenizer's special tokens, one ``SamplingParams`` per prompt (Tina's
temperature and top_p, ``max_tokens`` up to the model's context), no stop strings under a chat
template (generation ends at EOS).

Data parallel: vLLM's offline ``LLM`` refuses ``data_parallel_size > 1`` in one process, so, as its
own offline data-parallel example (and lighteval's ray backend) does, each device gets an engine
process of its own (``python -m tina_core.evaluate vllm-engine REQUEST OUT``) and an interleaved
share of the prompts (long and short ones spread evenly). The engine processes are in the job's
process group: cancelling the evaluation ends them with it.

On CPU (vLLM's CPU build, CI's lane), where the hardware forces it and only there (``engine_env``,
``engine_args``): one engine for the machine instead of one per GPU, its KV cache sized by
``VLLM_CPU_KVCACHE_SPACE`` (GiB; vLLM's CPU build ignores gpu_memory_utilization), and eager
execution (vLLM's CPU build otherwise compiles the model with inductor at start-up, about 90 s on
two cores even for the tiny model; the computation is the same). The code path is otherwise the
GPU box's.

Light at import: lighteval and vLLM load inside the functions that need them (the job, the engine).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tina_core.evaluate.tasks import CPU_KVCACHE_SPACE_GIB, VLLM_SETTINGS, EvalError

CPU_DEVICE = "cpu"


def engine_env(device: str) -> dict[str, str]:
    """The environment one engine process adds to the job's: its one GPU, or on CPU the KV cache
    size vLLM's CPU build reads."""
    if device == CPU_DEVICE:
        return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KVCACHE_SPACE_GIB}
    return {"CUDA_VISIBLE_DEVICES": device}


def engine_args(model: str, max_model_len: int, device: str) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments for one engine (Tina's settings, lighteval's engine seed)."""
    s = VLLM_SETTINGS
    args: dict[str, Any] = {"model": model, "dtype": s["dtype"], "seed": s["seed"], "max_model_len": max_model_len,
                            "gpu_memory_utilization": s["gpu_memory_utilization"]}
    if device == CPU_DEVICE:
        args["enforce_eager"] = True  # no inductor compile at start-up on CPU (see the module's doc)
    return args


def model_context(model: str) -> int:
    """Tina's 32768-token context, or the model's own when it is shorter (the tiny model's 256)."""
    from transformers import AutoConfig

    own = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    return min(VLLM_SETTINGS["max_model_length"], int(own)) if own else VLLM_SETTINGS["max_model_length"]


def run_engines(model: str, max_model_len: int, requests: list[dict[str, Any]], devices: list[str],
                work: Path) -> list[dict[str, Any]]:
    """Generate every request (``{"prompt_token_ids", "sampling"}``), data parallel over ``devices``:
    one engine process per device, request i on device i mod N. Returns one ``{"prompt_token_ids",
    "text", "token_ids", "finish_reason"}`` per request, in order (checked against the prompts). An
    engine that fails ends the others."""
    work.mkdir(parents=True, exist_ok=True)
    shards = [list(range(i, len(requests), len(devices))) for i in range(len(devices))]
    running: list[tuple[str, list[int], Path, subprocess.Popen]] = []
    try:
        for i, (device, idx) in enumerate(zip(devices, shards)):
            if not idx:
                continue
            req, out = work / f"engine-{i}.json", work / f"engine-{i}.out.json"
            out.unlink(missing_ok=True)
            req.write_text(json.dumps({"engine": engine_args(model, max_model_len, device),
                                       "requests": [requests[j] for j in idx]}))
            print(f"vLLM engine {i} on {_where(device)}: {len(idx)} prompts", flush=True)
            cmd = [sys.executable, "-m", "tina_core.evaluate", "vllm-engine", str(req), str(out)]
            running.append((device, idx, out, subprocess.Popen(cmd, env={**os.environ, **engine_env(device)})))
        pending = list(running)
        while pending:
            for item in list(pending):
                device, _, _, proc = item
                rc = proc.poll()
                if rc is None:
                    continue
                pending.remove(item)
                if rc != 0:
                    why = f"exited with code {rc}" if rc > 0 else f"was killed by {signal.Signals(-rc).name}"
                    raise EvalError(f"the vLLM engine on {_where(device)} {why}")
            time.sleep(0.2)
    finally:
        for _, _, _, proc in running:
            if proc.poll() is None:
                proc.terminate()
        for _, _, _, proc in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    results: list[dict[str, Any]] = [{}] * len(requests)
    for device, idx, out, _ in running:
        rows = json.loads(out.read_text())
        if len(rows) != len(idx):
            raise EvalError(f"the vLLM engine on {_where(device)} answered {len(rows)} of {len(idx)} prompts")
        for j, row in zip(idx, rows):
            if row["prompt_token_ids"] != requests[j]["prompt_token_ids"]:
                raise EvalError(f"the vLLM engine on {_where(device)} answered prompt {j} out of order")
            results[j] = row
    shutil.rmtree(work, ignore_errors=True)  # lighteval's details keep prompts and outputs; a failure keeps these
    return results


def _where(device: str) -> str:
    return "the CPU" if device == CPU_DEVICE else f"GPU {device}"


def engine_main(request_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """One engine process: build ``vllm.LLM`` from the request, generate, write the outputs."""
    req = json.loads(Path(request_path).read_text())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(**req["engine"])
    prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in req["requests"]]
    params = [SamplingParams(**r["sampling"]) for r in req["requests"]]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    rows = [{"prompt_token_ids": list(o.prompt_token_ids), "text": [c.text for c in o.outputs],
             "token_ids": [list(c.token_ids) for c in o.outputs], "finish_reason": [c.finish_reason for c in o.outputs]}
            for o in outputs]
    tmp = Path(f"{out_path}.tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, out_path)
    return 0


def _display_name(model: str) -> str:
    """lighteval files results and its cache of generations under the model's name: a hub id as is,
    a local folder by its own name (an absolute path would put the cache inside the model's folder)."""
    return Path(model).name if os.path.isabs(model) else model


def devices_for(gpus: list[int]) -> list[str]:
    """One engine per evaluation GPU; on a machine without one, a single engine on the CPU."""
    return [str(g) for g in gpus] or [CPU_DEVICE]


def build_model(model: str, devices: list[str], *, work: Path, cache_dir: Path, system_prompt: str | None):
    """The lighteval model evaluating ``model`` with vLLM on ``devices`` (GPU ids, or ``["cpu"]``)."""
    config_cls, model_cls = _classes()
    from lighteval.models.model_input import GenerationParameters

    s = VLLM_SETTINGS
    config = config_cls(
        model_name=_display_name(model), model_path=model, system_prompt=system_prompt, cache_dir=str(cache_dir),
        devices=devices,
        dtype=s["dtype"], max_model_length=model_context(model), gpu_memory_utilization=s["gpu_memory_utilization"],
        seed=s["seed"], generation_parameters=GenerationParameters(
            max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_p=s["top_p"]))
    return model_cls(config, work)


@functools.cache
def _classes() -> tuple[Any, Any]:
    """The config and model classes, defined on first use: they subclass lighteval's."""
    from lighteval.models.abstract_model import LightevalModel, ModelConfig
    from lighteval.models.model_output import ModelResponse
    from lighteval.models.utils import uses_chat_template
    from lighteval.tasks.prompt_manager import PromptManager
    from lighteval.tasks.requests import Doc, SamplingMethod
    from lighteval.utils.cache_management import SampleCache, cached
    from transformers import AutoTokenizer

    class TinaVLLMConfig(ModelConfig):
        """What the engines are built with; lighteval writes it into the results' config_general."""

        model_path: str
        devices: list[str]
        dtype: str
        max_model_length: int
        gpu_memory_utilization: float
        seed: int
        add_special_tokens: bool = True  # as lighteval's vLLM backend: the tokenizer adds its BOS

    class TinaVLLMModel(LightevalModel):
        """Generative tasks only (all of tina's are): prompts from lighteval, text from vLLM."""

        def __init__(self, config: TinaVLLMConfig, work: Path) -> None:
            self.config = config
            self.work = work
            self.model_name = config.model_name
            self._tokenizer = AutoTokenizer.from_pretrained(config.model_path)
            self.use_chat_template = uses_chat_template(tokenizer=self._tokenizer)
            self.prompt_manager = PromptManager(self.use_chat_template, self._tokenizer, config.system_prompt)
            self._cache = SampleCache(config)

        @property
        def tokenizer(self):
            return self._tokenizer

        @property
        def add_special_tokens(self) -> bool:
            return self.config.add_special_tokens

        @property
        def max_length(self) -> int:
            return self.config.max_model_length

        def _request(self, doc: Doc, prompt_ids: list[int]) -> dict[str, Any]:
            room = self.max_length - len(prompt_ids)
            if room < 1:
                raise EvalError(f"{doc.task_name} document {doc.id}: its prompt has {len(prompt_ids)} tokens, "
                                f"the model's context {self.max_length}")
            sampling = self.config.generation_parameters.to_vllm_dict()
            wanted = sampling.pop("max_tokens", None) or doc.generation_size or room
            sampling.update(n=doc.num_samples, max_tokens=min(wanted, room),
                            stop=[] if self.use_chat_template else list(doc.stop_sequences or []))
            return {"prompt_token_ids": prompt_ids, "sampling": sampling}

        @cached(SamplingMethod.GENERATIVE)
        def greedy_until(self, docs: list[Doc]) -> list[ModelResponse]:
            contexts = [self.prompt_manager.prepare_prompt(doc) for doc in docs]
            ids = self._tokenizer(contexts, add_special_tokens=self.add_special_tokens)["input_ids"]
            requests = [self._request(doc, list(p)) for doc, p in zip(docs, ids)]
            outputs = run_engines(self.config.model_path, self.max_length, requests, self.config.devices, self.work)
            return [ModelResponse(input=context, input_tokens=list(p), text=o["text"], output_tokens=o["token_ids"])
                    for context, p, o in zip(contexts, ids, outputs)]

        def loglikelihood(self, docs: list[Doc]) -> list[ModelResponse]:
            raise NotImplementedError("tina's vLLM model runs generative tasks only")

        def loglikelihood_rolling(self, docs: list[Doc]) -> list[ModelResponse]:
            raise NotImplementedError("tina's vLLM model runs generative tasks only")

    return TinaVLLMConfig, TinaVLLMModel
