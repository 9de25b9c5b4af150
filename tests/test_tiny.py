"""The tiny offline model: built without the hub, cached by its parameters, safe to build from two
processes at once, and a "distilled base" that adds but rarely formats its answers; and the whole
tiny recipe (`tina run recipes/tiny.yaml`, as it stands) learning the format, reproducibly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, run_tiny_recipe
from test_train import TRL_KEYS

from tina_core.recipe import tiny_model as tiny
from tina_core.analysis.metric_keys import FORMAT_REWARD
from tina_core.rundir import CHECKPOINT_COMPLETE, iter_jsonl
from tina_core.recipe.tiny_model import MANIFEST, TinyParams, ensure_tiny_model

QUICK = {"sft_steps": 3, "sft_batch_size": 4}  # a build in seconds, for cache and lock behaviour


def test_built_offline_into_the_cache(tiny_model, tiny_cache, monkeypatch):
    assert tiny_model == tiny_cache / "tiny" / f"tiny-{TinyParams().key()}"
    manifest = json.loads((tiny_model / MANIFEST).read_text())
    assert manifest["params"] == TinyParams().__dict__ and manifest["build_version"] == tiny.BUILD_VERSION
    assert manifest["parameters"] < 1_000_000 and manifest["sft_targets"] == 600 * 32
    # about 2% of the warm-start targets were well formatted
    assert 0.01 < manifest["sft_formatted_targets"] / manifest["sft_targets"] < 0.03
    monkeypatch.setenv("TINA_CACHE", str(tiny_cache))
    built = []
    assert ensure_tiny_model({}, log=built.append) == tiny_model and built == []  # cached: no rebuild


def test_tokenizer_keeps_the_tags_visible(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.padding_side == "left"
    assert len(tok) <= 512 and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "<think>\n3+4=7\n</think>\n<answer>7</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(t in tok.convert_ids_to_tokens(ids) for t in tiny.TAG_TOKENS)  # one token each
    # TRL decodes completions skipping special tokens: the tags must survive, EOS must not
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt == tiny.CHAT_TEMPLATE_RENDER.format(user="What is 3 + 4?")  # the corpus saw the same text


def test_distilled_base_adds_but_rarely_formats(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tina_core.recipe.rewards import format_reward, make_accuracy_reward

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = tiny.arith_rows()[:48]
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["problem"]}], tokenize=False,
                                       add_generation_prompt=True) for r in rows]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, do_sample=True, temperature=1.0, max_new_tokens=32)
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    fmt = sum(format_reward(texts)) / len(texts)
    accuracy_reward = make_accuracy_reward(read_answer_tag=True)  # as recipes/tiny.yaml scores it
    acc = sum(accuracy_reward(texts, solution=[f"${r['answer']}$" for r in rows])) / len(texts)
    assert fmt < 0.15, texts[:4]
    assert acc > 0.5, texts[:4]


def test_concurrent_builders_wait_for_one_build(tmp_path, monkeypatch):
    # flock locks belong to each open file, so two threads contend exactly as two processes do.
    monkeypatch.setenv("TINA_CACHE", str(tmp_path))
    logs: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        paths = set(pool.map(lambda _: ensure_tiny_model(QUICK, log=logs.append), range(2)))
    assert paths == {tmp_path / "tiny" / f"tiny-{TinyParams(**QUICK).key()}"}
    assert sum(line.startswith("tiny: built") for line in logs) == 1  # the other found it built
    left = [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.endswith(".lock")]
    assert left == [f"tiny-{TinyParams(**QUICK).key()}"]


def test_build_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    tiny.build_tiny_model(QUICK, a, log=lambda *_: None)
    tiny.build_tiny_model(QUICK, b, log=lambda *_: None)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_cache_key_follows_parameters_and_build_version(monkeypatch, tmp_path):
    assert TinyParams().key() != TinyParams(hidden_size=128).key()
    key = TinyParams().key()
    monkeypatch.setattr(tiny, "BUILD_VERSION", tiny.BUILD_VERSION + 1)
    assert TinyParams().key() != key
    monkeypatch.setenv("TINA_CACHE", str(tmp_path / "c"))
    assert tiny.cache_root() == tmp_path / "c"
    monkeypatch.delenv("TINA_CACHE")
    assert tiny.cache_root(tmp_path / "h") == tmp_path / "h" / "cache"


def test_bad_build_parameters_are_named():
    from tina_core.rundir import TinaError

    with pytest.raises(TinaError, match=r"model.tiny: .*'layers'.*expected some of: vocab_size"):
        ensure_tiny_model({"layers": 3})


def test_shipped_data_is_the_generated_data():
    shipped = [json.loads(line) for line in (tiny.DATA_DIR / "train.jsonl").read_text().splitlines()]
    assert shipped == tiny.arith_rows() and len(shipped) == 100
    assert all(int(r["answer"]) == sum(map(int, r["problem"][8:-1].split(" + "))) for r in shipped)


# --- the whole tiny recipe -------------------------------------------------------------------------
def format_curve(run) -> list[tuple[int, float]]:
    return [(r["step"], r[FORMAT_REWARD]) for r in iter_jsonl(run.metrics) if FORMAT_REWARD in r]


def tina_json(run, *args: str):
    """A fresh `tina ... --json` process on the run's workspace."""
    home = run.path.parent.parent
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args, "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "TINA_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# The tests sharing this run stay on one xdist worker (make test: --dist loadgroup), so it is trained once.
shares_the_full_run = pytest.mark.xdist_group("full-tiny-run")


@pytest.fixture(scope="module")
def full_tiny_run(tmp_path_factory, tiny_model, tiny_cache):
    """`tina run recipes/tiny.yaml` exactly as shipped (100 steps, seed 42; ~15 s here once the tiny
    model is built), trained once for the tests below."""
    return run_tiny_recipe(tmp_path_factory.mktemp("full-tiny"), tiny_cache, "tiny-full")


@pytest.mark.slow
@shares_the_full_run
def test_the_tiny_recipe_learns_the_format(full_tiny_run):
    """Issue 2's done-when: TRL 1.x keys, complete adapter checkpoints, and a format reward that goes
    from near 0 to >= 0.8."""
    run = full_tiny_run
    rows = [r for r in iter_jsonl(run.metrics) if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, 101))
    assert all(TRL_KEYS <= r.keys() for r in rows), TRL_KEYS - rows[0].keys()
    curve = [v for _, v in format_curve(run)]
    assert sum(curve[:20]) / 20 <= 0.05 and max(curve[:20]) <= 0.2, curve[:20]  # the base rarely formats
    assert sum(curve[-10:]) / 10 >= 0.8, curve[-10:]
    # the save grid, and the checkpoint the tentative transition asked for (unless it fell on the grid)
    assert [s for s in run.checkpoint_steps() if s % 25 == 0] == [25, 50, 75, 100]
    assert len([s for s in run.checkpoint_steps() if s % 25]) <= 1
    for step in run.checkpoint_steps():
        marker = json.loads((run.checkpoint_path(step) / CHECKPOINT_COMPLETE).read_text())
        assert marker["step"] == step and "adapter_model.safetensors" in marker["files"]
    assert run.read_events()[-1]["event"] == "finished"


@pytest.mark.slow
@shares_the_full_run
def test_phase_detection_on_the_real_tiny_curve_in_ls_and_status(full_tiny_run):
    """The detector on the real curve, as a user reads it (`tina status/ls --json`, fresh processes
    ingesting the run): a marker on the format reward inside its rise, and the latest checkpoint at
    or before it recommended."""
    run = full_tiny_run
    curve = format_curve(run)
    values = dict(curve)
    mean3 = {s: sum(values[t] for t in range(max(1, s - 2), s + 1)) / min(3, s) for s in values}
    reach = min(s for s, m in mean3.items() if m >= 0.8)               # where the rise ends
    start = max(s for s, v in curve if s < reach and v == 0.0) + 1     # after its last zero
    status = tina_json(run, "status", run.run_id)
    ph = status["phase_transition"]
    assert ph["signal"] == FORMAT_REWARD and ph["status"] in ("tentative", "confirmed") and ph["direction"] == "up"
    # the marker sits where the evidence starts: inside the rise, or where it first flickers up
    assert start - 5 <= ph["step"] <= reach, (ph, start, reach, curve)
    rec = status["recommended_checkpoint"]
    assert rec is not None and rec == max(s for s in run.checkpoint_steps(evaluable=True) if s <= ph["step"])
    assert ph["step"] - rec <= 3  # the ring's snapshot at the marker, pinned: not the save grid's
    [listed] = tina_json(run, "ls")
    assert (listed["phase_transition"], listed["recommended_checkpoint"]) == (ph, rec)


@pytest.mark.extended
@pytest.mark.slow
@shares_the_full_run
def test_same_seed_same_format_curve(full_tiny_run, home, tiny_cache):
    """A second run of the recipe with its seed: the same curve, step for step."""
    again = run_tiny_recipe(home, tiny_cache, "tiny-again")
    assert format_curve(again) == format_curve(full_tiny_run)
