"""Stopping at the transition: the ring of adapter snapshots and its pins, the supervisor's live watch
(transition events, the checkpoint asked for, the scheduled stop, the budget), the stop policy in the
recipe and on a live run, and the dollars and the pick after it. The unit tests use the product's own
writers (RunDir.event, append_jsonl as the trainer's metrics writer, the ring's write_snapshot on the
shared tiny run's real adapter files); the two real trainings of the tiny recipe are extended tests."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_RECIPE

from tina_core.analysis import policy
from tina_core.analysis.pick import choose
from tina_core.recipe.loader import RecipeError, load_recipe
from tina_core.rundir import (CHECKPOINT_SNAPSHOT, RunDir, RunInfo, TinaError, append_jsonl, create_run_dir, iter_jsonl,
                              list_run_dirs, read_json, write_json_atomic)
from tina_core.supervise import lifecycle
from tina_core.supervise.watch import LiveWatch
from tina_core.train import snapshots
from tina_core.train.trainer import set_aside_partial_checkpoints

FORMAT = "rewards/format_reward/mean"
LENGTH = "completions/mean_length"


def tina(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _copy(src: RunDir, home: Path) -> RunDir:
    rd = RunDir(home / "runs" / src.run_id)
    shutil.copytree(src.path, rd.path)
    return rd


def _adapter_from(src: Path):
    """A save function writing a real adapter's files (as the trainer's save_adapter does)."""
    def save(folder: Path) -> None:
        for name in snapshots.ADAPTER_FILES:
            shutil.copy2(src / name, folder / name)
    return save


# --- sizes and the ring ----------------------------------------------------------------------------
def test_adapter_size_from_the_architecture_matches_the_saved_adapter(tiny_run, tmp_path):
    """The disk bound's arithmetic, checked against an adapter the trainer really saved, and as the
    dry run states it for Tina's r32 LoRA on the distilled 1.5B."""
    saved = (tiny_run.checkpoint_path(3) / "adapter_model.safetensors").stat().st_size
    weights = snapshots.adapter_bytes(load_recipe(tiny_run.recipe))
    assert 0 < saved - weights < 8192  # the rest is the safetensors header
    tina_r32 = snapshots.adapter_bytes(load_recipe(ROOT / "recipes" / "tina" / "open_rs2.yaml"))
    out = tina(tmp_path, "run", str(ROOT / "recipes" / "tina" / "open_rs2.yaml"), "--dry-run").stdout
    ring = load_recipe(ROOT / "recipes" / "tina" / "open_rs2.yaml").get("stop.ring")
    assert (f"# disk: the snapshot ring keeps {ring} adapters (stop.ring) of {tina_r32 / 1e6:.1f} MB at most (fp32): "
            f"{ring * tina_r32 / 1e9:.2f} GB") in out


def test_the_trainer_keeps_a_ring_of_adapters_and_resumes_only_from_complete_checkpoints(tiny_run, tmp_path):
    """The shared 6-step run saved checkpoints 3 and 6 on the grid and an adapter snapshot of every
    other step: evaluable, listed as such, never resumed from."""
    assert snapshots.ring_steps(tiny_run) == [1, 2, 4, 5]
    marker = read_json(snapshots.snapshot_path(tiny_run, 4) / CHECKPOINT_SNAPSHOT)
    assert marker["step"] == 4 and marker["resumable"] is False
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(marker["files"])
    rd = _copy(tiny_run, tmp_path / "h")
    assert snapshots.reconcile(rd, 4, {"marker": 4, "status": "confirmed"})["pinned"] == [4, 5]
    assert rd.checkpoint_steps() == [3, 6] and rd.checkpoint_steps(evaluable=True) == [3, 4, 5, 6]
    assert rd.checkpoint_kind(4) == "snapshot" and rd.checkpoint_kind(3) == "complete"
    # a pin is hard links to the ring's files, and survives the ring rotating them away
    ring_file = snapshots.snapshot_path(rd, 4) / "adapter_model.safetensors"
    pinned = rd.checkpoint_path(4) / "adapter_model.safetensors"
    assert os.stat(ring_file).st_ino == os.stat(pinned).st_ino
    assert snapshots.prune(rd, 1) == [1, 2, 4] and pinned.read_bytes()
    # a half-written checkpoint is set aside at start; a pinned snapshot is not
    (rd.checkpoint_path(7)).mkdir()
    assert [p.name for p in set_aside_partial_checkpoints(rd)] == ["checkpoint-7"]
    assert rd.checkpoint_steps(evaluable=True) == [3, 4, 5, 6]


def test_pins_follow_the_marker_and_never_touch_a_real_checkpoint(tiny_run, tmp_path):
    rd = _copy(tiny_run, tmp_path / "h")
    why = {"marker": 4, "status": "tentative"}
    assert snapshots.reconcile(rd, 4, why) == {"before": 4, "after": 5, "pinned": [4, 5], "unpinned": []}
    # the marker moves: the complete checkpoint 3 brackets it as it is, the old pins go
    assert snapshots.reconcile(rd, 2, why) == {"before": 2, "after": 3, "pinned": [2], "unpinned": [4, 5]}
    # an evaluated pin is kept; a rejected marker unpins the rest, and checkpoint 3 stays
    assert snapshots.reconcile(rd, None, {}, keep={2}) == {"before": None, "after": None, "pinned": [], "unpinned": []}
    assert snapshots.reconcile(rd, None, {}) == {"before": None, "after": None, "pinned": [], "unpinned": [2]}
    assert rd.checkpoint_steps(evaluable=True) == [3, 6]
    assert not snapshots.unpin(rd, 3) and rd.checkpoint_kind(3) == "complete"


def test_the_ring_never_takes_the_room_of_a_checkpoint(tiny_run, tmp_path, monkeypatch):
    rd = _copy(tiny_run, tmp_path / "h")
    save = _adapter_from(tiny_run.checkpoint_path(3))
    size = (tiny_run.checkpoint_path(3) / "adapter_model.safetensors").stat().st_size
    assert snapshots.write_snapshot(rd, 7, save, 3, attempt=1, size=size) is not None
    assert snapshots.ring_steps(rd) == [4, 5, 7]  # pruned to 3 before writing
    full = shutil.disk_usage(rd.path)._replace(free=size)  # a disk with one adapter's room left
    monkeypatch.setattr(snapshots.shutil, "disk_usage", lambda p: full)
    assert snapshots.write_snapshot(rd, 8, save, 3, attempt=1, size=size) is None
    assert snapshots.ring_steps(rd) == [5, 7]
    monkeypatch.undo()
    with pytest.raises(OSError):  # what the save raises comes through, nothing left behind
        snapshots.write_snapshot(rd, 9, lambda d: (_ for _ in ()).throw(OSError(28, "No space left on device")),
                                 3, attempt=1, size=size)
    assert sorted(p.name for p in rd.snapshots.iterdir()) == ["step-5", "step-7"]


# --- the policy ------------------------------------------------------------------------------------
def test_the_recipe_stop_section_is_checked(tmp_path):
    ok = load_recipe(TINY_RECIPE, ["stop.after_transition=5", "stop.budget_usd=0.5", "stop.ring=4"])
    assert policy.from_recipe(ok.data) == policy.StopPolicy(stop_at_step=100, after_transition=5, budget_usd=0.5)
    for bad, says in (("stop.after_transition=-1", "stop.after_transition: expected a number of steps 0..100000"),
                      ("stop.budget_usd=0", "stop.budget_usd: expected dollars > 0"),
                      # absurd values (issue 19, LOW): a ring of 10^9 adapters, a stop 10^38 steps on
                      ("stop.ring=1000000000", "stop.ring: expected a number of snapshots 0..1000"),
                      ("stop.after_transition=" + "1" + "0" * 38, "stop.after_transition: expected a number of steps"),
                      ("stop.budget_usd=1e30", "stop.budget_usd: expected dollars > 0, at most 10,000,000"),
                      ("stop.after_transiton=5", "stop.after_transiton: unknown key (did you mean after_transition?)"),
                      ("stop.ring=four", "stop.ring: expected an integer")):
        with pytest.raises(RecipeError, match=re.escape(says)):
            load_recipe(TINY_RECIPE, [bad])
    assert policy.parse_value("after_transition", "off") is None and policy.parse_value("budget_usd", "$2.5") == 2.5
    for key, raw in (("after_transition", "-2"), ("after_transition", "soon"), ("budget_usd", "0"),
                     ("budget_usd", "nan"), ("after_transition", "1" + "0" * 38), ("budget_usd", "1e30")):
        with pytest.raises(TinaError, match=key.replace("_", "-")):
            policy.parse_value(key, raw)


def test_countdown_picks_whatever_stops_first():
    pol = policy.StopPolicy(stop_at_step=200, after_transition=5, budget_usd=1.0)
    confirmed = [{"event": "transition", "status": "confirmed", "step": 47, "detected_at": 58}]
    waiting = policy.countdown(pol, [], 50, 0.2, 0.01)
    assert (waiting.by, waiting.steps_left, waiting.usd_left) == ("budget_usd", 79, 0.8)
    c = policy.countdown(pol, confirmed, 60, 0.2, 0.01)
    assert (c.by, c.stop_step, c.steps_left, c.text()) == ("after_transition", 63, 3, "3 steps")
    assert policy.countdown(pol, confirmed, 60, 0.98, 0.01).by == "budget_usd"
    no_pace = policy.countdown(policy.StopPolicy(after_transition=5), [], 3, 0, None)
    assert no_pace.waiting and no_pace.text() == "awaiting the transition"
    # while it waits for the marker, stop_at_step bounds it
    bounded = policy.countdown(policy.StopPolicy(stop_at_step=100, after_transition=5), [], 17, 0, None)
    assert (bounded.by, bounded.waiting, bounded.steps_left, bounded.text()) == \
        ("after_transition", True, 83, "awaiting the transition (at most 83 steps)")
    # a stop this confirmation already made is spent: a resumed run trains on
    assert policy.after_transition_stop(pol, confirmed + [{"event": "stopped", "by": "after_transition"}]) is None
    assert policy.budget_spent(pol, 0.995, 0.01) and not policy.budget_spent(pol, 0.98, 0.01)


def test_pick_is_the_better_bracket_beside_the_best_of_all():
    phase = {"status": "confirmed", "step": 47}
    cks = [{"step": 25, "avg": 0.65}, {"step": 47, "avg": None}, {"step": 48, "avg": None}, {"step": 50, "avg": 0.75}]
    before = choose(phase, cks)["bracket"]
    assert (before["step"], before["brackets"], before["best_evaluated"]) == (47, [47, 48], {"step": 50, "avg": 0.75})
    cks[1]["avg"], cks[2]["avg"] = 0.7, 0.8
    assert choose(phase, cks)["bracket"]["step"] == 48
    cks[2]["avg"] = 0.7
    assert choose(phase, cks)["bracket"]["step"] == 47  # a tie: the one at or before the marker
    assert choose({"status": "none", "step": None}, cks)["bracket"] is None


def test_policy_on_a_run_is_recorded_and_checked(tiny_run, tmp_path):
    home = tmp_path / "h"
    rd = _copy(tiny_run, home)
    out = tina(home, "policy", rd.run_id, "--after-transition", "3", "--budget-usd", "0.25")
    assert out.returncode == 0, out.stderr
    assert "after transition +3 steps, budget $0.25" in out.stdout
    assert tina(home, "policy", rd.run_id, "--budget-usd", "off").returncode == 0
    changes = [e for e in rd.read_events() if e["event"] == "policy_changed"]
    assert [(e.get("after_transition"), e.get("budget_usd"), e["by"]) for e in changes] == \
        [(3, 0.25, "tina policy"), (None, None, "tina policy")]
    assert "after_transition" not in changes[1]  # only what was given changes
    assert json.loads(tina(home, "policy", rd.run_id, "--json").stdout)["after_transition"] == 3
    bad = tina(home, "policy", rd.run_id, "--after-transition", "soon")
    assert bad.returncode == 2 and "after-transition: expected a number of steps 0..100000 or off" in bad.stderr
    absurd = tina(home, "policy", rd.run_id, "--after-transition", "1" + "0" * 38)
    assert absurd.returncode == 2 and "expected a number of steps 0..100000" in absurd.stderr
    assert len([e for e in rd.read_events() if e["event"] == "policy_changed"]) == 2


# --- dollars before launch --------------------------------------------------------------------------
def test_dry_run_prints_the_cost_to_stop_at_step_and_to_the_typical_transition(tmp_path):
    from tina_core.analysis import projection

    out = tina(tmp_path, "run", str(ROOT / "recipes" / "tina" / "open_rs2.yaml"), "--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    cost_part = text[text.index("# cost, training only"):].splitlines()
    cost_part = cost_part[:cost_part.index("# launch command:")]  # sections of their own, the command last
    assert len(cost_part) == 5 and all(line.startswith("#") for line in cost_part)
    assert cost_part[-1].startswith("# disk: the snapshot ring keeps")
    assert text.index("# memory per GPU") < text.index("# cost, training only")
    recipe = load_recipe(ROOT / "recipes" / "tina" / "open_rs2.yaml")
    pace, _ = projection.STEP_SECONDS[("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "L40S", 2)]
    per_hour = 2 * recipe.gpu_hour_usd
    assert cost_part[0] == f"# cost, training only: 2 x L40S (assumed: no GPU here) at ${recipe.gpu_hour_usd:g}/GPU-hour, " \
                          f"${per_hour:g}/hour (recipe price.gpu_hour_usd)"
    assert f"#   to stop_at_step 850: ${850 * pace * per_hour / 3600:,.2f}" in text
    typical = round(0.51 * recipe.steps_per_epoch)  # the paper's best Open-RS2 checkpoint: 51% of an epoch
    assert f"#   to the typical transition, step ~{typical} (51% of an epoch, the paper's best checkpoint): " \
           f"${typical * pace * per_hour / 3600:,.2f}" in text
    assert list_run_dirs(tmp_path) == []


def test_the_projection_uses_the_workspaces_own_pace_once_measured(tiny_run, tmp_path):
    """Until tina has run a model on a device, the documented pace; then its own (median of runs)."""
    from tina_core.analysis import cost, projection

    recipe = load_recipe(TINY_RECIPE)
    before = projection.launch_cost(tmp_path, recipe)
    assert (before.seconds_per_step, before.transition_step) == (projection.STEP_SECONDS[("tiny", "cpu", 0)][0], 47)
    home = tmp_path / "h"
    rd = create_run_dir(home, "paced")
    rd.recipe.write_text(tiny_run.recipe.read_text())
    write_json_atomic(rd.run_json, {**tiny_run.info(), "recipe": str(TINY_RECIPE)})
    t0 = time.time()
    for s in range(1, 21):
        append_jsonl(rd.metrics, {"step": s, "attempt": 1, "ts": t0 + 2.5 * s, FORMAT: 0.0})
    rd.event("transition", status="confirmed", step=12, signal=FORMAT, detected_at=20)
    rd.event("stopped", step=20, by="after_transition")
    after = projection.launch_cost(home, recipe)
    assert after.seconds_per_step == pytest.approx(2.5) and after.pace_source == "measured here over 1 run(s)"
    assert after.transition_step == 12 and after.usd_to(100) == pytest.approx(100 * 2.5 * recipe.cpu_hour_usd / 3600, abs=1e-6)
    assert cost.usd_text(after.usd_to(100)) == f"{100 * 2.5 * recipe.cpu_hour_usd / 36:.2f}¢"


# --- the live watch --------------------------------------------------------------------------------
def _run_with_ring(tiny_run: RunDir, home: Path, cpu_hour_usd: float = 0.0) -> RunDir:
    """A run directory with the tiny recipe's snapshot and a ring the product's writer filled with a
    real adapter (steps 1-60), as a live run has while its metrics arrive."""
    rd = create_run_dir(home, "watched")
    rd.recipe.write_text(tiny_run.recipe.read_text())
    write_json_atomic(rd.run_json, {**tiny_run.info(), "run_id": rd.run_id, "cpu_hour_usd": cpu_hour_usd})
    save = _adapter_from(tiny_run.checkpoint_path(3))
    for step in range(1, 61):
        snapshots.write_snapshot(rd, step, save, 100, attempt=1, size=1)
    return rd


def _log_steps(rd: RunDir, steps: range, start_ts: float, s_per_step: float = 1.0) -> None:
    """The trainer's metrics lines: format reward flat near 0, turning up sharply at step 40."""
    for s in steps:
        fmt = 0.02 * (s % 3) if s < 40 else 0.9 + 0.02 * (s % 2)
        append_jsonl(rd.metrics, {"step": s, "attempt": 1, "ts": start_ts + s * s_per_step, FORMAT: fmt,
                                  LENGTH: 14.0 + 0.5 * (s % 2)})


def test_the_watch_marks_pins_asks_and_schedules_the_stop(tiny_run, tmp_path):
    rd = _run_with_ring(tiny_run, tmp_path / "h")
    lines: list[str] = []
    rd.event("attempt_started", attempt=1, pid=os.getpid(), gpus=0)
    lifecycle.set_policy(rd.path.parent.parent, rd.run_id, by="test", after_transition=4)
    watch = LiveWatch(rd, rd.event, lines.append)
    t0 = time.time() - 100
    for s in range(1, 61):  # as the steps arrive
        _log_steps(rd, range(s, s + 1), t0)
        assert watch.poll() is None
    events = rd.read_events()
    marks = [e for e in events if e["event"] == "transition"]
    assert [(e["status"], e["step"], e["signal"]) for e in marks] == [("tentative", 40, FORMAT), ("confirmed", 40, FORMAT)]
    tentative, confirmed = marks
    assert tentative["detected_at"] == tentative["alarm_at"] and 40 <= tentative["detected_at"] <= 43
    asked = [e for e in events if e["event"] == "checkpoint_requested"]
    assert [(e["step"], e["reason"]) for e in asked] == [(tentative["detected_at"], "tentative phase transition at step 40")]
    assert rd.checkpoint_steps(evaluable=True) == [40, 41] and rd.checkpoint_steps() == []
    assert [(e["step"], e["side"]) for e in events if e["event"] == "checkpoint_pinned"] == [(40, "before"), (41, "after")]
    [scheduled] = [e for e in events if e["event"] == "stop_scheduled"]
    assert scheduled["step"] == confirmed["detected_at"] + 4
    assert scheduled["reason"] == f"4 steps after the phase transition at step 40 was confirmed at step {confirmed['detected_at']}"
    # the policy changed live: the trainer is told the new step, then that there is none
    lifecycle.set_policy(rd.path.parent.parent, rd.run_id, by="test", after_transition=10)
    watch.poll()
    lifecycle.set_policy(rd.path.parent.parent, rd.run_id, by="test", after_transition=None)
    watch.poll()
    assert [e["step"] for e in rd.read_events() if e["event"] == "stop_scheduled"] == \
        [scheduled["step"], confirmed["detected_at"] + 10, None]
    assert watch.stop_fields("after_transition")["by"] == "after_transition"


def test_a_rejected_alarm_unpins_and_a_budget_stops_the_run(tiny_run, tmp_path):
    rd = _run_with_ring(tiny_run, tmp_path / "h", cpu_hour_usd=36.0)  # a cent a second
    rd.event("attempt_started", attempt=1, pid=os.getpid(), gpus=0)
    watch = LiveWatch(rd, rd.event, [].append)
    t0 = time.time() - 1
    # a blip that does not last: tentative, then rejected
    for s in range(1, 41):
        append_jsonl(rd.metrics, {"step": s, "attempt": 1, "ts": t0 + s * 0.01,
                                  FORMAT: 0.6 if 25 <= s < 28 else 0.02 * (s % 3), LENGTH: 14.0})
        watch.poll()
    statuses = [(e["status"], e["step"]) for e in rd.read_events() if e["event"] == "transition"]
    assert statuses[0][0] == "tentative" and statuses[-1] == ("rejected", statuses[0][1])
    assert rd.checkpoint_steps(evaluable=True) == []  # its pins are gone
    assert [e["event"] for e in rd.read_events()].count("checkpoint_unpinned") == 2
    # the budget: stop once the next step would pass it
    lifecycle.set_policy(rd.path.parent.parent, rd.run_id, by="test", budget_usd=0.5)
    assert watch.poll(now=t0 + 10) is None
    by, reason = watch.poll(now=t0 + 60)
    assert by == "budget_usd" and reason.startswith("budget $0.5 reached ($0.")


# --- end to end: the tiny recipe for real -----------------------------------------------------------
def _wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _train(home: Path, *overrides: str) -> tuple[RunDir, subprocess.CompletedProcess]:
    out = tina(home, "run", str(TINY_RECIPE), "--name", "policy", *[a for o in overrides for a in ("--set", o)],
               timeout=600)
    [rd] = list_run_dirs(home)
    assert out.returncode == 75, out.stderr[-3000:] + rd.train_log.read_text()[-3000:]  # stopped
    return rd, out


def _evaluated(rd: RunDir, home: Path) -> dict:
    """The run object once its automatic evaluations have ended."""
    def done():
        run = json.loads(tina(home, "status", rd.run_id, "--json").stdout)
        auto = [e for e in run["evaluations"] if e["why"] == "transition"]
        return run if auto and all(e["state"] in ("finished", "failed") for e in auto) else None
    return _wait_for(done, 400, "the automatic evaluations")


def _budgeted(home: Path, budget_above_spent: float):
    """A CPU run (at $36 an hour: a cent a second) trained to step 60 with a confirmed marker at
    30, checkpoints every 10, and a budget ``budget_above_spent`` dollars above what it spent."""
    from tina_core.analysis import cost
    from tina_core.events import Kind
    from tina_tui.demo import SyntheticRun

    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text("prices: {cpu: 36.0}\n")
    rd = SyntheticRun("capped-1", name="capped", steps=60, stop_at_step=100, max_steps=100, save_steps=10,
                      transition=30, gpu_count=0, state="stopped", step_s=1.0).write(home)
    rd.event(Kind.TRANSITION, status="confirmed", step=30, signal="rewards/format_reward/mean", detected_at=35)
    spent = cost.Meter.for_run(rd).cost_usd()["total"]
    lifecycle.set_policy(home, rd.run_id, by="test", budget_usd=round(spent + budget_above_spent, 6))
    return rd


def test_the_evaluations_a_policy_stop_queues_are_priced_against_the_budget_left(tmp_path):
    """Attack 5: a budget was not a cap: `stop.budget_usd=0.0008` stopped training at $0.00055,
    then the automatic evaluations took the run to $0.00103 without a word. Each evaluation the
    policy would queue is priced (10 s of the CPU box for the tiny task here, until the workspace
    measured its own) against what is left; what does not fit is not queued, and is said in the
    events, `tina status` and the cockpit's notices."""
    from tina_core.alerts import event_text
    from tina_core.analysis import cost
    from tina_core.evaluate import queue

    home = tmp_path / "home"
    rd = _budgeted(home, 0.15)  # one evaluation ($0.10) fits, a second does not
    ids = queue.queue_eval(home, rd.run_id, "transition", ["arith"], why="transition", start_worker=False)
    events = rd.read_events()
    assert [(e["checkpoint"], e["task"]) for e in events if e["event"] == "eval_queued"] == [(30, "arith")]
    assert len(ids) == 1
    refused = [e for e in events if e["event"] == "eval_refused"]
    assert [(e["checkpoint"], e["task"], e["why"]) for e in refused] == [(40, "arith", "transition"),
                                                                         ("base", "arith", "transition")]
    price = cost.eval_price(home, RunInfo.read(rd), "arith", [])
    assert price.usd == pytest.approx(0.1) and "7 s" in price.source
    assert refused[0]["projected_usd"] == pytest.approx(0.1) and refused[0]["left_usd"] == pytest.approx(0.05)
    assert event_text("capped", refused[1])[1] == ("capped: arith of the base model not queued: its projected $0.1 "
                                                   "passes the $0.05 left of its $" + f"{refused[1]['budget_usd']:g} budget")
    # asked again (a second policy stop at the same marker): the one queued is not queued twice, and
    # what is queued counts against the budget, so nothing more fits
    assert queue.queue_eval(home, rd.run_id, "transition", ["arith"], why="transition", start_worker=False) == ids
    assert sum(e["event"] == "eval_queued" for e in rd.read_events()) == 1
    # a person's `tina eval` is theirs to spend: not capped
    assert len(queue.queue_eval(home, rd.run_id, 40, ["arith"], start_worker=False)) == 1
    # (the commands below start a worker for what waits; the synthetic checkpoints fail it, said apart)
    out = tina(home, "status", rd.run_id)
    assert "arith of checkpoint 40 not queued: its projected $0.1 passes the $0.05 left" in out.stdout, out.stdout
    [run] = json.loads(tina(home, "ls", "--json").stdout)
    assert [(r["checkpoint"], r["task"]) for r in run["evals_refused"]][:2] == [(40, "arith"), ("base", "arith")]


def test_transition_evaluations_that_exist_are_not_queued_again(tmp_path):
    """LOW: `tina eval --checkpoint transition` queued again the evaluations that had finished."""
    from tina_core.events import Kind
    from tina_tui.demo import SyntheticRun

    home = tmp_path / "home"
    rd = SyntheticRun("done-1", name="done", steps=60, stop_at_step=60, save_steps=10, transition=30, gpu_count=0,
                      evals={30: {"arith": 0.5}, 40: {"arith": 0.6}}, base_evals={"arith": 0.4}).write(home)
    rd.event(Kind.TRANSITION, status="confirmed", step=30, signal="rewards/format_reward/mean", detected_at=35)
    before = sum(e["event"] == "eval_queued" for e in rd.read_events())
    out = tina(home, "eval", rd.run_id, "--checkpoint", "transition")
    assert out.returncode == 0, out.stderr
    assert [line.split("\t")[1:] for line in out.stdout.splitlines()] == [
        ["checkpoint-30", "arith", "finished"], ["checkpoint-40", "arith", "finished"], ["base", "arith", "finished"]]
    assert sum(e["event"] == "eval_queued" for e in rd.read_events()) == before


@pytest.mark.extended
def test_stops_after_the_transition_and_evaluates_what_matters(home, tiny_model):
    """Done-when: the tiny recipe with stop.after_transition stops at most N (+1) steps after the
    confirmation, a checkpoint exists at most 3 steps before the marker's step, the bracketing
    checkpoints and the base are evaluated unasked, and status --json has the saved dollars and the pick."""
    n = 5
    rd, out = _train(home, f"stop.after_transition={n}")
    events = rd.read_events()
    confirmed = [e for e in events if e["event"] == "transition" and e["status"] == "confirmed"][-1]
    stopped = events[[e["event"] for e in events].index("stopped")]
    assert stopped["by"] == "after_transition" and f"{n} steps after the phase transition" in stopped["reason"]
    assert confirmed["detected_at"] < stopped["step"] <= confirmed["detected_at"] + n + 1
    assert stopped["step"] in rd.checkpoint_steps()  # a checkpoint at the stop, resumable
    marker = confirmed["step"]
    before = max(s for s in rd.checkpoint_steps(evaluable=True) if s <= marker)
    assert marker - before <= 3
    # the tentative alarm asked for a checkpoint, and got one at once (off the grid, unless the
    # step it was heard at happens to be on it), before the stop
    asked = next(e for e in events if e["event"] == "checkpoint_requested")
    saved = [int(m) for m in re.findall(r"checkpoint asked for at step (\d+)", rd.train_log.read_text())]
    assert any(asked["step"] <= s < stopped["step"] and s in rd.checkpoint_steps() for s in saved), (asked, saved)

    run = _evaluated(rd, home)
    auto = {(e["checkpoint"], e["state"]) for e in run["evaluations"] if e["why"] == "transition"}
    after = min(s for s in rd.checkpoint_steps(evaluable=True) if s > marker)
    assert auto == {(before, "finished"), (after, "finished"), ("base", "finished")}
    assert run["stopped_by"]["by"] == "after_transition"
    assert run["pick"]["step"] in (before, after) and run["pick"]["avg"] is not None
    assert run["pick"]["best_evaluated"]["avg"] >= run["pick"]["avg"]
    price = read_json(rd.run_json)["cpu_hour_usd"]
    assert price > 0 and run["cost_usd"]["total"] > 0  # the tiny recipe bills a CPU box
    assert run["saved_usd"] == pytest.approx((100 - stopped["step"]) * run["seconds_per_step"] * price / 3600, abs=1e-6)
    assert run["cost_to_stop_at_step_usd"] == pytest.approx(run["cost_usd"]["total"] + run["saved_usd"], abs=1e-5)


@pytest.mark.extended
def test_stops_on_its_budget_and_keeps_what_matters(home, tiny_model):
    """stop.budget_usd: the run stops before its cost passes the budget, at a checkpoint, and says
    why; resuming it asks for a larger budget first. A budget counts seconds of a box, so it is set
    from the run's own pace: a recipe budget out of reach, lowered live to ~8 steps ahead (and the
    stop's own cost)."""
    out = tina(home, "run", str(TINY_RECIPE), "--detach", "--set", "stop.budget_usd=100",
               "--set", "stop.evaluate=false")
    assert out.returncode == 0, out.stderr
    [rd] = list_run_dirs(home)

    def status() -> dict:
        return json.loads(tina(home, "status", rd.run_id, "--json").stdout)

    run = _wait_for(lambda: (r := status())["step"] and r["step"] >= 5 and r["seconds_per_step"] and r, 300,
                    "five steps")
    assert run["countdown"]["by"] == "stop_at_step" and run["stop_policy"]["budget_usd"] == 100
    per_step = run["seconds_per_step"] * run["cpu_hour_usd"] / 3600
    # 8 steps beyond what is spent and what the stop itself will cost
    budget = round(run["cost_usd"]["total"] + policy.stop_reserve_usd(run["cpu_hour_usd"]) + 8 * per_step, 6)
    assert tina(home, "policy", rd.run_id, "--budget-usd", str(budget)).returncode == 0
    _wait_for(lambda: status()["state"] == "stopped", 300, "the budget stop")
    events = rd.read_events()
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["by"] == "budget_usd" and stopped["reason"].startswith(f"budget ${budget:g} reached")
    assert run["step"] < stopped["step"] < 100 and stopped["step"] in rd.checkpoint_steps()
    run = status()
    # under budget: the stop was asked while the money left covered a step and the stop itself
    assert run["cost_usd"]["total"] <= budget + per_step
    assert run["stopped_by"]["by"] == "budget_usd" and run["saved_usd"] > 0
    assert not [e for e in events if e["event"] == "eval_queued"]  # stop.evaluate: false
    marker = policy.marker(events)
    if marker is not None:  # a marker placed before the money ran out keeps its checkpoint
        assert any(marker["step"] - 3 <= s <= marker["step"] for s in rd.checkpoint_steps(evaluable=True))
    refused = tina(home, "resume", rd.run_id)
    assert refused.returncode == 2 and "too little is left for a step: raise it first" in refused.stderr
    assert all(r.get("attempt") == 1 for r in iter_jsonl(rd.metrics))


@pytest.mark.extended
def test_one_seed_stops_at_one_step_side_by_side_and_keeps_the_marker_checkpoint(home, tiny_model):
    """The marker is something to stop on: four runs of one seed with stop.after_transition 5, side
    by side with a fifth run of that seed to stop_at_step (each other's load on 2 cores), all with
    save_steps 5 and save_total_limit 2. The four write the same transition and stop events and
    stop at the same step, after the full run's marker and within 3 steps of it; every run keeps a
    checkpoint at or just before its marker through the rotation and names it; resuming a stopped
    run says why it stopped and trains on."""
    common = ("grpo.save_steps=5", "grpo.save_total_limit=2", "stop.evaluate=false")
    env = {**os.environ, "TINA_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    def start(name: str, *overrides: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tina_core.cli", "--home", str(home), "run", str(TINY_RECIPE),
                                 "--name", name, *[a for o in (*common, *overrides) for a in ("--set", o)]],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs = [start(f"same-{i}", "stop.after_transition=5") for i in range(4)] + [start("full")]
    codes = [p.wait(timeout=900) for p in procs]
    assert codes == [75, 75, 75, 75, 0], [p.stderr.read()[-2000:] for p in procs]
    runs = {rd.info()["name"]: rd for rd in list_run_dirs(home)}

    def said(rd: RunDir) -> list:
        return [{k: v for k, v in e.items() if k not in ("time", "ts")} for e in rd.read_events()
                if e["event"] in ("transition", "stop_scheduled")]
    stops = [next(e for e in runs[f"same-{i}"].read_events() if e["event"] == "stopped") for i in range(4)]
    assert len({s["step"] for s in stops}) == 1 and all(s["by"] == "after_transition" for s in stops), stops
    assert all(said(runs[f"same-{i}"]) == said(runs["same-0"]) for i in range(1, 4))
    full = json.loads(tina(home, "status", runs["full"].run_id, "--json").stdout)
    full_marker = full["phase_transition"]
    assert full_marker["status"] == "confirmed"
    stop_marker = policy.marker(runs["same-0"].read_events())
    assert abs(stop_marker["step"] - full_marker["step"]) <= 3 and stops[0]["step"] > full_marker["step"]
    for name, rd in runs.items():
        run = json.loads(tina(home, "status", rd.run_id, "--json").stdout)
        m = run["phase_transition"]["step"]
        kept = [s for s in rd.checkpoint_steps(evaluable=True) if s <= m]
        assert kept and m - kept[-1] <= 3 and run["recommended_checkpoint"] == kept[-1], (name, m, kept)
    # the rotation kept two of the grid's newest besides what brackets the marker
    assert len([s for s in runs["full"].checkpoint_steps() if s > full_marker["step"] + 10]) == 2
    resumed = tina(home, "resume", runs["same-0"].run_id, "--detach")
    assert resumed.returncode == 0 and "by stop.after_transition" in resumed.stderr and "trains on past it" in resumed.stderr
    lifecycle.stop_run(home, runs["same-0"].run_id, wait=True)
