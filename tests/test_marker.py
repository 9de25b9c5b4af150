"""The phase marker's contract (README, "Phase transition"): a pure function of the logged steps in
order, not fooled by a blip on a reward at 0, the strict reward's large move over a lenient one's
early small move, confirmed means confirmed, a stop only on a sure marker, finished runs worded as
finished, and the save grid's rotation keeping what brackets the marker.

The live watch is replayed on real metrics: three seeds of the tiny recipe (tests/data, recorded
by real runs) and, where the shared public logs are beside the checkout, three of them; every
batching of the same lines gives the same events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_RECIPE

from tina_core.analysis import phase, policy
from tina_core.analysis.changes import PhaseParams, SignalWatch
from tina_core.analysis.pick import choose
from tina_core.events import Kind, is_kind, of_kind
from tina_core.importer.readers import import_run
from tina_core.recipe.loader import load_recipe
from tina_core.rundir import RunDir, append_jsonl, create_run_dir, write_json_atomic
from tina_core.supervise.watch import LiveWatch
from tina_core.train import snapshots

FORMAT = "rewards/format_reward/mean"
LENGTH = "completions/mean_length"
EXACT = "rewards/match_format_exactly/mean"
APPROX = "rewards/match_format_approximately/mean"
DATA = Path(__file__).parent / "data"
TINY_SEEDS = ("tiny_run_metrics.jsonl", "tiny_run_metrics_seed1.jsonl", "tiny_run_metrics_seed2.jsonl")


def binomial(n: int, p, group: int, seed: int, scale: float = 1.0) -> list[tuple[int, float]]:
    """A reward logged per step as the mean over ``group`` completions scoring 0 or ``scale``:
    ``p`` a probability or a function of the step."""
    rng = np.random.default_rng(seed)
    return [(s, float(rng.binomial(group, p(s) if callable(p) else p)) * scale / group) for s in range(1, n + 1)]


# --- the noise floor -------------------------------------------------------------------------------
def test_a_blip_on_a_reward_at_zero_is_no_transition():
    """A reward at exactly 0 with a formatted completion now and then (1 of 16, twice 2 of 16): its
    step is 1/16, so one completion is one sigma, never many; the real rise later is found."""
    blips = {9: 1, 17: 1, 18: 1, 30: 2, 44: 1, 45: 2, 61: 1, 62: 1}
    series = [(s, (blips.get(s, 0) if s < 90 else min(15, (s - 89) * 3)) / 16) for s in range(1, 140)]
    w = SignalWatch(FORMAT)
    w.extend(series)
    assert w.quantum == pytest.approx(1 / 16)
    assert [c.step for c in w.verdicts if c.status == "confirmed"] == [w.holding()[0].step]
    assert 89 <= w.holding()[0].step <= 91 and all(c.step >= 89 for c in w.verdicts)
    # two values alone say nothing of a step: a flat 0.1 that moves to a flat 0.8 is a move
    flat = SignalWatch(FORMAT)
    flat.extend([(s, 0.1 if s < 50 else 0.8) for s in range(1, 100)])
    assert [c.step for c in flat.holding()] == [50]


# --- the transition: the strict reward's large move ----------------------------------------------
def _lenient_then_strict(n: int = 200) -> dict[str, list[tuple[int, float]]]:
    """Unsloth's pair: match_format_approximately creeps up early by a little (40), then
    match_format_exactly (0 or 3 a completion) jumps hugely (120) and stays up."""
    return {APPROX: binomial(n, lambda s: 0.3 if s < 40 else 0.5, 32, 1),
            EXACT: binomial(n, lambda s: 0.0 if s < 120 else 0.6, 8, 2, scale=3.0)}


def test_the_strict_rewards_large_move_is_the_transition_and_the_early_lenient_one_a_note():
    ph = phase.detect(_lenient_then_strict())
    assert ph["signal"] == EXACT and ph["status"] == "confirmed" and 118 <= ph["step"] <= 122
    assert ph["confidence"] in ("high", "medium")
    [note] = [n for n in ph["notes"] if n["kind"] == "smaller_move"]
    assert note["signal"] == APPROX and 35 <= note["step"] <= 45 and "earlier, smaller move" in note["text"]
    # the reasons never say that a move which holds did not last
    assert not [i for i in ph["ignored"] if i["signal"] == EXACT and "did not last" in i["why"]]
    # live: the early lenient move was a marker, never sure while the exact reward sat flat; the
    # exact one's move replaced it (it still holds: a move, not a withdrawal)
    hist = ph["history"]
    early = [h for h in hist if h["signal"] == APPROX and h["status"] == "confirmed"]
    assert early and not any(h["sure"] for h in early)
    moved = next(h for h in hist if h["signal"] == EXACT and h["status"] == "confirmed")
    assert moved["replaces"]["signal"] == APPROX and moved["sure"]
    assert ph["flips"] == 0 and not [h for h in hist if h["status"] == "rejected"]


def test_a_lenient_move_alone_is_not_sure_while_the_strict_reward_is_flat():
    series = _lenient_then_strict(110)  # the run ends before the exact reward moves
    ph = phase.detect(series)
    assert ph["signal"] == APPROX and ph["confidence"] == "low"
    assert any("match_format_exactly has not moved" in r for r in ph["reasons"])
    events = [{"event": "transition", **h} for h in ph["history"]]
    assert policy.after_transition_stop(policy.StopPolicy(after_transition=5), events) is None


# --- confirmed means confirmed ---------------------------------------------------------------------
def test_a_confirmed_move_is_withdrawn_only_when_the_signal_falls_back():
    lasting = [binomial(300, lambda s: 0.1 if s < 100 else 0.5, 32, seed) for seed in range(6)]
    for series in lasting:  # noise on a lasting new level never withdraws it
        w = SignalWatch(FORMAT)
        w.extend(series)
        assert [c.status for c in w.verdicts if c.status != "tentative"] == ["confirmed"]
    back = binomial(200, lambda s: 0.6 if 60 <= s < 90 else 0.1, 32, 7)  # up for 30 steps, then back
    ph = phase.detect({FORMAT: back})
    assert ph["status"] == "none" and ph["flips"] == 1
    statuses = [(h["status"], h.get("was")) for h in ph["history"]]
    assert statuses[-1] == ("rejected", "confirmed") and ("confirmed", None) in statuses
    [why] = [i["why"] for i in ph["ignored"] if i["signal"] == FORMAT]
    assert "fell back at step" in why


# --- finished runs ----------------------------------------------------------------------------------
def test_finished_runs_are_worded_as_finished():
    late = [(s, 0.0 if s < 95 else 0.9) for s in range(1, 100)]  # the alarm comes 5 points before the end
    live, ended = phase.detect({FORMAT: late}), phase.detect({FORMAT: late}, PhaseParams(ended=True))
    assert live["status"] == "tentative"
    assert ended["status"] == "none" and "(the run has ended)" in ended["reasons"][0]
    [note] = ended["notes"]
    assert note["kind"] == "unjudged" and "before the log ended: too few to judge it" in note["text"]
    assert "not enough logged points yet" in phase.explain(None)[-1]
    assert "the log has too few points to judge a transition" in phase.explain(None, ended=True)[-1]
    assert choose({"status": "none", "step": None}, [], ended=True)["reason"] == \
        "no phase transition in the watched signals (the run has ended)"


# --- the live watch, replayed ----------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


def _watch_events(rd: RunDir, lines: list[str], batch: int) -> list[tuple]:
    """The live watch fed ``lines`` in batches of ``batch`` (a poll after each): its transition,
    checkpoint and stop events, without the wall-clock fields."""
    watch = LiveWatch(rd, rd.event, [].append)
    for i in range(0, len(lines), batch):
        with rd.metrics.open("a") as f:
            f.write("".join(x + "\n" for x in lines[i:i + batch]))
        watch.poll()
    keep = (Kind.TRANSITION, Kind.CHECKPOINT_REQUESTED, Kind.STOP_SCHEDULED)
    return [tuple(sorted((k, json.dumps(v)) for k, v in e.items() if k not in ("time", "ts")))
            for e in rd.read_events() if is_kind(e, *keep)]


def _replayed(home: Path, lines: list[str], recipe_text: str | None, info: dict) -> dict[int, list[tuple]]:
    out = {}
    for batch in (1, 7, len(lines)):
        rd = create_run_dir(home, f"replay-{batch}")
        if recipe_text is not None:
            rd.recipe.write_text(recipe_text)
        write_json_atomic(rd.run_json, {**info, "run_id": rd.run_id})
        rd.event(Kind.ATTEMPT_STARTED, attempt=1, pid=os.getpid(), gpus=0)
        rd.event(Kind.POLICY_CHANGED, by="test", after_transition=5)
        out[batch] = _watch_events(rd, lines, batch)
    return out


@pytest.mark.parametrize("name", TINY_SEEDS)
def test_the_live_watch_says_the_same_however_the_steps_are_batched_tiny(name, tmp_path):
    lines = _lines(DATA / name)
    recipe = load_recipe(TINY_RECIPE).to_yaml()
    got = _replayed(tmp_path / "home", lines, recipe, {"name": "replay", "stop_at_step": 100})
    assert got[1] == got[7] == got[len(lines)]
    kinds = [dict(e)["event"] for e in got[1]]
    assert '"transition"' in kinds and '"stop_scheduled"' in kinds  # a marker, sure, and its stop


def _external_logs() -> Path | None:
    for d in (os.environ.get("TINA_EXTERNAL_LOGS"), ROOT.parent / "shared" / "external-logs"):
        if d and Path(d).is_dir():
            return Path(d)
    return None


@pytest.mark.parametrize("name", [
    "xenonaesir-grpo_unsloth-qwen2.5-3b-grpo-gsm8k_notebook-table.csv",       # three format rewards
    "holazzer-nb_unsloth-qwen2.5-3b-grpo-amazon-baby_notebook-table.csv",     # a ramp
    "aaipl-minesweeper_grpo_trainer_state_checkpoint-500.json",               # a log every 10 steps
])
def test_the_live_watch_says_the_same_however_the_steps_are_batched_real(name, tmp_path):
    logs = _external_logs()
    if logs is None or not (logs / name).is_file():
        pytest.skip("the shared public GRPO logs are not beside this checkout (they are never copied in)")
    imported = import_run(tmp_path / "src", [logs / name], name="real")
    lines = _lines(imported.metrics)
    got = _replayed(tmp_path / "home", lines, None, {"name": "replay", "stop_at_step": None})
    assert got[1] == got[7] == got[len(lines)]
    assert any(dict(e)["event"] == '"transition"' for e in got[1])


# --- the save grid's rotation ------------------------------------------------------------------------
def test_save_total_limit_keeps_what_brackets_the_marker(tmp_path):
    rd = create_run_dir(tmp_path / "home", "rotated")
    for step in range(5, 101, 5):  # the grid, saved and marked complete as the trainer does
        rd.checkpoint_path(step).mkdir(parents=True)
        rd.mark_complete(step, 1)
    rd.event(Kind.TRANSITION, status="confirmed", step=47, signal=FORMAT, detected_at=58, sure=True)
    rd.event(Kind.EVAL_QUEUED, eval_id="e1", checkpoint=20, task="arith", tasks=["arith"], gpus=[],
             gpus_explicit=False)
    write_json_atomic(rd.path / "watch.json", {"judged_through": 88, "attempt": 1, "lead": None})
    gone = snapshots.rotate(rd, 2)
    # the newest two, the two around the marker, the evaluated one, and what the watch has not judged
    assert rd.checkpoint_steps() == [20, 45, 50, 90, 95, 100]
    assert sorted(gone + rd.checkpoint_steps()) == list(range(5, 101, 5))


def test_the_trainer_never_waits_without_a_watch_and_reads_how_far_it_judged(tmp_path):
    from tina_core.train.pace import Pace

    rd = create_run_dir(tmp_path / "home", "paced")
    pace = Pace(rd, attempt=2)
    for s in (5, 10, 15):
        pace.note_logged(s)
    assert pace.logged_by(14) == 10 and pace.logged_by(4) is None
    assert pace.judged(15) and pace.lead() is None  # no watch file: nothing to wait for
    pace.wait_until_judged(15, lambda: False)
    rd.event(Kind.POLICY_CHANGED, by="test", after_transition=3)
    watch = LiveWatch(rd, rd.event, [].append)  # writes watch.json as it starts
    assert pace.lead() == 3 and not pace.judged(5)
    append_jsonl(rd.metrics, {"step": 5, "attempt": 2, FORMAT: 0.0})
    watch.poll()
    assert pace.judged(5) and not pace.judged(10)
    # a gone supervisor (no heartbeat) never holds the trainer
    pace.wait_until_judged(10, lambda: False)
    assert of_kind(rd.read_events(), Kind.TRANSITION) == []
