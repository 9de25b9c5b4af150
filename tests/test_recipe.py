"""Recipes: loading, extends, --set, tina-section checks, validation against the real GRPOConfig /
LoraConfig, and the launch command."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tina_core.cli import runs as cli_runs
from tina_core.train import launcher as launch
from tina_core.recipe.configs import validate_recipe
from tina_core.recipe.loader import RECIPES_DIR, RecipeError, list_recipes, load_recipe, masked_override
from tina_core.credentials import redact_text
from tina_core.rundir import RunDir, TinaError

ALL_RECIPES = sorted(p for p in RECIPES_DIR.rglob("*.yaml") if p.relative_to(RECIPES_DIR).parts[0] not in ("base", "accelerate"))
TINA = RECIPES_DIR / "tina"


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """No remembered validation verdicts: every recipe here is checked by the real config classes."""
    monkeypatch.setenv("TINA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def tiny_variant(tmp_path: Path, **sections) -> Path:
    """A recipe extending recipes/tiny.yaml with some sections changed."""
    return write(tmp_path / "variant.yaml", {"extends": str(RECIPES_DIR / "tiny.yaml"), **sections})


def test_every_tina_experiment_has_a_recipe():
    names = {p.stem for p in TINA.glob("*.yaml")}
    assert names == {"still", "deepscaler", "open_rs1", "open_rs2", "open_rs3", "open_r1", "thoughts", "ii_thought",
                     "limr", "limr_large_lr", "limr_small_lr", "limr_large_rank", "limr_medium_rank",
                     "limr_small_rank", "limr_tiny_rank", "open_rs3_drgrpo", "open_rs3_drgrpo_applied",
                     "open_rs3_format_only", "open_rs3_long_completion"}


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates_against_the_real_configs(path):
    recipe = load_recipe(path)
    validate_recipe(recipe)
    assert recipe.description
    assert 0 < recipe.stop_at_step <= recipe.max_steps


def test_tina_semantics_on_trl_1x():
    from tina_core.recipe.configs import build_grpo_config, build_lora_config

    rs2 = load_recipe(TINA / "open_rs2.yaml")
    cfg = build_grpo_config(rs2, "/nonexistent", neutralise_device=True)
    assert (cfg.beta, cfg.loss_type, cfg.temperature, cfg.scale_rewards) == (0.04, "grpo", 0.7, "group")
    assert (cfg.learning_rate, cfg.lr_scheduler_type.value, cfg.lr_scheduler_kwargs) == (
        1e-6, "cosine_with_min_lr", {"min_lr_rate": 0.1})
    assert (cfg.max_steps, rs2.stop_at_step, cfg.save_steps, cfg.num_generations) == (1500, 850, 50, 6)
    assert cfg.get_warmup_steps(cfg.max_steps) == 150  # Tina's warmup ratio 0.1
    assert cfg.use_vllm and cfg.vllm_mode == "colocate" and cfg.vllm_gpu_memory_utilization == 0.4
    assert rs2.gpus == 2 and rs2.gpu_hour_usd == 1.0 and rs2.rewards == {"format": 1.0, "accuracy": 2.0}
    lora = build_lora_config(rs2)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (32, 128, 0.05)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    long = load_recipe(TINA / "open_rs3_long_completion.yaml")
    assert (long.grpo["max_completion_length"], long.grpo["vllm_max_model_length"]) == (8960, 4608)  # as it ran
    assert load_recipe(TINA / "limr_large_rank.yaml").data["lora"]["r"] == 128
    assert load_recipe(TINA / "open_rs3.yaml").data["reward_options"] == {"cosine_max_len": 3584}
    assert load_recipe(TINA / "open_rs3_format_only.yaml").rewards.keys() == {
        "format", "tag_count", "length", "reasoning_steps", "repetition_penalty"}
    assert load_recipe(TINA / "limr_small_lr.yaml").grpo["learning_rate"] == 5e-7


def test_misspelt_grpo_key_names_file_key_and_suggestion(tmp_path):
    path = tiny_variant(tmp_path, grpo={"learnig_rate": 1e-3})
    with pytest.raises(RecipeError) as e:
        validate_recipe(load_recipe(path))
    assert str(e.value) == f"{path}: grpo.learnig_rate: unknown GRPOConfig field (did you mean learning_rate?)"


def test_misspelt_lora_and_tina_keys(tmp_path):
    with pytest.raises(RecipeError, match=r"variant.yaml: lora.lora_alfa: unknown LoraConfig field \(did you mean lora_alpha\?\)"):
        validate_recipe(load_recipe(tiny_variant(tmp_path, lora={"lora_alfa": 8})))
    with pytest.raises(RecipeError, match=r"variant.yaml: stop_at_stpe: unknown key \(did you mean stop_at_step\?\)"):
        load_recipe(tiny_variant(tmp_path, stop_at_stpe=3))
    with pytest.raises(RecipeError, match=r"variant.yaml: launch.gpu: unknown key \(did you mean gpus\?\)"):
        load_recipe(tiny_variant(tmp_path, launch={"gpu": 1}))


@pytest.mark.parametrize("sections, message", [
    ({"grpo": {"learning_rate": "fast"}}, r"grpo.learning_rate: expected float, got 'fast'"),
    ({"grpo": {"num_generations": 2.5}}, r"grpo.num_generations: expected int \| None, got 2.5"),
    ({"grpo": {"use_vllm": "yes"}}, r"grpo.use_vllm: expected bool, got 'yes'"),
    ({"lora": {"r": "eight"}}, r"lora.r: expected int, got 'eight'"),
    ({"stop_at_step": "ten"}, r"stop_at_step: expected an integer, got 'ten'"),
    ({"launch": {"gpus": True}}, r"launch.gpus: expected an integer, got True"),
    ({"rewards": {"format": "high"}}, r"rewards.format: expected a number"),
    ({"model": "tiny"}, r"model: expected a mapping"),
])
def test_wrong_types_are_named(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=r"variant.yaml: " + message):
        validate_recipe(load_recipe(tiny_variant(tmp_path, **sections)))


@pytest.mark.parametrize("sections, message", [
    ({"grpo": {"output_dir": "/tmp/x"}}, r"grpo.output_dir: not allowed"),
    ({"stop_at_step": 500}, r"stop_at_step: 500 is beyond grpo.max_steps \(150\)"),
    ({"rewards": {"formatt": 1.0}}, r"rewards: .*formatt"),
    ({"dataset": {"name": "./no/such/data.jsonl"}}, r"dataset.name: no such local dataset .*no/such/data.jsonl"),
    ({"grpo": {"num_generations": 5}}, r"grpo.num_generations: generation_batch_size \(16\) must be divisible"),
    ({"grpo": {"save_strategy": "no"}}, r"grpo.save_strategy: expected 'steps'"),
    ({"dataset": {"mapping": "deepscalr"}}, r"variant.yaml: dataset.mapping: .*deepscalr"),
    ({"model": {"tiny": {"layers": 3}}}, r"model.tiny: .*layers.*expected fields of .*num_layers"),
    ({"model": {"dtype": "bfloat17"}}, r"model.dtype: expected auto or a floating-point torch dtype .*'bfloat17'"),
    ({"model": {"dtype": "int8"}}, r"model.dtype: expected auto or a floating-point torch dtype .*'int8'"),
    ({"model": {"attn_implementation": "flash_attn2"}},
     r"model.attn_implementation: expected one of eager, .*sdpa.* or a hub kernel .*'flash_attn2'"),
    ({"model": {"attn_implementation": "flash_attention_9"}}, r"model.attn_implementation: transformers has no"),
])
def test_semantic_errors(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe(load_recipe(tiny_variant(tmp_path, **sections)))


@pytest.mark.parametrize("override, message", [
    ("price.cpu_hour_usd=.inf", r"price.cpu_hour_usd: expected dollars >= 0, got inf"),
    ("price.gpu_hour_usd=-1", r"price.gpu_hour_usd: expected dollars >= 0, got -1"),
    ("launch.gpus=-1", r"launch.gpus: expected a GPU count >= 0 \(0: CPU\), got -1"),
    ("rewards.format=.nan", r"rewards.format: expected a number \(the reward's weight\), got nan"),
    ("launch.stop_timeout_s=-5", r"launch.stop_timeout_s: expected seconds >= 0"),
    ("launch.main_process_port=70000", r"launch.main_process_port: expected a port 1..65535"),
    ("stop_at_step=0", r"stop_at_step: expected a step >= 1, got 0"),
    ("reward_options.cosine_max_value_correct=.nan", r"reward option cosine_max_value_correct must be a number"),
])
def test_numbers_out_of_range_are_refused(override, message):
    """Attack 7: an infinite price made `tina ls --json` print Infinity; a negative price, a
    negative GPU count or a NaN reward weight were taken."""
    with pytest.raises(RecipeError, match=message):
        validate_recipe(load_recipe(RECIPES_DIR / "tiny.yaml", [override]))


@pytest.mark.parametrize("content, message", [
    ('{"problem": "What is 1 + 1?", "answer": "2"}\n',
     r"dataset.name: .*data.jsonl has 1 usable row\(s\), fewer than the 4 prompts one optimizer step takes"),
    ("", r"is empty"),
    ('{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": oops}\n', r"line 2: invalid JSON"),
    ('{"question": "What is 1 + 1?"}\n' * 8, r"no gold column"),
    ('{"problem": "", "answer": "2"}\n' * 8, r"no usable rows"),
])
def test_a_dataset_too_small_empty_or_malformed_is_found_before_launch(tmp_path, content, message):
    """Attack 7: a one-row dataset "finished" at step 0 with exit 0 and no checkpoint; a malformed
    or empty file was found only after the launch, leaving a failed run. Now the local data is read
    as the trainer reads it, before anything starts."""
    data = write(tmp_path / "data.jsonl", content)
    with pytest.raises(RecipeError, match=message):
        validate_recipe(load_recipe(tiny_variant(tmp_path, dataset={"name": str(data), "system_prompt": "none"})))


@pytest.mark.parametrize("model", [{"dtype": "half"}, {"dtype": "auto", "attn_implementation": "sdpa"},
                                   {"attn_implementation": "flex_attention"}, {"attn_implementation": "paged|eager"},
                                   {"attn_implementation": None}])
def test_other_values_that_transformers_accepts(tmp_path, model):
    validate_recipe(load_recipe(tiny_variant(tmp_path, model=model)))


def _flash_attn_installed() -> bool:
    from transformers.utils import is_kernels_available

    return importlib.util.find_spec("flash_attn") is not None or is_kernels_available()


def test_flash_attention_without_its_package_stops_a_real_run_before_anything(tmp_path):
    """Tina's flash_attention_2 needs a CUDA build of flash-attn that the install set leaves out: a
    real run that asks for it where the package is missing fails before any process or file."""
    if _flash_attn_installed():
        pytest.skip("flash-attn (or the kernels fallback) is installed here")

    home = tmp_path / "home"
    path = tiny_variant(tmp_path, model={"attn_implementation": "flash_attention_2"})
    with pytest.raises(RecipeError, match=r"variant.yaml: model.attn_implementation: flash_attention_2 needs "
                                          r"the flash-attn package, which is not installed here.*or use sdpa"):
        cli_runs.cli_run(home, path)
    assert not (home / "runs").exists()


def test_dry_run_of_a_gpu_recipe_with_flash_attention_on_a_machine_without_gpus(tmp_path, capsys):
    """A dry run on a laptop shows the command even for flash attention: the package is checked
    where the recipe can run (its GPUs are there), as the device-bound GRPO settings are."""
    if launch.visible_gpus()[0]:
        pytest.skip("this machine has GPUs")

    assert cli_runs.cli_run(tmp_path / "home", TINA / "open_rs2.yaml", dry_run=True,
                              overrides=["model.attn_implementation=flash_attention_2"]) == 0
    assert "attn_implementation: flash_attention_2" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(TINA.glob("*.yaml")), ids=lambda p: p.stem)
def test_dry_run_of_every_tina_recipe_shows_the_accelerate_deepspeed_command(tmp_path, path):
    """`tina run <recipe> --dry-run` through the CLI (in-process: the validation imports TRL once)."""
    from typer.testing import CliRunner

    from tina_core.cli.commands import app

    home = tmp_path / "home"
    res = CliRunner().invoke(app, ["--home", str(home), "run", str(path), "--dry-run"])
    assert res.exit_code == 0, (res.output, res.exception)
    resolved, _, command = res.stdout.rpartition("# launch command:\n")
    snapshot = yaml.safe_load(resolved)
    assert snapshot["name"] == path.stem and "extends" not in snapshot
    assert snapshot["model"]["attn_implementation"] == "sdpa"  # loads on the pinned GPU set
    recipe = load_recipe(path)
    assert shlex.split(command) == launch.launch_command(RunDir(home / "runs" / "<run_id>"), recipe)
    assert shlex.split(command)[1:11] == [
        "-m", "tina_core.train.launcher", "accelerate", "launch", "--config_file", str(RECIPES_DIR / "accelerate" / "zero2.yaml"),
        "--num_processes", "2", "--main_process_port", "29500"]
    assert not (home / "runs").exists()


def test_set_overrides_are_yaml_parsed():
    r = load_recipe(RECIPES_DIR / "tiny.yaml", ["grpo.learning_rate=1e-3", "stop_at_step=40", "grpo.use_vllm=false",
                                                 "lora.target_modules=[q_proj, v_proj]", "launch.env.FOO=bar",
                                                 "description=a b=c"])
    assert r.grpo["learning_rate"] == 1e-3 and isinstance(r.grpo["learning_rate"], float)
    assert r.stop_at_step == 40 and r.grpo["use_vllm"] is False
    assert r.data["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert r.data["launch"]["env"] == {"OMP_NUM_THREADS": "1", "FOO": "bar"}
    assert r.description == "a b=c"
    validate_recipe(r)
    for bad in ["grpo.learning_rate", "=3", "grpo..x=1", "stop_at_step=[1"]:
        with pytest.raises(RecipeError, match="--set"):
            load_recipe(RECIPES_DIR / "tiny.yaml", [bad])
    with pytest.raises(RecipeError, match=r"--set 'grpo.seed.x=1': grpo.seed is not a section"):
        load_recipe(RECIPES_DIR / "tiny.yaml", ["grpo.seed.x=1"])


def test_launch_env_credentials_are_withheld_from_the_snapshot(tmp_path):
    """A credential in launch.env reaches the trainer's environment, never the snapshot: it shows
    as *** there, and the snapshot's launch environment takes it from the supervisor's."""
    token = "hf_recipeTOKEN0123456789"
    r = load_recipe(RECIPES_DIR / "tiny.yaml", [f"launch.env.HF_TOKEN={token}", "launch.env.TOKENIZERS_PARALLELISM=true"])
    assert r.secret_env == {"HF_TOKEN": token}  # a tokenizer setting is not a token
    assert launch.launch_env(r, {})["HF_TOKEN"] == token
    text = r.to_yaml()
    assert token not in text and yaml.safe_load(text)["launch"]["env"]["HF_TOKEN"] == "***"
    snap = load_recipe(write(tmp_path / "recipe.yaml", yaml.safe_load(text)))
    assert snap.secret_env == {} and snap.withheld_env == ["HF_TOKEN"]
    assert launch.launch_env(snap, {"HF_TOKEN": token})["HF_TOKEN"] == token
    assert "HF_TOKEN" not in launch.launch_env(snap, {})
    assert masked_override(f"launch.env.HF_TOKEN={token}") == "launch.env.HF_TOKEN=***"
    assert masked_override("launch.env.OMP_NUM_THREADS=2") == "launch.env.OMP_NUM_THREADS=2"
    assert redact_text(f"--set launch.env.X={token}") == "--set launch.env.X=***"  # this process saw it


def test_a_credential_in_any_recipe_field_is_withheld(tmp_path):
    """grpo.hub_token (or any *_token, *_key, *secret*, *password* field) is masked in the snapshot,
    in the recorded override and in error messages, reaches the trainer as an environment variable
    (hub_token as HF_TOKEN) and never the real GRPOConfig, which every checkpoint saves."""
    from tina_core.credentials import is_secret_name
    from tina_core.recipe.configs import build_grpo_config

    token = "hf_hubtokANY0123456789"
    r = load_recipe(RECIPES_DIR / "tiny.yaml", [f"grpo.hub_token={token}"])
    assert r.credentials == {"grpo.hub_token": token} and r.secret_env == {"HF_TOKEN": token}
    assert launch.launch_env(r, {})["HF_TOKEN"] == token
    text = r.to_yaml()
    assert token not in text and yaml.safe_load(text)["grpo"]["hub_token"] == "***"
    snap = load_recipe(write(tmp_path / "recipe.yaml", yaml.safe_load(text)))
    assert snap.withheld_env == ["HF_TOKEN"] and snap.secret_env == {}
    assert build_grpo_config(snap, tmp_path / "out", neutralise_device=True).hub_token is None
    assert masked_override(f"grpo.hub_token={token}") == "grpo.hub_token=***"
    assert token not in masked_override(f"grpo={{hub_token: {token}, seed: 3}}")
    # an explicit launch.env entry wins over the field that names the same variable
    both = load_recipe(RECIPES_DIR / "tiny.yaml", [f"grpo.hub_token={token}", "launch.env.HF_TOKEN=hf_other0123"])
    assert both.secret_env == {"HF_TOKEN": "hf_other0123"}
    with pytest.raises(RecipeError) as e:  # a wrong type is said without the value
        validate_recipe(load_recipe(RECIPES_DIR / "tiny.yaml", ["grpo.hub_token=[1, 2]"]))
    assert "grpo.hub_token" in str(e.value) and "[1, 2]" not in str(e.value)
    for name in ("HF_TOKEN", "WANDB_API_KEY", "hub_token", "db_password", "client_secret", "AWS_ACCESS_KEY_ID",
                 "hubToken"):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "max_prompt_tokens", "trainable_token_indices", "num_tokens",
                 "average_tokens_across_devices", "rewards/format_reward/mean"):
        assert not is_secret_name(name), name


def test_extends_chain_merge_and_loop(tmp_path):
    write(tmp_path / "a.yaml", {"description": "a", "grpo": {"seed": 1, "beta": 0.1}, "rewards": {"format": 1}})
    write(tmp_path / "sub/b.yaml", {"extends": "../a.yaml", "grpo": {"beta": 0.2}})
    c = load_recipe(write(tmp_path / "sub/c.yaml", {"extends": "b.yaml", "description": "c"}))
    assert c.data == {"description": "c", "grpo": {"seed": 1, "beta": 0.2}, "rewards": {"format": 1}}
    assert c.name == "c"
    write(tmp_path / "x.yaml", {"extends": "y.yaml"})
    write(tmp_path / "y.yaml", {"extends": "x.yaml"})
    with pytest.raises(RecipeError, match="extends loops back"):
        load_recipe(tmp_path / "x.yaml")
    with pytest.raises(RecipeError, match=r"z.yaml: extends: no such file .*missing.yaml"):
        load_recipe(write(tmp_path / "z.yaml", {"extends": "missing.yaml"}))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path / "bad.yaml", "grpo: [unclosed"))
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_snapshot_round_trip(tmp_path):
    r = load_recipe(RECIPES_DIR / "tiny.yaml", ["stop_at_step=10"])
    snap = write(tmp_path / "run" / "recipe.yaml", r.to_yaml())
    again = load_recipe(snap)
    assert again.name == "tiny" and again.data == {**r.data, "name": "tiny"}
    assert Path(again.get("dataset.name")).is_dir()  # local paths were made absolute
    assert "extends" not in yaml.safe_load(load_recipe(TINA / "limr.yaml").to_yaml())


def test_list_recipes_for_the_picker():
    listed = dict(list_recipes(RECIPES_DIR))
    assert RECIPES_DIR / "tiny.yaml" in listed and TINA / "open_rs2.yaml" in listed
    assert not any(p.parent.name in ("base", "accelerate") for p in listed)
    assert all(desc and not desc.startswith("(invalid") for desc in listed.values())


def test_properties():
    tiny = load_recipe(RECIPES_DIR / "tiny.yaml")
    assert (tiny.gpus, tiny.gpu_hour_usd, tiny.max_steps, tiny.save_steps) == (0, None, 150, 25)
    assert tiny.cpu_hour_usd == tiny.get("price.cpu_hour_usd") > 0  # a CPU box's price: the demo's money ticks
    assert tiny.format_reward_keys == ["format"]
    assert load_recipe(TINA / "open_r1.yaml").format_reward_keys == ["format", "tag_count"]
    # one epoch = rows / 8 prompts per step on 2 GPUs (Tina's "% of 1 epoch")
    assert (tiny.dataset_size, tiny.steps_per_epoch) == (100, 25.0)
    assert load_recipe(TINA / "open_rs2.yaml").steps_per_epoch == 875.0
    assert round(load_recipe(TINA / "limr.yaml").steps_per_epoch) == 174


def test_cpu_launch_command(tmp_path):
    rd = RunDir(tmp_path / "run")
    r = load_recipe(RECIPES_DIR / "tiny.yaml")
    assert launch.launch_command(rd, r) == [sys.executable, "-m", "tina_core.train", str(rd.path)]
    env = launch.launch_env(r, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    launch.check_hardware(r)  # a CPU recipe runs anywhere


def test_gpu_launch_command_is_accelerate_with_deepspeed(tmp_path):
    rd = RunDir(tmp_path / "run")
    r = load_recipe(TINA / "open_rs2.yaml")
    cmd = launch.launch_command(rd, r)
    assert cmd == [sys.executable, "-m", "tina_core.train.launcher", "accelerate", "launch",
                   "--config_file", str(RECIPES_DIR / "accelerate" / "zero2.yaml"),
                   "--num_processes", "2", "--main_process_port", "29500",
                   "-m", "tina_core.train", str(rd.path)]
    ds = yaml.safe_load((RECIPES_DIR / "accelerate" / "zero2.yaml").read_text())
    assert ds["distributed_type"] == "DEEPSPEED" and ds["deepspeed_config"]["zero_stage"] == 2
    assert ds["deepspeed_config"]["offload_optimizer_device"] == "none" and ds["mixed_precision"] == "bf16"
    env = launch.launch_env(r, {})
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["PYTHONUNBUFFERED"] == "1"
    # the ranks handle it, not the agent (torch overwrites TORCHELASTIC_SIGNALS_TO_HANDLE from this)
    assert "SIGTERM" not in env["PET_SIGNALS_TO_HANDLE"] and "TORCHELASTIC_SIGNALS_TO_HANDLE" not in env
    assert launch.launch_env(r, {"CUDA_VISIBLE_DEVICES": "2,3"})["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_accelerate_parses_the_generated_command(tmp_path):
    """accelerate's own argument parser accepts the command line tina builds."""
    from accelerate.commands.launch import launch_command_parser

    cmd = launch.launch_command(RunDir(tmp_path / "run"), load_recipe(TINA / "limr.yaml"))
    assert cmd[1:5] == ["-m", "tina_core.train.launcher", "accelerate", "launch"]
    args = launch_command_parser().parse_args(cmd[5:])
    assert args.module and args.training_script == "tina_core.train" and args.training_script_args == [str(tmp_path / "run")]
    assert args.num_processes == 2 and args.config_file.endswith("zero2.yaml")


def test_multinode_launch_needs_rank_and_ip(tmp_path, monkeypatch):
    monkeypatch.delenv("TINA_MACHINE_RANK", raising=False)
    monkeypatch.delenv("TINA_MAIN_PROCESS_IP", raising=False)
    sets = ["launch.num_machines=2", "launch.accelerate_config=zero2_multinode.yaml"]
    with pytest.raises(RecipeError, match="machine_rank"):
        launch.launch_command(RunDir(tmp_path), load_recipe(TINA / "limr.yaml", sets))
    r = load_recipe(TINA / "limr.yaml", sets + ["launch.machine_rank=1", "launch.main_process_ip=10.0.0.1"])
    cmd = launch.launch_command(RunDir(tmp_path), r)
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1" and cmd[cmd.index("--num_machines") + 1] == "2"
    with pytest.raises(RecipeError, match="launch.accelerate_config: no such file"):
        launch.launch_command(RunDir(tmp_path), load_recipe(TINA / "limr.yaml", ["launch.accelerate_config=nope.yaml"]))


def test_gpu_recipe_on_a_machine_without_gpus():
    if launch.visible_gpus()[0] >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(TinaError, match=r"recipe asks for 2 GPUs; this machine has \d \(nvidia-ml-py"):
        launch.check_hardware(load_recipe(TINA / "open_rs2.yaml"))


VALIDATE_TWICE = """
import sys
from tina_core.recipe.configs import validate_recipe
from tina_core.recipe.loader import load_recipe
validate_recipe(load_recipe(sys.argv[1], sys.argv[2:]))
print(int("trl" in sys.modules))
"""


@pytest.mark.extended
def test_a_passed_library_check_is_remembered_per_sections_and_versions(tmp_path, fresh_cache):
    def validate(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", VALIDATE_TWICE, str(RECIPES_DIR / "tiny.yaml"), *overrides],
                              capture_output=True, text=True, env={**os.environ, "TINA_CACHE": str(fresh_cache)})

    first, again = validate(), validate()
    assert first.stdout.split() == ["1"] and again.stdout.split() == ["0"], (first.stderr, again.stderr)
    # another value is checked by the real classes again, and a failure is never remembered
    changed = validate("grpo.learning_rate=1e-3")
    assert changed.stdout.split() == ["1"]
    for _ in range(2):
        bad = validate("grpo.num_generations=3")  # 16 completions do not split into groups of 3
        assert bad.returncode != 0 and "num_generations" in bad.stderr
    assert len(list((fresh_cache / "validated").iterdir())) == 2
