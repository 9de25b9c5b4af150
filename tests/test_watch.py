"""What the phase marker watches on any run, and what a marker means: format-like rewards by name
and by behaviour, length to corroborate, the total reward as a stand-in; the semantics (a length
turn alone, length at the cap, a ramp, a total-only run); the run's setting (recipe, watch_changed
events) and `tina watch` / `tina import --watch` re-judging a run."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tina_core.analysis import phase, signals
from tina_core.analysis.metric_keys import COMPLETION_LENGTH
from tina_core.cli.commands import app
from tina_core.importer.readers import import_run
from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.rundir import RunDir, write_json_atomic

STRICT = "rewards/strict_format_reward_func/mean"
XML = "rewards/xmlcount_reward_func/mean"
CORRECT = "rewards/correctness_reward_func/mean"
INT = "rewards/int_reward_func/mean"
CLIPPED = signals.CLIPPED_RATIO


def wobble(s: int, k: int = 37) -> float:
    """Deterministic noise in [-0.5, 0.5)."""
    return ((s * k) % 11) / 11 - 0.5


def curve(n: int, at: int | None, before: float, after: float, noise: float, k: int = 37, ramp: int = 0):
    out = []
    for s in range(1, n + 1):
        frac = 0.0 if at is None or s < at else 1.0 if s >= at + ramp else (s - at) / ramp
        out.append((s, before + (after - before) * frac + noise * wobble(s, k)))
    return out


def test_rewards_are_told_apart_by_name_and_by_behaviour():
    n = 120
    correct = curve(n, 60, 0.1, 1.5, 0.6, k=13)
    series = {
        STRICT: curve(n, None, 0.0, 0.0, 0.0),
        XML: curve(n, None, 0.1, 0.1, 0.05),
        "rewards/valid_json_reward/mean": curve(n, None, 1.0, 1.0, 0.2, k=7),
        "rewards/match_format_exactly/mean": curve(n, None, 0.0, 0.0, 0.1, k=5),
        "rewards/check_answer/mean": curve(n, None, 0.0, 0.0, 1.0, k=3),
        CORRECT: correct,
        INT: [(s, v / 3 + 0.01 * wobble(s, 19)) for s, v in correct],  # moves with correctness
        "rewards/diversity_reward_fn/mean": curve(n, None, 0.0, 0.0, 0.5, k=23),
        COMPLETION_LENGTH: curve(n, None, 180, 180, 20),
        "reward": curve(n, None, 1.0, 1.0, 0.5),
        "kl": curve(n, None, 0.01, 0.01, 0.001),
    }
    roles = {k: v[:2] for k, v in signals.classify(series).items()}
    assert roles[STRICT] == roles[XML] == ("format", "name")
    assert roles["rewards/valid_json_reward/mean"] == roles["rewards/match_format_exactly/mean"] == ("format", "name")
    assert roles["rewards/check_answer/mean"] == roles[CORRECT] == ("correctness", "name")
    assert roles[INT] == ("correctness", "behaviour")
    assert roles["rewards/diversity_reward_fn/mean"] == ("other", "name")
    assert roles[COMPLETION_LENGTH] == ("length", "always") and "kl" not in roles
    watch = signals.choose(series)
    assert set(watch.primary) == {STRICT, XML, "rewards/valid_json_reward/mean", "rewards/match_format_exactly/mean"}
    assert watch.length == COMPLETION_LENGTH and not watch.total_only
    why = {c["signal"]: c["reason"] for c in watch.as_dict()["candidates"]}
    assert "moves with correctness_reward_func" in why[INT] and "flat so far" in why[STRICT]


def test_a_format_jump_corroborated_by_length_is_sure():
    series = {STRICT: curve(150, 80, 0.0, 0.4, 0.04), XML: curve(150, 80, 0.1, 0.45, 0.05, k=7),
              COMPLETION_LENGTH: curve(150, 75, 190, 150, 12, k=5), CORRECT: curve(150, None, 0.5, 0.5, 0.8)}
    ph = phase.detect(series)
    assert ph["status"] == "confirmed" and ph["signal"] in (STRICT, XML) and abs(ph["step"] - 80) <= 2
    assert ph["confidence"] == "high" and ph["shape"] == "sharp" and COMPLETION_LENGTH in ph["signals"]
    moved = {e["signal"]: e for e in ph["evidence"] if e["moved"]}
    assert moved[STRICT]["direction"] == "up" and moved[STRICT]["after"] > moved[STRICT]["before"] + 0.3
    assert moved[COMPLETION_LENGTH]["direction"] == "down" and moved[COMPLETION_LENGTH]["sigmas"] > 3
    assert any("corroborates" in r for r in ph["reasons"])
    assert {i["signal"] for i in ph["ignored"]} >= {CORRECT}


def test_a_length_turn_alone_is_a_note_not_the_transition():
    series = {STRICT: curve(150, None, 0.0, 0.0, 0.0), XML: curve(150, None, 0.1, 0.1, 0.04),
              COMPLETION_LENGTH: curve(150, 70, 195, 140, 10)}
    ph = phase.detect(series)
    assert ph["status"] == "none" and ph["step"] is None
    [note] = ph["notes"]
    assert note["kind"] == "length_only" and abs(note["step"] - 70) <= 2 and note["direction"] == "down"
    assert "not the format transition" in note["text"]


def test_length_at_the_cap_is_no_evidence_either_way():
    n = 60  # a log every 10 steps, as in a 500-step run with logging_steps 10
    series = {"rewards/valid_json_reward/mean": [(10 * s, v) for s, v in curve(n, 30, -0.5, 1.9, 0.1)],
              COMPLETION_LENGTH: [(10 * s, v) for s, v in curve(n, None, 126, 126, 2)],
              CLIPPED: [(10 * s, v) for s, v in curve(n, None, 0.95, 0.95, 0.04)]}
    ph = phase.detect(series)
    assert ph["status"] == "confirmed" and ph["step"] == 300 and ph["confidence"] == "high"
    assert any("sits at the cap" in r and "no evidence either way" in r for r in ph["reasons"])
    assert any(i["signal"] == COMPLETION_LENGTH and "cap" in i["why"] for i in ph["ignored"])
    # a length pinned at the cap that never moves makes no note either
    flat = phase.detect({**series, "rewards/valid_json_reward/mean": series[CLIPPED]})
    assert flat["status"] == "none" and flat["notes"] == []


def test_a_change_among_the_first_logged_points_is_found():
    """logging_steps 10: the live watch starts testing at the 12th point (step 120); a jump at
    step 60 is found once the new level is seen."""
    pts = [(10 * s, v) for s, v in curve(50, 6, 0.8, 1.95, 0.08)]
    ph = phase.detect({"rewards/valid_json_reward/mean": pts})
    assert ph["status"] == "confirmed" and ph["step"] == 60 and ph["direction"] == "up"


def test_a_run_with_only_the_total_reward_gets_a_low_confidence_marker():
    series = {"reward": curve(200, 90, 0.1, 1.6, 0.3), COMPLETION_LENGTH: curve(200, None, 200, 200, 3)}
    ph = phase.detect(series)
    assert ph["status"] == "confirmed" and abs(ph["step"] - 90) <= 3 and ph["confidence"] == "low"
    assert any("no format reward" in r for r in ph["reasons"])
    assert ph["watch"]["signals"] == ["reward"]


def test_a_ramp_is_reported_as_one_from_where_it_starts():
    ph = phase.detect({XML: curve(200, 60, 0.0, 0.5, 0.06, ramp=70)})
    assert ph["status"] == "confirmed" and ph["shape"] == "ramp" and 55 <= ph["step"] <= 72
    assert ph["ramp_end"] is not None and ph["ramp_end"] > ph["step"] + 10
    assert ph["confidence"] == "medium" and any("a ramp that starts there" in r for r in ph["reasons"])


def test_a_small_move_against_the_noise_has_low_confidence():
    ph = phase.detect({XML: curve(200, 120, 0.0, 0.13, 0.18, k=7)})
    assert ph["status"] == "confirmed" and ph["confidence"] == "low" and ph["evidence"][0]["sigmas"] < 3
    assert any("small move against the step-to-step noise" in r for r in ph["reasons"])


def _run(home, run_id, series, rewards=None):
    rd = RunDir(home / "runs" / run_id)
    rd.checkpoints.mkdir(parents=True)
    write_json_atomic(rd.run_json, {"run_id": run_id, "name": run_id, "stop_at_step": 150})
    if rewards is not None:
        rd.recipe.write_text(load_recipe(RECIPES_DIR / "tiny.yaml", [f"rewards={json.dumps(rewards)}"]).to_yaml())
    steps = sorted({s for pts in series.values() for s, _ in pts})
    rd.metrics.write_text("".join(json.dumps({"step": st, "attempt": 1, **{k: dict(p)[st] for k, p in series.items()}})
                                  + "\n" for st in steps))
    return rd


def test_the_run_says_what_it_watches_recipe_then_its_latest_watch_event(tmp_path):
    home = tmp_path / "home"
    rd = _run(home, "r", {STRICT: curve(50, None, 0, 0, 0)})
    assert phase.params_for_run(rd.path).signals == () and phase.params_for_run(rd.path).watch_source == "auto"
    rd.event("watch_changed", signals=[CORRECT], by="cli")
    p = phase.params_for_run(rd.path)
    assert (p.signals, p.watch_source, p.watch_by) == ((CORRECT,), "user", "cli")
    rd.event("watch_changed", signals=None, by="cockpit")
    p = phase.params_for_run(rd.path)
    assert (p.signals, p.watch_source, p.watch_by) == ((), "auto", "cockpit")
    # a recipe's own watch list, in short names
    tiny = _run(home, "t", {STRICT: curve(50, None, 0, 0, 0)}, rewards={"format": 1.0})
    assert phase.params_for_run(tiny.path).signals == ("rewards/format_reward/mean",)
    tiny.recipe.write_text(tiny.recipe.read_text() + "watch: [strict_format_reward_func, length]\n")
    assert phase.params_for_run(tiny.path).signals == (STRICT, COMPLETION_LENGTH)
    assert phase.params_for_run(tiny.path).watch_source == "recipe"


def test_recipe_watch_setting_is_checked():
    import pytest

    from tina_core.recipe.loader import RecipeError

    assert load_recipe(RECIPES_DIR / "tiny.yaml", ["watch=[format_reward, length]"]).get("watch") == ["format_reward",
                                                                                                     "length"]
    with pytest.raises(RecipeError, match="watch"):
        load_recipe(RECIPES_DIR / "tiny.yaml", ["watch=7"])


def test_tina_watch_and_import_watch_rejudge_the_run(tmp_path):
    src = tmp_path / "notebook.csv"
    strict, xml, correct = curve(150, 90, 0.0, 0.4, 0.04), curve(150, None, 0.1, 0.1, 0.04), curve(150, 40, 0.1, 1.5, 0.2)
    rows = ["Step,Training Loss,reward,completion_length,rewards / strict_format_reward_func,"
            "rewards / xmlcount_reward_func,rewards / correctness_reward_func"]
    for (s, a), (_, b), (_, c) in zip(strict, xml, correct):
        rows.append(f"{s},0.0,{a + b + c:.4f},{180 + 10 * wobble(s):.2f},{a:.4f},{b:.4f},{c:.4f}")
    src.write_text("\n".join(rows) + "\n")
    home, runner = tmp_path / "home", CliRunner()

    res = runner.invoke(app, ["--home", str(home), "import", str(src), "--name", "nb", "--watch", "correctness_reward_func"])
    assert res.exit_code == 0, res.output
    assert "chosen by the user (import)" in res.output
    [rid] = [p.name for p in (home / "runs").iterdir() if not p.name.startswith(".")]
    status = json.loads(runner.invoke(app, ["--home", str(home), "status", rid, "--json"]).output)
    assert status["watch"]["signals"] == [CORRECT] and status["watch"]["source"] == "user"
    ph = status["phase_transition"]
    assert ph["signal"] == CORRECT and abs(ph["step"] - 40) <= 3 and ph["reasons"]

    res = runner.invoke(app, ["--home", str(home), "watch", rid, "--auto", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out["watch"]["signals"]) == {STRICT, XML} and out["watch"]["source"] == "auto"
    assert out["phase_transition"]["signal"] == STRICT and abs(out["phase_transition"]["step"] - 90) <= 2
    assert out["phase_transition"]["confidence"] in ("medium", "high")

    res = runner.invoke(app, ["--home", str(home), "watch", rid, "strict_format_reward_func"])
    assert res.exit_code == 0 and "chosen by the user (cli)" in res.output and "* strict_format_reward_func" in res.output
    listed = json.loads(runner.invoke(app, ["--home", str(home), "ls", "--json"]).output)
    assert listed[0]["watch"]["signals"] == [STRICT] and listed[0]["phase_transition"]["confidence"]

    res = runner.invoke(app, ["--home", str(home), "watch", rid, "no_such_reward"])
    assert res.exit_code != 0 and "no signal 'no_such_reward'" in str(res.exception or res.output)
    assert [e.get("signals") for e in RunDir(home / "runs" / rid).read_events() if e["event"] == "watch_changed"] == [
        [CORRECT], None, [STRICT]]


def test_import_watch_of_a_signal_the_file_lacks_is_refused(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("step,reward\n" + "".join(f"{s},{s / 10}\n" for s in range(1, 30)))
    import pytest

    from tina_core.rundir import TinaError, list_run_dirs

    with pytest.raises(TinaError, match="candidates are: reward"):
        import_run(tmp_path / "home", src, watch=["strict_format_reward_func"])
    assert list_run_dirs(tmp_path / "home") == []
