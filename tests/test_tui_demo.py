"""The demo's run directories (tina_tui.demo, on which the cockpit's tests and benchmark run) are
shaped as a real run's: compared with a real `tina run recipes/tiny.yaml` (the session's tiny_run),
event kind by event kind and field by field, metric keys, the recipe snapshot and run.json."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tina_core.recipe.configs import validate_recipe
from tina_core.recipe.loader import SCHEMA, load_recipe
from tina_core.rundir import iter_jsonl, read_json
from tina_tui.demo import SyntheticRun, demo_runs, make_workspace


def kind(value) -> str:
    """A JSON value's type as the index reads it (an int and a float are both numbers)."""
    return ("null" if value is None else "bool" if isinstance(value, bool) else
            "number" if isinstance(value, (int, float)) else type(value).__name__)


def fields_by_event(rundirs) -> dict[str, dict[str, set[str]]]:
    """``{event kind: {field: the value kinds seen}}`` over the runs' events."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for rd in rundirs:
        for ev in rd.read_events():
            for name, value in ev.items():
                out[ev["event"]][name].add(kind(value))
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    runs = make_workspace(home, demo_runs(60) + [
        SyntheticRun("live-demo", steps=30, stop_at_step=60, save_steps=10, state="running")])
    return runs


def test_demo_events_are_the_real_events(demo, tiny_run):
    real, made = fields_by_event([tiny_run]), fields_by_event(demo)
    common = sorted(set(real) & set(made))
    # a finished run's whole life: launched, supervised, one attempt, finished
    assert {"launched", "supervisor_started", "attempt_started", "attempt_exited", "finished"} <= set(common)
    for ev in common:
        assert set(made[ev]) == set(real[ev]), ev
        for name, kinds in made[ev].items():
            said = real[ev][name] - {"null"}
            assert not said or kinds - {"null"} <= said, (ev, name, kinds, real[ev][name])


def test_demo_metrics_are_what_the_trainer_logs(demo, tiny_run):
    real = [r for r in iter_jsonl(tiny_run.metrics) if "train_runtime" not in r]
    logged = set().union(*map(set, real))
    for rd in demo:
        lines = list(iter_jsonl(rd.metrics))
        assert lines and all(set(r) <= logged for r in lines), set(lines[0]) - logged
        assert {k: kind(v) for k, v in lines[0].items() if k in ("step", "attempt", "time", "ts")} == \
            {k: kind(v) for k, v in real[0].items() if k in ("step", "attempt", "time", "ts")}


def test_demo_run_json_and_recipe_are_the_real_ones(demo, tiny_run):
    real = read_json(tiny_run.run_json)
    for rd in demo:
        info = read_json(rd.run_json)
        assert set(info) == set(real), set(info) ^ set(real)
        assert [k for k, v in info.items() if None not in (v, real[k]) and kind(v) != kind(real[k])] == []
        snapshot = load_recipe(rd.recipe)  # the real loader reads it back, checking every section
        assert set(snapshot.data) <= set(SCHEMA) and "extends" not in snapshot.data
        assert snapshot.max_steps == info["max_steps"] and snapshot.stop_at_step == info["stop_at_step"]
    tiny = load_recipe(next(rd for rd in demo if rd.run_id.startswith("tiny-")).recipe)
    assert set(tiny.data) - {"price"} == set(load_recipe(tiny_run.recipe).data) - {"price"}
    validate_recipe(tiny)  # the complete check `tina run` makes before a launch


@pytest.mark.extended
def test_demo_evaluation_events_are_the_real_ones(demo, tiny_run, tmp_path, tiny_cache):
    """A real `tina eval` of the tiny run's last checkpoint (CPU, the shipped arithmetic task, a
    few samples, the real worker and lighteval): its eval_* events and the demo's match."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    shutil.copytree(tiny_run.path.parent.parent, home)
    env = {**os.environ, "TINA_HOME": str(home), "TINA_CACHE": str(tiny_cache), "HF_HUB_OFFLINE": "1",
           "TINA_EVAL_MAX_SAMPLES": "4"}
    out = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "eval", tiny_run.run_id,
                          "--checkpoint", "6", "--tasks", "arith"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    rd = next((home / "runs").iterdir())
    from tina_core.rundir import RunDir

    rd = RunDir(rd)
    deadline = time.monotonic() + 900
    while not any(e["event"] in ("eval_finished", "eval_failed") for e in rd.read_events()):
        assert time.monotonic() < deadline, "the evaluation did not end"
        time.sleep(1)
    real, made = fields_by_event([rd]), fields_by_event(demo)
    assert "eval_finished" in real, [e for e in rd.read_events() if e["event"] == "eval_failed"]
    for ev in ("eval_queued", "eval_started", "eval_finished"):
        assert set(made[ev]) == set(real[ev]), (ev, set(made[ev]) ^ set(real[ev]))
        for name, kinds in made[ev].items():
            said = real[ev][name] - {"null"}
            assert not said or kinds - {"null"} <= said, (ev, name, kinds, real[ev][name])
