"""`tina report`: per-run rows (transition, recommended and best checkpoints as % of an epoch,
scores, dollars) beside the paper's rows, in JSON, CSV, Markdown, and plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tina_core.recipe import paper
from tina_core.recipe.loader import load_recipe
from tina_core.cli.workspace import cli_report
from tina_core.report.table import build_report, render_text
from tina_core.rundir import RunDir, append_jsonl, write_json_atomic

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def make_tina_like_run(home: Path, run_id: str = "rs2-test", name: str = "rs2", turn: int = 460,
                       overrides: tuple[str, ...] = ()) -> RunDir:
    """An Open-RS2-shaped run (7000 rows, 8 prompts/step on 2 GPUs = 875 steps per epoch) whose
    format reward turns at step ``turn`` (460), with checkpoints every 50 steps and two evaluated."""
    rd = RunDir(home / "runs" / run_id)
    (rd.path / "checkpoints").mkdir(parents=True)
    rd.recipe.write_text(load_recipe(RECIPES / "tina" / "open_rs2.yaml", overrides).to_yaml())
    write_json_atomic(rd.run_json, {"run_id": rd.run_id, "name": name, "recipe": "recipes/tina/open_rs2.yaml",
                                    "created": "2026-01-01", "gpu_count": 2, "gpu_hour_usd": 1.0,
                                    "dataset_size": 7000, "stop_at_step": 600})
    t0 = 1_000_000.0
    for s in range(1, 601):  # as the trainer writes them
        wob = ((s * 37) % 11) / 11 - 0.5
        rd.log_metrics(s, 1, {"rewards/format_reward/mean": (0.9 if s < turn else 0.5) + 0.05 * wob,
                              "completions/mean_length": (3000 if s < turn else 2000) + 100 * wob}, at=t0 + 60 * s)
    # cost intervals: 600 steps x 60 s on 2 GPUs at $1/GPU-hour = $20 of training
    events = [{"event": "attempt_started", "ts": t0, "attempt": 1, "gpus": 2},
              {"event": "attempt_exited", "ts": t0 + 36000, "attempt": 1, "code": 0},
              {"event": "eval_started", "ts": t0 + 36100, "eval_id": "e1", "gpus": [0, 1]},
              {"event": "eval_finished", "ts": t0 + 37900, "eval_id": "e1", "checkpoint": 450,
               "scores": {"aime24": 0.4333, "math_500": 0.83}},
              {"event": "eval_started", "ts": t0 + 38000, "eval_id": "e2", "gpus": [0, 1]},
              {"event": "eval_finished", "ts": t0 + 39800, "eval_id": "e2", "checkpoint": 550,
               "scores": {"aime24": 0.3, "math_500": 0.8}}]
    for e in events:  # as the supervisor and the evaluation worker record them
        rd.event(e["event"], at=e["ts"], **{k: v for k, v in e.items() if k not in ("event", "ts")})
    for s in range(50, 601, 50):
        rd.checkpoint_path(s).mkdir()
        rd.mark_complete(s, 1)
    return rd


def test_report_json_beside_the_paper(tmp_path, capsys):
    make_tina_like_run(tmp_path)
    report = build_report(tmp_path)
    [r] = report["runs"]
    assert r["recipe_stem"] == "open_rs2" and r["steps_per_epoch"] == pytest.approx(875)
    ph = r["phase_transition"]
    assert ph["status"] == "confirmed" and ph["direction"] == "down" and abs(ph["step"] - 460) <= 2
    assert r["recommended"]["step"] == 450
    assert r["recommended"]["pct_epoch"] == pytest.approx(51.4, abs=0.1)   # the paper's RS2: 51%
    assert r["recommended"]["scores"] == {"aime24": 0.4333, "math_500": 0.83}
    assert r["best_evaluated"]["step"] == 450 and r["disagree"] is False
    assert r["cost_usd"]["train"] == pytest.approx(20.0) and r["cost_usd"]["eval"] == pytest.approx(2.0)
    assert r["train_usd_to_recommended"] == pytest.approx(450 / 600 * 20, abs=0.05)
    assert r["paper"]["main"]["avg"] == 50.60 and r["paper"]["cost"]["total"] == 32
    assert report["paper"]["costs"][-1] == {"experiment": "Best checkpoint, best task", "train": 8,
                                            "eval": 1, "total": 9}
    assert cli_report(tmp_path, fmt="json") == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["recommended"]["step"] == 450


def test_report_csv_md_table_and_plots(tmp_path, capsys):
    make_tina_like_run(tmp_path)
    assert cli_report(tmp_path, fmt="csv", plots=tmp_path / "plots") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    ours = [r for r in rows if r["source"] == "ours"]
    assert len(ours) == 1 and ours[0]["recommended_step"] == "450" and ours[0]["aime24"] == "0.4333"
    assert len([r for r in rows if r["source"] == "paper"]) == len(paper.MAIN_RESULTS)
    png = tmp_path / "plots" / "rs2-test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert cli_report(tmp_path, fmt="md") == 0
    md = capsys.readouterr().out
    assert "| rs2 | open_rs2 |" in md and "450 (51%)" in md and "Tina-Open-RS2" in md
    assert cli_report(tmp_path, fmt="table") == 0
    assert "Best checkpoint, best task" in capsys.readouterr().out


def test_report_on_an_empty_workspace_and_an_undetected_run(tmp_path, capsys):
    assert build_report(tmp_path)["runs"] == []
    assert cli_report(tmp_path, fmt="table") == 0 and "(no runs)" in capsys.readouterr().out
    rd = RunDir(tmp_path / "runs" / "flat")
    rd.path.mkdir(parents=True)
    write_json_atomic(rd.run_json, {"run_id": "flat", "name": "flat", "imported": True})
    for s in range(1, 80):
        append_jsonl(rd.metrics, {"step": s, "rewards/format_reward/mean": 0.5 + 0.01 * (s % 3)})
    [r] = build_report(tmp_path)["runs"]
    assert r["recommended"] is None and "no phase transition" in r["reason"]
    assert r["steps_per_epoch"] is None and r["cost_usd"]["total"] == 0
    assert cli_report(tmp_path, fmt="md") == 0
    assert "no phase transition" in capsys.readouterr().out


def test_ablation_table_names_the_axis_and_what_each_run_bought(tmp_path, capsys):
    make_tina_like_run(tmp_path)  # rank 32, turns at 460: recommended 450, evaluated (aime24, math_500)
    # the rank ablation: rank 16 turns at 260; its checkpoint 250 is evaluated, and so is its base model
    r16 = make_tina_like_run(tmp_path, "rs2-r16", "rs2-r16", turn=260, overrides=("lora.r=16", "lora.lora_alpha=64"))
    r16.event("eval_finished", ts=1_100_000.0, eval_id="e3", checkpoint=250,
              scores={"aime24": 0.5, "math_500": 0.85})
    r16.event("eval_finished", ts=1_100_001.0, eval_id="e4", checkpoint=None,
              scores={"aime24": 0.3, "math_500": 0.8})
    make_tina_like_run(tmp_path, "other", "other")  # not asked for: not in the table
    report = build_report(tmp_path, ["rs2", "rs2-r16"])
    abl = report["ablation"]
    assert abl["axis"] == ["lora.r", "lora.lora_alpha"]
    assert [r["name"] for r in report["runs"]] == ["rs2", "rs2-r16"]
    rs2, r16row = abl["rows"]
    assert rs2["settings"] == {"lora.r": 32, "lora.lora_alpha": 128}
    assert r16row["settings"] == {"lora.r": 16, "lora.lora_alpha": 64}
    assert abs(rs2["transition_step"] - 460) <= 2 and abs(r16row["transition_step"] - 260) <= 2
    assert r16row["transition_pct_epoch"] == pytest.approx(100 * r16row["transition_step"] / 875, abs=0.1)
    assert (rs2["recommended_step"], r16row["recommended_step"]) == (450, 250)
    assert r16row["recommended_pct_epoch"] == pytest.approx(28.6, abs=0.1)
    # the dollars to the recommended checkpoint: 60 s a step on 2 GPUs at $1/GPU-hour
    assert r16row["usd_to_recommended"] == pytest.approx(250 / 600 * 20, abs=0.05)
    assert rs2["avg"] == pytest.approx((0.4333 + 0.83) / 2) and rs2["vs_base"] is None  # no base evaluated
    assert r16row["avg"] == pytest.approx(0.675) and r16row["vs_base"] == pytest.approx(0.125)
    assert rs2["paper"] == {"row": "Tina-Open-RS2", "best_pct_epoch": 51, "avg_pct": 50.60}

    assert cli_report(tmp_path, fmt="table", refs=["rs2", "rs2-r16"]) == 0
    text = capsys.readouterr().out
    head, *lines = text.split("Our runs")[0].splitlines()
    assert "what differs: lora.r, lora.lora_alpha" in head
    r16_line = next(ln for ln in lines if ln.startswith("rs2-r16 "))
    assert r16_line.split()[:3] == ["rs2-r16", "16", "64"] and "250 (29%)" in r16_line
    assert "$8.33" in r16_line and "67.5" in r16_line and "+12.5" in r16_line and "51%" in r16_line
    assert "other" not in text
    assert cli_report(tmp_path, fmt="md", refs=["rs2", "rs2-r16"]) == 0
    md = capsys.readouterr().out
    assert "| run | lora.r | lora.lora_alpha | transition step (% ep) |" in md
    assert cli_report(tmp_path, fmt="csv", refs=["rs2", "rs2-r16"]) == 0
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["source"] == "ours"}
    assert set(rows) == {"rs2", "rs2-r16"}
    assert rows["rs2-r16"]["recipe:lora.r"] == "16" and rows["rs2"]["recipe:lora.lora_alpha"] == "128"
    assert rows["rs2-r16"]["recommended_vs_base"] == "0.125" and rows["rs2"]["paper_avg_pct"] == "50.6"
    assert cli_report(tmp_path, fmt="json", refs=["rs2-r16", "rs2"]) == 0
    assert json.loads(capsys.readouterr().out)["ablation"]["axis"] == ["lora.r", "lora.lora_alpha"]


def test_ablation_table_of_runs_that_share_their_recipe(tmp_path):
    make_tina_like_run(tmp_path)
    make_tina_like_run(tmp_path, "rs2-again", "rs2-again", turn=300)
    abl = build_report(tmp_path)["ablation"]
    assert abl["axis"] == [] and [r["settings"] for r in abl["rows"]] == [{}, {}]


def test_a_gpu_run_s_dollars_both_ways_beside_the_paper_s(tmp_path):
    """recipes/base/tina.yaml counts GPU-seconds x $/GPU-hour; Tina's "14 h / $14" reads like $1 per
    hour of the 2-GPU machine. The report shows a run's training dollars both ways."""
    make_tina_like_run(tmp_path)
    report = build_report(tmp_path)
    [r] = report["runs"]
    assert r["cost_usd"]["train"] == pytest.approx(20.0)  # 10 h on 2 GPUs at $1/GPU-hour
    assert r["cost_usd_machine_hour"]["train"] == pytest.approx(10.0)  # 10 machine-hours at $1
    text = render_text(report, markdown=False)
    assert "train $ (machine-h)" in text and "10.00" in text.split("Our runs")[1].split("\n\n")[0]
    assert 'as the paper\'s "14 h / $14" on 2 GPUs reads' in text
