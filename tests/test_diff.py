"""`tina diff`: the resolved-recipe keys whose values differ between runs, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tina_core.recipe.diff import ABSENT, differing, flatten
from tina_core.rundir import RunDir
from tina_core.supervise import lifecycle

ROOT = Path(__file__).resolve().parent.parent
TINA = ROOT / "recipes" / "tina"


def _tina(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "TINA_HOME": str(home)})


def test_two_tina_recipes_differ_in_exactly_their_reward_keys(home):
    # Open-RS2 and Open-RS3 share data and schedule; RS3 swaps the accuracy reward for the cosine one.
    out = _tina(home, "diff", str(TINA / "open_rs2.yaml"), str(TINA / "open_rs3.yaml"), "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [r["name"] for r in got["runs"]] == ["open_rs2", "open_rs3"]
    assert {k["key"]: (k["values"], k["unset"]) for k in got["keys"]} == {
        "rewards.accuracy": ([2.0, None], [1]),
        "rewards.cosine": ([None, 2.0], [0]),
        "reward_options.cosine_max_len": ([None, 3584], [0]),
    }


def test_runs_made_from_recipes_differ_in_what_their_overrides_changed(home, tiny_model):
    # Two real run directories (recipe snapshot, run.json, launched event) of the tiny recipe, one
    # with a learning-rate and rank ablation; nothing is started.
    a, _ = lifecycle.create_run(home, ROOT / "recipes" / "tiny.yaml", name="lr-base")
    b, _ = lifecycle.create_run(home, ROOT / "recipes" / "tiny.yaml", name="lr-high",
                                overrides=("grpo.learning_rate=5e-3", "lora.r=4"))
    out = _tina(home, "diff", "lr-base", b.run_id, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [(r["name"], r["run_id"]) for r in got["runs"]] == [("lr-base", a.run_id), ("lr-high", b.run_id)]
    assert [(k["key"], k["values"]) for k in got["keys"]] == [("lora.r", [16, 4]),
                                                              ("grpo.learning_rate", [2e-3, 5e-3])]
    # the text table: a header naming the runs, one row per key, and no other key
    text = _tina(home, "diff", "lr-base", "lr-high").stdout.splitlines()
    assert text[0].split() == ["key", "lr-base", "lr-high"]
    assert [ln.split() for ln in text[1:]] == [["lora.r", "16", "4"], ["grpo.learning_rate", "0.002", "0.005"]]
    # a run beside a recipe file: the run's overrides are what differ from the file as it stands
    out = _tina(home, "diff", str(ROOT / "recipes" / "tiny.yaml"), "lr-high", "--json")
    assert [k["key"] for k in json.loads(out.stdout)["keys"]] == ["lora.r", "grpo.learning_rate"]
    # the same recipe twice: nothing differs
    same = _tina(home, "diff", "lr-base", str(ROOT / "recipes" / "tiny.yaml"))
    assert same.returncode == 0 and "the same" in same.stdout


def test_diff_refuses_clearly(home, tmp_path):
    one = _tina(home, "diff", str(TINA / "limr.yaml"))
    assert one.returncode != 0 and "two runs" in one.stderr
    missing = _tina(home, "diff", str(TINA / "limr.yaml"), "no-such-run")
    assert missing.returncode != 0 and "no run 'no-such-run'" in missing.stderr
    rd = RunDir(home / "runs" / "imported-1")
    rd.path.mkdir(parents=True)
    (rd.path / "run.json").write_text(json.dumps({"run_id": rd.run_id, "name": "imp", "imported": True}))
    imported = _tina(home, "diff", str(TINA / "limr.yaml"), "imp")
    assert imported.returncode != 0 and "no recipe snapshot (it was imported)" in imported.stderr


@pytest.mark.parametrize("a,b,keys", [
    ({"lora": {"r": 8}}, {"lora": {"r": 8.0}}, []),                   # 8 and 8.0 are one setting
    ({"grpo": {"bf16": True}}, {"grpo": {"bf16": 1}}, ["grpo.bf16"]),  # true and 1 are not
    ({"x": {"t": [1, 2]}}, {"x": {"t": [2, 1]}}, ["x.t"]),             # lists compare whole
    ({"x": None}, {}, ["x"]),                                          # null is not unset
    ({"name": "a", "description": "one"}, {"name": "b"}, []),         # labels are not settings
])
def test_what_counts_as_a_difference(a, b, keys):
    assert [d.key for d in differing([a, b])] == keys


def test_unset_keys_and_flattening():
    assert flatten({"a": {"b": {"c": 1}, "d": {}}, "e": [1]}) == {"a.b.c": 1, "a.d": {}, "e": [1]}
    (d,) = differing([{"rewards": {"format": 1.0}}, {"rewards": {"format": 1.0, "cosine": 2.0}}])
    assert d.key == "rewards.cosine" and d.values == (ABSENT, 2.0)
