"""Tina's maths on TRL 1.16, as the recipes resolve it: each test here fails if a recipe (or the
installed TRL) stops doing what Tina did, or stops saying where it differs (issue 11, items 3-8
and 11-13; the rewards' items 6 and 8 are in test_rewards.py; issue 20, items 3-5)."""

from __future__ import annotations

import math

import pytest

from tina_core.recipe.configs import build_grpo_config, differences_from_defaults
from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.recipe import paper
from tina_core.train.launcher import launch_env

TINA = RECIPES_DIR / "tina"
TINA_RECIPES = sorted(TINA.glob("*.yaml"))


def config(path, *overrides):
    return build_grpo_config(load_recipe(path, list(overrides)), "/nonexistent", neutralise_device=True)


@pytest.mark.parametrize("path", TINA_RECIPES, ids=lambda p: p.stem)
def test_no_vllm_importance_sampling_correction(path):
    """TRL 1.16 turns it on by default (sequence_mask, cap 3); Tina's TRL 0.15.2 had none."""
    from trl import GRPOConfig

    assert GRPOConfig.__dataclass_fields__["vllm_importance_sampling_correction"].default is True  # why it is pinned
    assert config(path).vllm_importance_sampling_correction is False


@pytest.mark.parametrize("path", TINA_RECIPES, ids=lambda p: p.stem)
def test_no_bias_correction_of_the_kl_term(path):
    """TRL 1.16 multiplies the per-token KL by exp(logp - logp.detach()) by default: value 1, but
    a different KL gradient whenever beta != 0. Tina's TRL 0.15.2 loss has no such factor."""
    import inspect

    from trl import GRPOConfig, GRPOTrainer

    assert GRPOConfig.__dataclass_fields__["use_bias_correction_kl"].default is True  # why it is pinned
    assert "use_bias_correction_kl" in inspect.getsource(GRPOTrainer)  # the loss still reads it
    cfg = config(path)
    assert cfg.use_bias_correction_kl is False and cfg.beta == 0.04


def test_len_and_cosine_verify_the_answer_against_the_gold_in_tina_s_order():
    """math-verify's sides differ: a gold relation ``x < 3`` accepts the interval ``(-oo, 3)``, an
    interval gold does not accept the relation. Tina's len and cosine rewards call
    ``verify(answer, gold)``, her accuracy reward ``verify(gold, answer)``; tina's do the same."""
    from tina_core.recipe.rewards import accuracy_reward, make_cosine_scaled_reward, make_len_reward

    cosine = make_cosine_scaled_reward(max_len=1000)
    interval, relation = r"The answer is $\boxed{(-\infty, 3)}$.", r"The answer is $\boxed{x < 3}$."
    interval_gold, relation_gold = r"$(-\infty, 3)$", "$x < 3$"

    def shape(text):  # the cosine's 0.5 * (1 + cos(pi * chars / max_len))
        return 0.5 * (1 + math.cos(math.pi * len(text) / 1000))

    # gold x < 3, answer the interval: accuracy (gold first) says correct, cosine (answer first) wrong
    assert accuracy_reward([interval], solution=[relation_gold]) == [1.0]
    assert cosine([interval], solution=[relation_gold]) == [pytest.approx(-0.5 + 0.5 * shape(interval))]
    # the other way round: the interval gold and the relation answer
    assert accuracy_reward([relation], solution=[interval_gold]) == [0.0]
    assert cosine([relation], solution=[interval_gold]) == [pytest.approx(0.5 + 0.5 * shape(relation))]
    # len_reward reads correctness the same way: a wrong answer's lambda is capped at 0
    assert make_len_reward(2)([relation, relation + " Yes."], solution=[interval_gold] * 2) == [0.5, -0.5]
    assert make_len_reward(2)([interval, interval + " Yes."], solution=[relation_gold] * 2) == [0.0, -0.5]


@pytest.mark.slow
def test_trl_hands_vllm_one_bos_where_tina_s_text_prompts_got_two(tmp_path, tiny_model):
    """The distilled tokenizer adds a BOS (its tokenizer_config.json: add_bos_token true) and Tina's
    chat template begins with one. Tina's TRL 0.15.2 gave vLLM the prompt text, tokenised with
    special tokens: two BOS. The installed TRL tokenises the conversation through the chat template
    (``_tokenize_prompts``, whose ids go to vLLM as ``prompt_token_ids``): one. Shown on the tiny
    tokenizer set up as the distilled one is (no hub here); `bos_tokens` in recipes/base/tina.yaml
    says so."""
    import inspect

    import trl.generation.vllm_generation as vllm_generation
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tina_core.recipe.prompts import REASON_CHAT_TEMPLATE

    plain = AutoTokenizer.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model, add_bos_token=True, bos_token=plain.eos_token)
    tok.chat_template = REASON_CHAT_TEMPLATE
    bos = tok.bos_token_id
    args = GRPOConfig(output_dir=str(tmp_path), use_vllm=False, bf16=False, use_cpu=True, report_to=[],
                      per_device_train_batch_size=2, num_generations=2, max_steps=1, gradient_checkpointing=False)
    prompt = [{"role": "system", "content": "Add."}, {"role": "user", "content": "3 + 4"}]
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, processing_class=tok,
                          reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          train_dataset=Dataset.from_list([{"prompt": prompt}] * 2))
    [ids], _, _ = trainer._tokenize_prompts([prompt])
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text.startswith(tok.bos_token)
    assert list(ids[:2]).count(bos) == 1                               # TRL 1.x: one BOS
    assert tok(text)["input_ids"][:2] == [bos, bos]                    # Tina's text through vLLM: two
    assert tok(text, add_special_tokens=False)["input_ids"] == list(ids)  # her trainer's own ids: one
    assert "prompt_token_ids" in inspect.getsource(vllm_generation)    # ids, not text, reach vLLM
    base = load_recipe(RECIPES_DIR / "base" / "tina.yaml")
    assert "two BOS" in base.data["divergences"]["bos_tokens"]


def test_dr_grpo_row_runs_as_it_ran_and_the_applied_variant_is_dr_grpo():
    """Tina's `scale_reward: false` was dropped by TRL 0.15.2: the paper's Dr.GRPO row trained
    Open-RS3's plain GRPO. That row's recipe is exactly Open-RS3; the sibling applies Dr.GRPO."""
    rs3, row, applied = (load_recipe(TINA / f"{n}.yaml") for n in ("open_rs3", "open_rs3_drgrpo", "open_rs3_drgrpo_applied"))
    assert row.grpo == rs3.grpo and row.rewards == rs3.rewards and row.data["reward_options"] == rs3.data["reward_options"]
    cfg = config(TINA / "open_rs3_drgrpo.yaml")
    assert (cfg.scale_rewards, cfg.loss_type) == ("group", "grpo")
    cfg = config(TINA / "open_rs3_drgrpo_applied.yaml")
    assert (cfg.scale_rewards, cfg.loss_type) == ("none", "dr_grpo")
    assert paper.rows_for("open_rs3_drgrpo")["ablation"]["configuration"] == "Dr.GRPO (Open-RS3)"
    assert paper.rows_for("open_rs3_drgrpo_applied") == {"main": None, "ablation": None, "cost": None}


def test_long_completion_as_its_launcher_ran_it():
    """Tina's long-completion launcher passed --cosine_max_len 3584 and kept vllm_max_model_len 4608
    (completions end at 4608 tokens with the prompt); rewards stayed scaled."""
    r = load_recipe(TINA / "open_rs3_long_completion.yaml")
    assert r.data["reward_options"]["cosine_max_len"] == 3584
    cfg = config(TINA / "open_rs3_long_completion.yaml")
    assert (cfg.max_completion_length, cfg.vllm_max_model_length, cfg.scale_rewards) == (8960, 4608, "group")


def _kept_from(recipe) -> int:
    """The earliest step whose checkpoint is still there when the run stops: the trainer keeps the
    newest save_total_limit saves (the grid up to stop_at_step, and the stop step itself)."""
    stop, every = recipe.stop_at_step, recipe.save_steps
    saves = sorted({*range(every, stop + 1, every), stop})
    limit = recipe.grpo.get("save_total_limit")
    return saves[0] if limit is None else saves[-min(int(limit), len(saves))]


def _paper_best_steps():
    for row in [*paper.MAIN_RESULTS, *paper.ABLATIONS]:
        if row.get("recipe") and row.get("best_pct_epoch") is not None:
            yield row["recipe"], row["best_pct_epoch"]


@pytest.mark.parametrize("stem, pct", list(_paper_best_steps()), ids=lambda v: str(v))
def test_kept_checkpoints_cover_the_paper_s_best_step(stem, pct):
    """STILL-3 saved every 10 steps with a limit of 100 (only 2760-3750 kept; its best is near 2190);
    OpenR1 made 118 saves. Every recipe keeps a save at or before the paper's best step."""
    recipe = load_recipe(TINA / f"{stem}.yaml")
    best = pct / 100 * recipe.steps_per_epoch
    assert best <= recipe.stop_at_step
    # the last save before the best step (if it has one) is still there
    assert _kept_from(recipe) <= max(recipe.save_steps, best - recipe.save_steps), (stem, _kept_from(recipe), best)


def test_still_with_tina_s_limit_would_lose_its_best_checkpoint():
    """What the check above catches: Tina's own STILL-3 settings."""
    recipe = load_recipe(TINA / "still.yaml", ["grpo.save_total_limit=100"])
    assert _kept_from(recipe) == 2760 > 0.53 * recipe.steps_per_epoch


@pytest.mark.parametrize("path", TINA_RECIPES, ids=lambda p: p.stem)
def test_nccl_settings_of_tina_s_l40s_boxes(path):
    env = launch_env(load_recipe(path), base={})
    assert {k: env[k] for k in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_IB_DISABLE")} == dict.fromkeys(
        ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_IB_DISABLE"), "1")
    assert "CUDA_LAUNCH_BLOCKING" not in env
    # an NVLink box turns them back on from the command line
    env = launch_env(load_recipe(path, ["launch.env.NCCL_P2P_DISABLE=0"]), base={})
    assert env["NCCL_P2P_DISABLE"] == "0"


def test_tiny_recipe_sets_no_nccl():
    assert not any(k.startswith("NCCL_") for k in launch_env(load_recipe(RECIPES_DIR / "tiny.yaml"), base={}))


def test_divergences_are_named_in_one_place():
    """recipes/base/tina.yaml lists every deliberate divergence; every Tina recipe inherits the list
    (and its run snapshot carries it)."""
    base = load_recipe(RECIPES_DIR / "base" / "tina.yaml")
    assert {"logprob_temperature", "attention", "long_prompts", "vllm_placement", "bos_tokens"} <= set(base.data["divergences"])
    for path in TINA_RECIPES:
        recipe = load_recipe(path)
        assert recipe.data["divergences"] == base.data["divergences"], path
        assert "divergences:" in recipe.to_yaml()


def test_price_convention_is_said_in_the_recipes():
    text = (RECIPES_DIR / "base" / "tina.yaml").read_text()
    assert "GPU-seconds x price.gpu_hour_usd" in text and "14 h / $14" in text


@pytest.mark.slow
def test_trl_takes_log_probs_at_the_sampling_temperature(tmp_path, tiny_model):
    """The divergence `logprob_temperature` is real on the installed TRL: GRPOTrainer's log-probs
    are log_softmax(logits / T), not Tina's log_softmax(logits). If TRL changes this, the note in
    recipes/base/tina.yaml must change with it."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    args = GRPOConfig(output_dir=str(tmp_path), use_vllm=False, bf16=False, use_cpu=True, report_to=[],
                      temperature=0.7, per_device_train_batch_size=2, num_generations=2, max_steps=1,
                      gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          processing_class=tok, train_dataset=Dataset.from_list([{"prompt": "1+1"}] * 2))
    ids = tok(["What is 3 + 4? <think>\n7"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    mask = torch.ones_like(ids)
    keep = 3
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        logits = trainer.model(input_ids=ids, attention_mask=mask).logits[:, -keep - 1:-1]
    target = ids[:, -keep:].unsqueeze(-1)
    scaled = torch.log_softmax(logits / 0.7, -1).gather(-1, target).squeeze(-1)
    raw = torch.log_softmax(logits, -1).gather(-1, target).squeeze(-1)
    assert torch.allclose(logps, scaled, atol=1e-4)
    assert not torch.allclose(logps, raw, atol=1e-3)


def test_dry_run_lists_the_values_that_differ_from_trl_s_own_defaults():
    """Read from the installed GRPOConfig: a value equal to TRL's default (learning_rate 1e-6) is not
    listed; one that differs is, with the default the class declares."""
    from trl import GRPOConfig

    from tina_core.cli.runs import dry_run_notes

    recipe = load_recipe(TINA / "open_rs2.yaml")
    diffs = {k: (v, d) for k, v, d in differences_from_defaults(recipe)}
    fields = GRPOConfig.__dataclass_fields__
    assert diffs["grpo.beta"] == (0.04, fields["beta"].default)
    assert diffs["grpo.vllm_importance_sampling_correction"] == (False, True)
    assert diffs["grpo.loss_type"] == ("grpo", fields["loss_type"].default)
    assert diffs["lora.r"][0] == 32
    for key in ("learning_rate", "seed"):
        if recipe.grpo[key] == fields[key].default:
            assert f"grpo.{key}" not in diffs
    notes = dry_run_notes(recipe)
    assert "  grpo.vllm_importance_sampling_correction: False (default True)" in notes
    assert "  grpo.use_bias_correction_kl: False (default True)" in notes
    assert "  use_bias_correction_kl: false\n" in recipe.to_yaml()  # what `tina run --dry-run` prints
