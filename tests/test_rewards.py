"""Tina's reward functions on real completion strings, with the real math-verify."""

import math
import subprocess
import sys
import threading

import pytest

from tina_core.recipe import rewards as R
from tina_core.recipe.rewards import (
    FORMAT_REWARD_KEYS,
    FORMAT_REWARD_METRICS,
    FUNC_NAMES,
    REWARDS,
    accuracy_reward,
    build_reward_funcs,
    format_reward,
    len_reward,
    make_accuracy_reward,
    make_cosine_scaled_reward,
    make_len_reward,
    make_repetition_penalty_reward,
    reasoning_steps_reward,
    tag_count_reward,
)

WELL_FORMED = "<think>\nThree plus four is seven.\n</think>\n<answer>\n7\n</answer>"


def conv(*texts):
    """TRL's conversational completions."""
    return [[{"role": "assistant", "content": t}] for t in texts]


# --- format rewards ------------------------------------------------------------------------------
def test_format_reward_counts_only_the_closing_think_tag():
    texts = [
        WELL_FORMED,
        "Three plus four is seven.\n</think>\nThe answer is 7.",  # no <think>, no <answer>: still 1
        "<think>\nreasoning</think><answer>7</answer>",  # closing tag without its newlines
        "<think>\na\n</think>\n more \n</think>\n",  # duplicated closing tag
        "<think>\nnever closed",
        "",
    ]
    expected = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward(conv(*texts)) == expected
    assert format_reward(texts) == expected  # plain strings too


def test_tag_count_reward_half_per_tag():
    texts = [WELL_FORMED, "<think>\nunfinished", "<think>\n<think>\nx\n</think>\n", "x\n</think>\n", "no tags", ""]
    assert tag_count_reward(conv(*texts)) == [1.0, 0.5, 0.5, 0.5, 0.0, 0.0]


def test_format_keys_and_metric_names():
    assert set(FORMAT_REWARD_KEYS) == {"format", "tag_count"}
    assert FORMAT_REWARD_METRICS == ("rewards/format_reward/mean", "rewards/tag_count_reward/mean")


# --- accuracy ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        (WELL_FORMED, "$7$", 1.0),  # bare number inside <answer>
        (WELL_FORMED, "$8$", 0.0),
        ("<think>\nhalf\n</think>\nSo the answer is \\boxed{0.5}.", "$\\frac{1}{2}$", 1.0),  # LaTeX gold vs decimal
        ("<think>\nhalf\n</think>\n<answer>\n0.5\n</answer>", "$\\frac{1}{2}$", 1.0),
        ("<answer>\\frac{1}{2}</answer>", "$0.5$", 1.0),
        ("<answer>\\sqrt{2}</answer>", "$\\sqrt{2}$", 1.0),
        ("<answer>x = 3</answer>", "$3$", 1.0),
        ("<answer>The answer is $\\frac{3}{4}$.</answer>", "$\\frac34$", 1.0),
        ("<answer>\\boxed{12}</answer>", "$12$", 1.0),
        ("<answer>3</answer> on second thought <answer>7</answer>", "$7$", 1.0),  # the last block counts
        # no <answer> block: Tina's reading, which needs \boxed (a bare $7$ is not an answer)
        ("The result is \\boxed{7}", "$7$", 1.0),
        ("The result is $7$", "$7$", 0.0),
        ("<think>\nI am not sure\n</think>\n", "$7$", 0.0),
        ("", "$7$", 0.0),
        ("<answer></answer>", "$7$", 0.0),
    ],
)
def test_accuracy_reward_reading_the_answer_tag(completion, gold, expected):
    """``reward_options.read_answer_tag: true`` (the tiny recipe's): <answer> first, then Tina's parse."""
    assert make_accuracy_reward(read_answer_tag=True)(conv(completion), solution=[gold]) == [expected]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>\nhalf\n</think>\nSo the answer is \\boxed{0.5}.", 1.0),
        ("The final answer is $\\frac{1}{2}$", 1.0),
        # an <answer> block without \boxed scores nothing under Tina's parse
        ("<think>\nhalf\n</think>\n<answer>\n0.5\n</answer>", 0.0),
        ("<answer>\\boxed{0.5}</answer>", 1.0),
        ("<answer>\\frac{1}{2}</answer>", 1.0),  # but LaTeX itself is found with or without the tag
    ],
)
def test_accuracy_reward_default_is_tina_s_boxed_only_parse(completion, expected):
    """What Tina scored, and what every Tina recipe scores (none sets read_answer_tag)."""
    assert accuracy_reward(conv(completion), solution=["$\\frac{1}{2}$"]) == [expected]
    (built,), _ = build_reward_funcs({"accuracy": 1.0}, {})
    assert built(conv(completion), solution=["$\\frac{1}{2}$"]) == [expected]


def test_accuracy_reward_is_none_for_unparseable_gold():
    out = accuracy_reward(conv(WELL_FORMED, "\\boxed{7}"), solution=["no math in here", "$7$"])
    assert out == [None, 1.0]


def test_accuracy_reward_needs_solutions():
    with pytest.raises(ValueError, match="solution"):
        accuracy_reward(conv(WELL_FORMED))
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        accuracy_reward(conv(WELL_FORMED, WELL_FORMED), solution=["$7$"])


def test_accuracy_from_a_non_main_thread():
    """math-verify arms SIGALRM; off the main thread that must not turn right answers into 0."""
    R._parse_gold.cache_clear()  # nothing parsed on the main thread beforehand
    completions = conv("<answer>\\frac{2}{4}</answer>", "so \\boxed{10}", "<answer>11</answer>", WELL_FORMED)
    gold = ["$0.5$", "$10$", "$12$", "not math"]
    box = {}

    def work():
        try:
            box["acc"] = make_accuracy_reward(read_answer_tag=True)(completions, solution=gold)
            box["cos"] = make_cosine_scaled_reward(read_answer_tag=True)(completions, solution=gold)
        except BaseException as e:  # surfaced below: a thread swallows exceptions
            box["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert "error" not in box, box.get("error")
    assert box["acc"] == [1.0, 1.0, 0.0, None]
    assert box["cos"][:2] == make_cosine_scaled_reward(read_answer_tag=True)(completions[:2], solution=gold[:2])
    assert box["cos"][0] > 0.5 and box["cos"][2] <= 0.0 and box["cos"][3] == 1.0


# --- length rewards ------------------------------------------------------------------------------
def test_len_reward_all_equal_lengths_is_zero():
    assert len_reward(conv("<answer>7</answer>", "<answer>8</answer>"), solution=["$7$", "$7$"]) == [0.0, 0.0]
    assert len_reward(conv(""), solution=["$7$"]) == [0.0]


def test_len_reward_kimi_lambda():
    short_right = "<answer>7</answer>"
    long_right = "<think>\n" + "x" * 100 + "\n</think>\n<answer>7</answer>"
    short_wrong = "<answer>8</answer>"
    long_wrong = "<think>\n" + "x" * 100 + "\n</think>\n<answer>8</answer>"
    mid_wrong = "y" * ((len(short_right) + len(long_right)) // 2) + "<answer>8</answer>"
    lenient = make_len_reward(read_answer_tag=True)
    out = lenient(conv(short_right, long_right, short_wrong, long_wrong), solution=["$7$"] * 4)
    assert out == [0.5, -0.5, 0.0, -0.5]  # wrong answers never gain: min(0, lambda)
    # lambda is linear in characters between the group's shortest and longest
    lo, hi = len(short_right), len(long_right)
    out = lenient(conv(short_right, long_right, mid_wrong), solution=["$7$"] * 3)
    assert out[2] == pytest.approx(min(0.0, 0.5 - (len(mid_wrong) - lo) / (hi - lo)))
    # Tina's parse needs \boxed: the same right answers in bare <answer> tags count as wrong
    assert len_reward(conv(short_right, long_right), solution=["$7$"] * 2) == [0.0, -0.5]


def test_len_reward_ranks_lengths_within_each_prompt_group():
    """TRL 1.x passes a process's whole local batch (here two prompt groups of 2) in one call; the
    min and max are each group's, as in Tina's one-group calls."""
    right = ["\\boxed{7}", "\\boxed{7}" + " so" * 10]  # group 1: 10 and 40 characters
    long_group = ["x" * 200 + "\\boxed{9}", "x" * 300 + "\\boxed{9}"]  # group 2: longer overall
    prompts = ["p1", "p1", "p2", "p2"]
    f = make_len_reward(num_generations=2)
    out = f(conv(*right, *long_group), solution=["$7$", "$7$", "$9$", "$9$"], prompts=prompts)
    assert out == [0.5, -0.5, 0.5, -0.5]
    # each group alone, as Tina called it, gives the same
    assert out == len_reward(conv(*right), solution=["$7$"] * 2) + len_reward(conv(*long_group), solution=["$9$"] * 2)
    # the batch-wide reading this replaces would have ranked group 2's shorter answer below group 1's
    assert len_reward(conv(*right, *long_group), solution=["$7$", "$7$", "$9$", "$9$"])[2] < 0
    # through the registry, with the recipe's group size
    (built,), _ = build_reward_funcs({"length": 1.0}, {}, num_generations=2)
    assert built(conv(*right, *long_group), solution=["$7$", "$7$", "$9$", "$9$"], prompts=prompts) == out


def test_len_reward_refuses_a_batch_that_splits_a_group():
    f = make_len_reward(num_generations=2)
    with pytest.raises(ValueError, match="not whole groups of 2"):
        f(conv("a", "b", "c"), solution=["$1$"] * 3)
    with pytest.raises(ValueError, match="completions 0..1 are not one prompt's group"):
        f(conv("a", "b"), solution=["$1$"] * 2, prompts=["p1", "p2"])


def test_len_reward_unparseable_gold_counts_as_correct():
    out = len_reward(conv("ab", "abcdef"), solution=["not math", "not math"])
    assert out == [0.5, -0.5]


def test_cosine_at_zero_and_max_len():
    right, wrong = "\\boxed{7}", "\\boxed{8}"
    n = len(right)
    at_max = make_cosine_scaled_reward(max_len=n)
    assert at_max(conv(right, wrong), solution=["$7$", "$7$"]) == pytest.approx([0.5, -0.5])
    at_zero = make_cosine_scaled_reward(max_len=10**9)  # progress ~ 0
    assert at_zero(conv(right, wrong), solution=["$7$", "$7$"]) == pytest.approx([1.0, 0.0], abs=1e-9)
    half = make_cosine_scaled_reward(max_len=2 * n)
    assert half(conv(right, wrong), solution=["$7$", "$7$"]) == pytest.approx([0.75, -0.25])
    # the empty completion is wrong and has length 0: the top of the wrong range
    assert make_cosine_scaled_reward()(conv(""), solution=["$7$"]) == [0.0]
    assert make_cosine_scaled_reward()(conv(right), solution=["nothing"]) == [1.0]


def test_cosine_default_max_len_is_tina_s():
    text = "\\boxed{7}"
    expected = 0.5 + 0.25 * (1 + math.cos(math.pi * len(text) / 1000))
    assert make_cosine_scaled_reward()(conv(text), solution=["$7$"]) == [pytest.approx(expected)]


# --- other rewards -------------------------------------------------------------------------------
def test_reasoning_steps_reward():
    texts = [
        "Step 1: add. Step 2: carry. Step 3: write.",
        "First, add. Next, carry.",
        "1. add\n2. carry",  # no MULTILINE in Tina's pattern: only the leading "1." counts
        "Plan:\n- add\n* carry\n- write\nFinally, done.",
        "",
    ]
    assert reasoning_steps_reward(conv(*texts)) == pytest.approx([1.0, 2 / 3, 1 / 3, 1.0, 0.0])


def test_repetition_penalty_reward():
    f = make_repetition_penalty_reward(3, -1.0)
    texts = ["", "two words", "a b c a b c", "The cat sat on the mat", "go go go go go"]
    # "a b c a b c": 4 trigrams, 3 distinct -> (1 - 3/4) * -1; "go" x5: 3 trigrams, 1 distinct
    assert f(conv(*texts)) == pytest.approx([0.0, 0.0, -0.25, 0.0, -2 / 3])
    with pytest.raises(ValueError, match="<= 0"):
        make_repetition_penalty_reward(3, 0.5)


# --- registry ------------------------------------------------------------------------------------
def test_registry_names_match_tina():
    funcs, weights = build_reward_funcs({k: 1 for k in REWARDS}, {})
    assert [f.__name__ for f in funcs] == [FUNC_NAMES[k] for k in REWARDS]
    assert set(REWARDS) == {"format", "accuracy", "tag_count", "length", "cosine", "reasoning_steps",
                            "repetition_penalty"}
    assert weights == [1.0] * len(REWARDS) and all(type(w) is float for w in weights)


def test_build_reward_funcs_order_weights_and_options():
    funcs, weights = build_reward_funcs({"format": 1, "cosine": 2.0}, {"cosine_max_len": 3584})
    assert [f.__name__ for f in funcs] == ["format_reward", "cosine_scaled_reward"]
    assert weights == [1.0, 2.0]
    text = "\\boxed{7}"
    assert funcs[1](conv(text), solution=["$7$"]) == [
        pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * len(text) / 3584)))
    ]


@pytest.mark.parametrize(
    "rewards, options, message",
    [
        ({"format": 1, "acuracy": 2}, {}, r"unknown reward key\(s\) \['acuracy'\]; valid keys: \['accuracy'"),
        ({}, {}, "no rewards given"),
        ({"format": "high"}, {}, "weight for 'format' must be a number"),
        ({"format": True}, {}, "weight for 'format' must be a number"),
        ({"cosine": 1}, {"cosine_maxlen": 10}, r"unknown reward option\(s\) \['cosine_maxlen'\]"),
        ({"cosine": 1}, {"cosine_max_len": 0}, "cosine_max_len must be >= 1"),
        ({"cosine": 1}, {"cosine_max_len": "long"}, "cosine_max_len must be an integer"),
        ({"repetition_penalty": 1}, {"repetition_max_penalty": 1.0}, "must be <= 0"),
        ({"accuracy": 1}, {"read_answer_tag": "yes"}, "read_answer_tag must be true or false"),
    ],
)
def test_build_reward_funcs_errors(rewards, options, message):
    with pytest.raises(ValueError, match=message):
        build_reward_funcs(rewards, options)


def test_import_stays_light():
    """The cockpit imports this module for FORMAT_REWARD_KEYS: no sympy / math-verify at import."""
    code = "import sys, tina_core.recipe.rewards; print(sorted(m for m in ('sympy', 'math_verify', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_trl_grpo_logs_every_reward_under_tina_s_name(tmp_path):
    """One real TRL GRPOTrainer step on a tiny random Qwen2 with prepared data and all seven rewards."""
    import torch
    from test_data import DATA, _tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from tina_core.recipe.datasets import prepare_dataset

    torch.manual_seed(0)
    tok = _tokenizer()
    tok.add_special_tokens({"pad_token": "[UNK]", "eos_token": "<｜end▁of▁sentence｜>"})
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    dataset = prepare_dataset({"name": str(DATA / "default.jsonl"), "max_prompt_tokens": 200}, tokenizer=tok)
    funcs, weights = build_reward_funcs({k: 1.0 for k in REWARDS}, {})
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_vllm=False, bf16=False, gradient_checkpointing=False,
                      max_steps=1, per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                      report_to=[], beta=0.04, use_cpu=True, reward_weights=weights, logging_steps=1, save_strategy="no")
    trainer = GRPOTrainer(model=str(tmp_path / "model"), processing_class=tok, reward_funcs=funcs, args=args,
                          train_dataset=dataset)
    trainer.train()
    logged = trainer.state.log_history[0]
    for key in REWARDS:
        value = logged[f"rewards/{FUNC_NAMES[key]}/mean"]
        assert math.isfinite(value)
    assert logged["rewards/format_reward/mean"] == 0.0  # a random model writes no think tags
