"""The per-GPU memory estimate (tina_core.train.memory) on every Tina recipe and the common GPU
sizes, the dry run that prints it, and the refusal of a launch that cannot fit. GPUs are the
stand-in NVML of test_gpu (two L40S); the estimate, the checks and the CLI are the real ones."""

from __future__ import annotations

import json
import sys

import pytest

from tina_core.recipe.configs import resolved_grpo
from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.rundir import TinaError
from tina_core.train import memory
from tina_core.train.launcher import check_memory

TINA = RECIPES_DIR / "tina"
L40S = memory.KNOWN_GPUS_MIB["L40S"] * memory.MIB
UNCAPPED_AT_TINAS_SHARE = ["grpo.vllm_max_model_length=9472", "grpo.vllm_gpu_memory_utilization=0.7"]


def estimate(path, *overrides, gpu_bytes=L40S):
    recipe = load_recipe(path, list(overrides))
    return memory.estimate(recipe, resolved_grpo(recipe), gpu_bytes)


def test_the_known_architecture_is_the_distilled_model_s():
    """1.78 B parameters (untied 151,936 x 1,536 embeddings), r=32 LoRA on all seven projections."""
    arch = memory.Architecture.from_config(memory.KNOWN_ARCHITECTURES["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"])
    assert (arch.head_dim, arch.kv_dim) == (128, 256)
    assert arch.parameters() == 1_777_088_000
    assert arch.lora_parameters(32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) \
        == 28 * 32 * (2 * (1536 + 1536) + 2 * (1536 + 256) + 3 * (1536 + 8960))


@pytest.mark.parametrize("path", sorted(TINA.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_tina_recipe_fits_two_l40s(path):
    est = estimate(path)
    assert est is not None and "known architectures" in est.source
    assert est.fits, est.lines()
    assert all(v > 0 for v in est.parts.values())
    assert est.parts["vllm"] == int(load_recipe(path).grpo.get("vllm_gpu_memory_utilization", 0.3) * L40S)


def test_long_completion_uncapped_beside_tina_s_vllm_share_does_not_fit():
    """Issue 11 item 5: 6 x 9,472-token micro-batches beside a colocated engine at Tina's 0.7 (her
    vLLM had a GPU of its own) do not fit an L40S; sleeping vLLM during the step does."""
    est = estimate(TINA / "open_rs3_long_completion.yaml", *UNCAPPED_AT_TINAS_SHARE)
    assert est.sequence_tokens == 9472 and not est.fits
    capped = estimate(TINA / "open_rs3_long_completion.yaml")
    assert capped.sequence_tokens == 4608 and capped.fits
    asleep = estimate(TINA / "open_rs3_long_completion.yaml", *UNCAPPED_AT_TINAS_SHARE, "grpo.vllm_enable_sleep_mode=true")
    assert asleep.fits and asleep.total < est.total


def test_the_estimate_grows_with_what_it_models():
    base = estimate(TINA / "open_rs2.yaml")
    assert estimate(TINA / "open_rs2.yaml", "grpo.max_completion_length=7168").parts["activations"] > base.parts["activations"]
    assert estimate(TINA / "open_rs2.yaml", "grpo.per_device_train_batch_size=12").parts["activations"] > base.parts["activations"]
    assert estimate(TINA / "open_rs2.yaml", "lora.r=128").parts["lora_optimizer"] > base.parts["lora_optimizer"]
    off = estimate(TINA / "open_rs2.yaml", "grpo.gradient_checkpointing=false")
    assert off.parts["activations"] > 5 * base.parts["activations"]
    hf = estimate(TINA / "open_rs2.yaml", "grpo.use_vllm=false")
    assert "vllm" not in hf.parts and hf.parts["generation_kv"] > 0
    server = estimate(TINA / "open_rs2.yaml", "grpo.vllm_mode=server")
    assert "vllm" not in server.parts


def test_zero2_keeps_deepspeed_s_default_reduce_bucket():
    """accelerate builds the DeepSpeed config from recipes/accelerate/zero2.yaml without
    ``reduce_bucket_size`` (and transformers fills only keys set to "auto"), so DeepSpeed's default
    applies: one bucket of 5e8 elements in the engine's bf16, about 0.93 GiB per GPU."""
    from accelerate.utils import DeepSpeedPlugin
    from test_install_set import _pins

    from tina_core.recipe.loader import ACCELERATE_DIR, parse_yaml

    ds = parse_yaml((ACCELERATE_DIR / "zero2.yaml").read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                             offload_param_device=ds["offload_param_device"], zero3_init_flag=ds["zero3_init_flag"],
                             gradient_clipping=ds["gradient_clipping"])
    assert "reduce_bucket_size" not in plugin.deepspeed_config["zero_optimization"]
    assert "reduce_bucket_size" not in ds
    # the default was read from the pinned release: a new pin means reading it again
    assert _pins()["deepspeed"] == memory.ZERO_DEFAULTS_READ_FROM
    est = estimate(TINA / "open_rs2.yaml")
    assert est.parts["zero_bucket"] == 5 * 10**8 * 2 and round(est.parts["zero_bucket"] / memory.GIB, 2) == 0.93
    assert "zero_bucket" not in estimate(TINA / "open_rs2.yaml", "launch.accelerate_config=cpu_ranks.yaml").parts
    # Tina's thoughts recipe: about 3.5 GiB left on an L40S once the bucket is counted
    thoughts = estimate(TINA / "thoughts.yaml")
    assert 3.0 < (thoughts.gpu_bytes - thoughts.total) / memory.GIB < 4.0


def test_the_bucket_is_the_installed_deepspeed_s_default():
    """Where DeepSpeed is installed (the GPU box's set), its own ZeRO config says 5e8 elements and
    no overlapping second buffer below ZeRO-3."""
    zero = pytest.importorskip("deepspeed.runtime.zero.config")
    cfg = zero.DeepSpeedZeroConfig(stage=2)
    assert cfg.reduce_bucket_size == memory.ZERO_REDUCE_BUCKET_ELEMENTS
    assert cfg.overlap_comm is False


def test_on_the_common_gpus():
    recipe = load_recipe(TINA / "open_rs2.yaml")
    verdicts = dict(memory.on_known_gpus(recipe, resolved_grpo(recipe)))
    assert set(verdicts) == set(memory.KNOWN_GPUS_MIB)
    assert verdicts["L40S"].fits and verdicts["H200"].fits
    recipe = load_recipe(TINA / "open_rs3_long_completion.yaml", UNCAPPED_AT_TINAS_SHARE)
    verdicts = dict(memory.on_known_gpus(recipe, resolved_grpo(recipe)))
    assert not verdicts["L40S"].fits and not verdicts["RTX 4090"].fits and verdicts["H200"].fits


def test_architecture_from_a_local_config_json(tmp_path):
    cfg = dict(memory.KNOWN_ARCHITECTURES["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"], num_hidden_layers=14)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    est = estimate(TINA / "open_rs2.yaml", f"model.name_or_path={tmp_path}")
    assert est.source == str(tmp_path / "config.json")
    assert est.parts["weights"] < estimate(TINA / "open_rs2.yaml").parts["weights"]


def test_an_unknown_hub_model_has_no_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert estimate(TINA / "open_rs2.yaml", "model.name_or_path=someone/unknown-model") is None
    from tina_core.cli.runs import dry_run_notes

    notes = dry_run_notes(load_recipe(TINA / "open_rs2.yaml", ["model.name_or_path=someone/unknown-model"]))
    assert any(line.startswith("memory: no estimate: no config.json for someone/unknown-model") for line in notes)


def test_dry_run_prints_the_estimate(tmp_path):
    from typer.testing import CliRunner

    from tina_core.cli.commands import app

    res = CliRunner().invoke(app, ["--home", str(tmp_path), "run", str(TINA / "open_rs3_long_completion.yaml"),
                                   "--dry-run", *[a for o in UNCAPPED_AT_TINAS_SHARE for a in ("--set", o)]])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "# memory per GPU, estimated on an L40S (none here) (9472-token sequences" in out
    for label in ("weights", "LoRA + grads + AdamW", "activations", "vLLM reservation"):
        assert f"#   {label}" in out
    assert "does not fit" in out and "H200 fits" in out


@pytest.fixture
def two_l40s(monkeypatch):
    from test_gpu import FakeNVML

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())


def test_a_launch_that_cannot_fit_is_refused_with_the_numbers(two_l40s, tmp_path):
    recipe = load_recipe(TINA / "open_rs3_long_completion.yaml", UNCAPPED_AT_TINAS_SHARE)
    with pytest.raises(TinaError) as e:
        check_memory(recipe)
    text = str(e.value)
    assert "needs an estimated" in text and "NVIDIA L40S has 45.0 GiB" in text
    assert "vLLM reservation" in text and "does not fit" in text and "--force" in text
    check_memory(recipe, force=True)  # forced: a warning, no refusal
    check_memory(load_recipe(TINA / "open_rs3_long_completion.yaml"))  # as shipped: fits

    # through `tina run`: refused before a run directory exists
    from typer.testing import CliRunner

    from tina_core.cli.commands import app

    home = tmp_path / "home"
    res = CliRunner().invoke(app, ["--home", str(home), "run", str(TINA / "open_rs3_long_completion.yaml"),
                                   *[a for o in UNCAPPED_AT_TINAS_SHARE for a in ("--set", o)]])
    assert res.exit_code != 0 and "needs an estimated" in str(res.exception)
    assert not (home / "runs").exists()


def test_the_module_stays_light():
    import subprocess

    code = ("import sys, tina_core.train.memory; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
