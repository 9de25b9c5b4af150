"""Phase-transition detection: the synthetic set (jumps, ramps, noise, NaN and gaps, controls),
the result object, the recommendation rule, and the tiny recipe's real curve."""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from synthetic import Scenario, generate, scenarios  # noqa: E402

from tina_core.analysis import phase  # noqa: E402
from tina_core.analysis.changes import SignalWatch  # noqa: E402
from tina_core.analysis.pick import choose  # noqa: E402
from tina_core.analysis.metric_keys import COMPLETION_LENGTH, FORMAT_REWARD, TAG_COUNT_REWARD  # noqa: E402
from tina_core.recipe.loader import RECIPES_DIR, load_recipe  # noqa: E402
from tina_core.rundir import RunDir, write_json_atomic  # noqa: E402
from tina_core.report.runs import describe  # noqa: E402
from tina_core.store.index import Store  # noqa: E402

SEEDS = 8


def first_change(series):
    """(every verdict, the first confirmed move still holding at the end) of one signal fed one
    point at a time."""
    w = SignalWatch("x")
    w.extend(series)
    return w.verdicts, next(iter(w.holding()), None)


def noise_sigmas(sc: Scenario) -> float:
    """The scenario's move in its step-to-step noise (a binomial fraction's, or the length's cv)."""
    if sc.signal == "length":
        return abs(sc.after - sc.before) / (sc.cv * max(sc.before, sc.after))
    p = max(min(sc.before, sc.after), 1 / sc.group)
    return abs(sc.after - sc.before) / (p * (1 - p) / sc.group) ** 0.5


@pytest.mark.parametrize("sc", [s for s in scenarios() if s.change], ids=lambda s: s.name)
def test_changes_are_found_quickly_and_confirmed(sc: Scenario):
    delays, missed = [], 0
    for seed in range(SEEDS):
        series, truth = generate(sc, seed)
        _, c = first_change(series)
        if c is None and (noise_sigmas(sc) < 2.5 or sc.early):
            # a move this close to PhaseParams.min_shift (2 sigma) lasts but is found only sometimes:
            # the price of confirming nothing smaller; a change at the 4th to 6th point has three to
            # five points of its first level to be told from (bench/detector.py prints how often)
            missed += 1
            continue
        assert c is not None and c.status == "confirmed", (seed, truth)
        assert c.step >= truth - 5, "marker before the change"
        assert c.step <= truth + max(sc.ramp, 5) + 5
        assert c.direction == ("up" if sc.after > sc.before else "down")
        assert abs(c.size) > 0.5 * abs(sc.after - sc.before)
        delays.append(c.detected_at - truth)
    # a ramp has to rise part of the way before it shows: the slower and noisier, the later
    limit = 10 if sc.ramp <= 10 else 15 if sc.ramp <= 20 else 40
    assert statistics.median(delays) <= limit and missed <= (1 if sc.early else SEEDS * 2 // 3)


@pytest.mark.parametrize("sc", [s for s in scenarios() if not s.change], ids=lambda s: s.name)
def test_controls_raise_no_confirmed_marker(sc: Scenario):
    finals = [first_change(generate(sc, seed)[0])[1] for seed in range(SEEDS * 2)]
    assert sum(c is not None for c in finals) <= 1


def test_tentative_within_ten_steps_then_confirmed():
    sc = Scenario("x", "format", 0.01, 0.9, ramp=20, group=16)
    series, truth = generate(sc, 3)
    at = {n: phase.detect({FORMAT_REWARD: series[:n]}) for n in range(truth - 2, truth + 40)}
    assert at[truth - 2]["status"] == "none"
    first_marked = min(n for n, r in at.items() if r["status"] != "none")
    assert at[first_marked]["status"] == "tentative"
    assert series[first_marked - 1][0] - truth <= 10
    assert at[truth + 39]["status"] == "confirmed"


def test_result_object_signals_and_not_enough_data():
    assert phase.detect({FORMAT_REWARD: [(1, 0.0), (2, 0.0)]}) is None
    assert phase.detect({}) is None
    flat = [(s, 0.5 + 0.01 * (s % 3)) for s in range(1, 100)]
    none = phase.detect({FORMAT_REWARD: flat})
    assert {k: none[k] for k in ("step", "signal", "signals", "status", "size", "direction", "detected_at",
                                 "confidence", "notes")} == {
        "step": None, "signal": None, "signals": [], "status": "none", "size": None, "direction": None,
        "detected_at": None, "confidence": None, "notes": []}
    assert none["watch"]["signals"] == [FORMAT_REWARD] and none["evidence"][0]["moved"] is False
    fmt = [(s, 0.02 * (s % 2) if s < 60 else 0.9) for s in range(1, 120)]
    length = [(s, 30.0 + s % 4 if s < 63 else 60.0 + s % 4) for s in range(1, 120)]
    r = phase.detect({FORMAT_REWARD: fmt, COMPLETION_LENGTH: length, "loss": fmt})
    assert r["step"] == 60 and r["signal"] == FORMAT_REWARD and r["status"] == "confirmed"
    assert r["signals"] == [FORMAT_REWARD, COMPLETION_LENGTH]
    assert r["direction"] == "up" and r["size"] == pytest.approx(0.89, abs=0.02)
    assert r["confidence"] == "high" and r["shape"] == "sharp"
    assert [e["signal"] for e in r["evidence"] if e["moved"]] == [FORMAT_REWARD, COMPLETION_LENGTH]
    assert any("corroborates" in x for x in r["reasons"])
    json.dumps(r)


def test_nan_gaps_and_restart_shaped_series():
    # NaN values and missing steps are skipped; steps are reported as logged
    series = [(s * 2, float("nan") if s % 9 == 0 else (0.1 if s < 70 else 0.8)) for s in range(1, 150)]
    r = phase.detect({FORMAT_REWARD: series})
    assert r["status"] == "confirmed" and r["step"] == 140


def test_params_live_in_one_frozen_dataclass():
    p = phase.DEFAULT
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.h = 1.0
    stricter = dataclasses.replace(p, h=1e9)
    assert phase.detect({FORMAT_REWARD: [(s, 0.0 if s < 50 else 1.0) for s in range(1, 100)]},
                        stricter)["status"] == "none"


def _run_with_recipe(home: Path, run_id: str, rewards: dict | None, series: dict[str, list]) -> RunDir:
    """A run directory with metrics lines and (unless ``rewards`` is None) a recipe snapshot."""
    rd = RunDir(home / "runs" / run_id)
    rd.checkpoints.mkdir(parents=True)
    write_json_atomic(rd.run_json, {"run_id": run_id, "name": run_id, "stop_at_step": 100})
    if rewards is not None:  # the tiny recipe scoring with these rewards instead (JSON is YAML)
        rd.recipe.write_text(load_recipe(RECIPES_DIR / "tiny.yaml", [f"rewards={json.dumps(rewards)}"]).to_yaml())
    steps = sorted({s for pts in series.values() for s, _ in pts})
    for st in steps:  # as the trainer writes them
        rd.log_metrics(st, 1, {k: dict(pts)[st] for k, pts in series.items()}, at=1e9 + st)
    return rd


def test_the_runs_recipe_says_which_format_rewards_are_watched(tmp_path):
    """Detection watches the format rewards the run's recipe snapshot scores with (completion
    length corroborates); a run without a snapshot (imported) is watched on every reward whose name
    says format."""
    home = tmp_path / "home"
    flicker = [(s, 0.02 * (s % 2)) for s in range(1, 121)]
    tag = [(s, v if s < 40 else 0.9) for s, v in flicker]      # the tag-count reward turns at 40
    fmt = [(s, v if s < 20 else 0.8) for s, v in flicker]      # a format-reward curve turning at 20
    length = [(s, 30.0 + s % 3) for s in range(1, 121)]
    curves = {TAG_COUNT_REWARD: tag, FORMAT_REWARD: fmt, COMPLETION_LENGTH: length}
    scored = _run_with_recipe(home, "tag-only", {"tag_count": 1.0, "accuracy": 1.0}, curves)
    both = _run_with_recipe(home, "both", {"accuracy": 1.0, "tag_count": 1.0, "format": 1.0}, curves)
    imported = _run_with_recipe(home, "imported", None, curves)
    bad = _run_with_recipe(home, "damaged", {}, curves)
    bad.recipe.write_text("rewards: [unclosed")

    assert phase.params_for_run(scored.path).signals == (TAG_COUNT_REWARD,)
    assert phase.params_for_run(scored.path).watch_source == "recipe"
    assert phase.params_for_run(both.path).signals == (FORMAT_REWARD, TAG_COUNT_REWARD)
    # no snapshot, or a damaged one: the signals are chosen from the run's own keys
    assert phase.params_for_run(imported.path) == phase.DEFAULT == phase.params_for_run(bad.path)
    assert phase.DEFAULT.signals == () and phase.DEFAULT.watch_source == "auto"

    store = Store(home)
    store.ingest()
    for rd in (scored, both, imported, bad):
        for c in range(25, 101, 25):
            (rd.checkpoint_path(c)).mkdir()
            (rd.checkpoint_path(c) / "tina-complete.json").write_text("{}")
    store.ingest()
    runs = {rd.run_id: describe(home, rd, store) for rd in (scored, both, imported, bad)}
    ph = runs["tag-only"]["phase_transition"]
    assert (ph["signal"], ph["step"], ph["status"], ph["signals"]) == (TAG_COUNT_REWARD, 40, "confirmed", [TAG_COUNT_REWARD])
    assert runs["tag-only"]["recommended_checkpoint"] == 25
    for rid in ("both", "imported", "damaged"):
        ph = runs[rid]["phase_transition"]
        assert (ph["signal"], ph["step"], ph["signals"]) == (FORMAT_REWARD, 20, [FORMAT_REWARD, TAG_COUNT_REWARD]), rid
        assert runs[rid]["recommended_checkpoint"] is None  # no checkpoint at or before step 20
    # The recipe's change of mind (its snapshot rewritten) is seen at once.
    scored.recipe.write_text(scored.recipe.read_text().replace("tag_count: 1.0", "format: 1.0"))
    assert Store(home).phase(scored.run_id)["signal"] == FORMAT_REWARD


@pytest.mark.parametrize("ph, cks, expect", [
    (None, [{"step": 25, "avg": None}], (None, None, False, "not enough logged points yet")),
    ({"status": "none", "step": None}, [], (None, None, False, "no phase transition")),
    ({"status": "tentative", "step": 60, "signal": "f"}, [{"step": 25, "avg": None}, {"step": 50, "avg": 0.4},
                                                         {"step": 75, "avg": 0.6}], (50, 75, True, "tentative")),
    ({"status": "confirmed", "step": 50, "signal": "f"}, [{"step": 50, "avg": 0.5}, {"step": 75, "avg": 0.4}],
     (50, 50, False, "at or before")),
    ({"status": "confirmed", "step": 10, "signal": "f"}, [{"step": 25, "avg": None}], (None, None, False, "no complete")),
])
def test_recommendation_rule(ph, cks, expect):
    r = choose(ph, cks)
    assert (r["recommended"], r["best_evaluated"], r["disagree"]) == expect[:3]
    assert expect[3] in r["reason"]


@pytest.mark.extended
@pytest.mark.slow
def test_detection_on_a_real_tiny_run(request):
    """The shared tiny run from conftest (a few GRPO steps): the store reads it and the detector
    says there is not enough to judge yet rather than inventing a transition."""
    try:
        run = request.getfixturevalue("tiny_run")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_run fixture is not available")
    store = Store(run.path.parent.parent)
    store.ingest()
    steps = [s for s, _ in store.metric_series(run.run_id, FORMAT_REWARD, max_points=None)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
    ph = store.phase(run.run_id)
    n = len(steps)
    if n < phase.DEFAULT.min_ref + phase.DEFAULT.lag + 1:
        assert ph is None
        assert "the log has too few points" in store.recommendation(run.run_id)["reason"]  # it has ended
    else:
        assert ph is not None and ph["status"] in ("none", "tentative", "confirmed")


def test_real_tiny_recipe_curve_replayed_online():
    """metrics.jsonl of a real `tina run recipes/tiny.yaml` (tests/data/README.md; 100 steps,
    checkpoints every 25): format reward near 0 with rare 0.06-0.12 flickers, its last 0 at step 46,
    then rising to a 3-step mean of 0.8 at step 60 and ~0.95 after. Replayed one logged step at a
    time, as the TUI sees it."""
    lines = (Path(__file__).parent / "data" / "tiny_run_metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    series = [(r["step"], r[FORMAT_REWARD]) for r in recs if FORMAT_REWARD in r]
    length = [(r["step"], r[COMPLETION_LENGTH]) for r in recs if COMPLETION_LENGTH in r]
    seen = {}
    for n in range(10, len(series) + 1):
        r = phase.detect({FORMAT_REWARD: series[:n], COMPLETION_LENGTH: length[:n]})
        seen[series[n - 1][0]] = r and (r["status"], r["step"])
    assert all(v in (None, ("none", None)) for s, v in seen.items() if s < 47), "nothing before the rise"
    first = min(s for s, v in seen.items() if v and v[0] != "none")
    assert seen[first][0] == "tentative" and first <= 47 + 10
    final = phase.detect({FORMAT_REWARD: series, COMPLETION_LENGTH: length})
    assert final["status"] == "confirmed" and final["direction"] == "up" and 44 <= final["step"] <= 49
    assert final["signals"] == [FORMAT_REWARD] and final["size"] > 0.6
    assert choose(final, [{"step": s, "avg": None} for s in (25, 50, 75, 100)])["recommended"] == 25
