"""Dataset preparation on small local JSONL / JSON / parquet fixtures, prompts and the chat template."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tina_core.recipe.datasets import KNOWN_DATASETS, check_section, dataset_size, prepare_dataset
from tina_core.recipe.prompts import (
    OPEN_R1_SYSTEM_PROMPT,
    OPEN_RS_SYSTEM_PROMPT,
    REASON_CHAT_TEMPLATE,
    system_prompt_for,
)
from tina_core.rundir import TinaError

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user_texts(ds) -> list[str]:
    return [p[-1]["content"] for p in ds["prompt"]]


# --- column rules --------------------------------------------------------------------------------
def test_default_mapping_wraps_answers_and_renames_question(caplog):
    with caplog.at_level(logging.WARNING, logger="tina_core.recipe.datasets"):
        ds = prepare_dataset({"name": str(DATA / "default.jsonl")})
    assert ds.column_names == ["prompt", "solution"]
    # the row with a null answer is dropped and counted; the blank line is skipped
    assert ds["solution"] == ["$7$", "$\\frac{1}{2}$", "$6$"]
    assert user_texts(ds) == ["What is 3 + 4?", "What is half of 1?", "How many sides does a hexagon have?"]
    assert all(p[0] == {"role": "system", "content": OPEN_R1_SYSTEM_PROMPT} for p in ds["prompt"])
    assert "dropped 1 of 4 rows" in caplog.text


def test_default_mapping_keeps_an_existing_solution_column():
    # Tina's generic rule: an existing `solution` is the gold, `answer` is left alone
    ds = prepare_dataset({"name": str(DATA / "deepscaler.jsonl"), "mapping": "default"})
    assert ds["solution"][0].endswith("$\\boxed{1024}$.")


def test_deepscaler_mapping_uses_the_wrapped_answer():
    ds = prepare_dataset({"name": str(DATA / "deepscaler.jsonl"), "mapping": "deepscaler"})
    assert ds["solution"] == ["$1024$", "$\\frac{3}{4}$"]
    assert user_texts(ds) == ["Compute $2^{10}$.", "Simplify $\\frac{6}{8}$."]


def test_ii_thought_mapping_reads_messages_and_verification_info():
    ds = prepare_dataset({"name": str(DATA / "ii_thought.jsonl"), "mapping": "ii_thought"})
    assert user_texts(ds) == ["Find $x$ if $2x = 10$.", "What is $\\sqrt{16}$?", "Evaluate $1/4 + 1/4$."]
    assert ds["solution"] == ["$5$", "$4$", "$\\frac{1}{2}$"]


def test_explicit_column_mapping(tmp_path):
    ds = prepare_dataset({"name": str(DATA / "custom.jsonl"), "mapping": {"problem": "q", "answer": "final"}})
    assert ds["solution"] == ["$7$", "$25$"] and user_texts(ds) == ["What is 9 - 2?", "What is 5 * 5?"]
    ds = prepare_dataset({"name": str(DATA / "custom.jsonl"), "mapping": {"problem": "q", "solution": "final"}})
    assert ds["solution"] == ["7", "25"]  # a `solution` column is taken as is


def test_parquet_with_a_prompt_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"prompt": ["1 + 1?", "2 + 2?", "3 + 3?"], "answer": ["2", "4", "6"]}), path)
    ds = prepare_dataset({"name": str(path)})
    assert user_texts(ds) == ["1 + 1?", "2 + 2?", "3 + 3?"] and ds["solution"] == ["$2$", "$4$", "$6$"]
    assert dataset_size({"name": str(path)}) == 3


def test_folder_of_files_by_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"problem": f"p{i}", "answer": i} for i in range(5)])
    write_jsonl(tmp_path / "test.jsonl", [{"problem": "t", "answer": 1}])
    assert len(prepare_dataset({"name": str(tmp_path)})) == 5
    assert user_texts(prepare_dataset({"name": str(tmp_path), "split": "test"})) == ["t"]
    assert dataset_size({"name": str(tmp_path)}) == 5
    assert dataset_size({"name": str(tmp_path), "split": "test"}) == 1
    with pytest.raises(TinaError, match="no .* files for split 'validation'"):
        prepare_dataset({"name": str(tmp_path), "split": "validation"})


def test_json_list_file_with_mixed_answer_types(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"question": "a", "answer": 3}, {"question": "b", "answer": "\\pi"}]))
    assert prepare_dataset({"name": str(path)})["solution"] == ["$3$", "$\\pi$"]
    assert dataset_size({"name": str(path)}) == 2


def test_limit_and_shuffle(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": f"p{i}", "answer": i} for i in range(20)])
    assert user_texts(prepare_dataset({"name": str(path), "limit": 3})) == ["p0", "p1", "p2"]
    a = user_texts(prepare_dataset({"name": str(path), "shuffle_seed": 7}))
    b = user_texts(prepare_dataset({"name": str(path), "shuffle_seed": 7}))
    assert a == b and a != [f"p{i}" for i in range(20)] and sorted(a) == sorted(f"p{i}" for i in range(20))
    assert dataset_size({"name": str(path), "limit": 3}) == 3 and dataset_size({"name": str(path)}) == 20


# --- system prompts and template -----------------------------------------------------------------
def test_system_prompt_rule_and_overrides(tmp_path):
    assert system_prompt_for("knoveleng/open-rs") == OPEN_RS_SYSTEM_PROMPT
    assert system_prompt_for("knoveleng/open-s1") == OPEN_R1_SYSTEM_PROMPT  # RS1 gets open-r1's
    assert system_prompt_for("GAIR/LIMR") == OPEN_R1_SYSTEM_PROMPT
    assert system_prompt_for("GAIR/LIMR", "open_rs") == OPEN_RS_SYSTEM_PROMPT
    assert system_prompt_for("knoveleng/open-rs", "open_r1") == OPEN_R1_SYSTEM_PROMPT
    assert system_prompt_for("x", "none") is None
    assert system_prompt_for("x", "Answer briefly.") == "Answer briefly."
    ds = prepare_dataset({"name": str(DATA / "custom.jsonl"), "mapping": {"problem": "q", "answer": "final"},
                          "system_prompt": "none"})
    assert ds["prompt"][0] == [{"role": "user", "content": "What is 9 - 2?"}]


def test_prompts_are_tina_s_text():
    assert "<think>\n...\n</think>\n<answer>\n...\n</answer>" in OPEN_R1_SYSTEM_PROMPT
    assert OPEN_R1_SYSTEM_PROMPT.startswith("\nYou are a helpful AI Assistant")
    assert "put your final answer within \\boxed{{}} ." in OPEN_RS_SYSTEM_PROMPT
    assert "respectively, \ni.e., <think> reasoning process here </think> <answer> answer here </answer>." in OPEN_RS_SYSTEM_PROMPT


def _tokenizer():
    """A real fast tokenizer (word level, trained here) with the reasoning chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [OPEN_R1_SYSTEM_PROMPT, "what is one two three four five six seven eight nine ten plus minus"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<｜begin▁of▁sentence｜>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<｜begin▁of▁sentence｜>", unk_token="[UNK]",
                                   chat_template=REASON_CHAT_TEMPLATE)


def test_chat_template_renders_like_open_r1_s():
    tok = _tokenizer()
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "What is 3 + 4?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜>SYS<｜User｜>What is 3 + 4?<｜Assistant｜>"  # no <think> prefill
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "<think>\nx\n</think>"}], tokenize=False)
    assert full == "<｜begin▁of▁sentence｜>SYS<｜User｜>What is 3 + 4?<｜Assistant｜><think>\nx\n</think><｜end▁of▁sentence｜>"
    no_system = tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True)
    assert no_system == "<｜begin▁of▁sentence｜><｜User｜>What is 3 + 4?<｜Assistant｜>"


def _copy_model(src: Path, dest: Path, model_type: str | None = None) -> Path:
    """A local copy of a model folder under another name (the weights are not read here)."""
    dest.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (dest / f.name).write_bytes(f.read_bytes())
    if model_type:
        cfg = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**cfg, "model_type": model_type, "architectures": None}))
    return dest


def test_tinas_template_follows_the_model_config_not_its_name(tiny_model, tmp_path):
    """The trainer's tokenizer: Tina's template for any Qwen2-architecture base, whatever its folder
    is called; the tiny recipe keeps the template its model was warm-started on."""
    from tina_core.recipe import tiny_model as tiny
    from tina_core.recipe.loader import RECIPES_DIR, load_recipe
    from tina_core.train.trainer import load_tokenizer

    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "What is 3 + 4?"}]
    tiny_recipe = load_recipe(RECIPES_DIR / "tiny.yaml")
    own = load_tokenizer(tiny_recipe, str(tiny_model))
    assert own.chat_template != REASON_CHAT_TEMPLATE and own.pad_token == "<|endoftext|>"
    assert own.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True) == \
        tiny.CHAT_TEMPLATE_RENDER.format(user="What is 3 + 4?")

    base = _copy_model(tiny_model, tmp_path / "my-distilled-base")  # a qwen2 config, no "qwen" in the name
    tok = load_tokenizer(load_recipe(RECIPES_DIR / "tiny.yaml", [f"model.name_or_path={base}"]), str(base))
    assert tok.chat_template == REASON_CHAT_TEMPLATE
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "SYS<｜User｜>What is 3 + 4?<｜Assistant｜>"
    assert tok.pad_token == "<|endoftext|>"  # the tiny vocabulary has no <|fim_pad|>: its own pad stays

    other = _copy_model(tiny_model, tmp_path / "Qwen-lookalike", model_type="llama")  # the name alone says qwen
    kept = load_tokenizer(load_recipe(RECIPES_DIR / "tiny.yaml", [f"model.name_or_path={other}"]), str(other))
    assert kept.chat_template == own.chat_template


def test_max_prompt_tokens_drops_long_prompts(tmp_path, caplog):
    tok = _tokenizer()
    rows = [{"problem": "one plus two", "answer": 3}, {"problem": " ".join(["nine"] * 60), "answer": 9},
            {"problem": "ten minus one", "answer": 9}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)

    def n_tokens(messages):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    full = prepare_dataset({"name": str(path)})
    lengths = [n_tokens(p) for p in full["prompt"]]
    limit = max(lengths[0], lengths[2])
    assert lengths[1] > limit  # the fixture really has one long prompt
    with caplog.at_level(logging.WARNING, logger="tina_core.recipe.datasets"):
        kept = prepare_dataset({"name": str(path), "max_prompt_tokens": limit}, tokenizer=tok)
    assert user_texts(kept) == ["one plus two", "ten minus one"]
    assert f"dropped 1 of 3 prompts longer than {limit} tokens" in caplog.text
    with pytest.raises(TinaError, match="no usable rows"):
        prepare_dataset({"name": str(path), "max_prompt_tokens": 1}, tokenizer=tok)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        prepare_dataset({"name": str(path), "max_prompt_tokens": limit})


# --- errors --------------------------------------------------------------------------------------
def test_missing_local_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(TinaError, match=f"local dataset not found: {missing}"):
        prepare_dataset({"name": str(missing)})
    with pytest.raises(TinaError, match="not found"):
        dataset_size({"name": "./no/such/folder"})


def test_missing_columns_name_what_exists(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "hi", "label": 1}])
    with pytest.raises(TinaError, match=r"no problem column .*the columns are \['text', 'label'\]"):
        prepare_dataset({"name": str(path)})
    path = write_jsonl(tmp_path / "e.jsonl", [{"problem": "hi", "label": 1}])
    with pytest.raises(TinaError, match=r"no gold column \(expected 'solution' or 'answer'\)"):
        prepare_dataset({"name": str(path)})
    with pytest.raises(TinaError, match=r"needs column\(s\) \['final'\]; the columns are \['problem', 'label'\]"):
        prepare_dataset({"name": str(path), "mapping": {"problem": "problem", "answer": "final"}})
    with pytest.raises(TinaError, match=r"deepscaler mapping needs column\(s\) \['answer'\]"):
        prepare_dataset({"name": str(path), "mapping": "deepscaler"})


def test_bad_json_line_and_empty_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a", "answer": 1}\n{"problem": "b", "answer": \n')
    with pytest.raises(TinaError, match=r"bad.jsonl, line 2: invalid JSON"):
        prepare_dataset({"name": str(bad)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TinaError, match=r"empty.jsonl \(split 'train'\) is empty"):
        prepare_dataset({"name": str(empty)})


def test_malformed_ii_thought_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "q"}],
                                             "verification_info": "{not json"}])
    with pytest.raises(TinaError, match="verification_info"):
        prepare_dataset({"name": str(path), "mapping": "ii_thought"})


@pytest.mark.parametrize(
    "section, message",
    [
        ({"name": "x", "shuffle": 1}, r"unknown key\(s\) \['shuffle'\]"),
        ({}, "dataset.name"),
        ({"name": "x", "mapping": "deepscalar"}, "unknown preset 'deepscalar'"),
        ({"name": "x", "mapping": {"problem": "q"}}, "dataset.mapping: expected"),
        ({"name": "x", "limit": 0}, "dataset.limit: expected an integer >= 1"),
        ({"name": "x", "max_prompt_tokens": "512"}, "dataset.max_prompt_tokens"),
    ],
)
def test_section_errors(section, message):
    with pytest.raises(TinaError, match=message):
        check_section(section)


# --- sizes ---------------------------------------------------------------------------------------
def test_known_sizes():
    assert dataset_size({"name": "knoveleng/open-rs"}) == 7_000
    assert dataset_size({"name": "GAIR/LIMR", "limit": 100}) == 100
    assert dataset_size({"name": "bethgelab/CuratedThoughts", "config": "OpenThoughts-114k-math-default"}) == 66_100
    assert dataset_size({"name": "bethgelab/CuratedThoughts", "config": "other"}) is None
    assert dataset_size({"name": "knoveleng/open-rs", "split": "test"}) is None
    assert dataset_size({"name": "someone/unknown"}) is None
    assert dataset_size({"name": str(DATA / "default.jsonl")}) == 4  # rows in the file, before filtering
    assert check_section({"name": "agentica-org/DeepScaleR-Preview-Dataset"})["mapping"] == "deepscaler"


def test_every_tina_recipe_dataset_is_known():
    names = set()
    for path in (ROOT / "recipes" / "tina").glob("*.yaml"):
        name = (yaml.safe_load(path.read_text()).get("dataset") or {}).get("name")
        if name:
            names.add(name)
    assert names and names <= set(KNOWN_DATASETS)


def test_import_stays_light():
    code = "import sys, tina_core.recipe.datasets; print(sorted(m for m in ('datasets', 'torch', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
