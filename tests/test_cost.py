"""The cost meter: prices, GPU intervals from events, cost at a step, projection."""

from __future__ import annotations

import pytest

from tina_core.analysis import cost, projection
from tina_core.rundir import RunDir, TinaError, create_run_dir, write_json_atomic


def test_builtin_price_matches_gpu_model_names():
    assert cost._model_key("NVIDIA L40S", cost.BUILTIN_PRICES) == "L40S"
    assert cost._model_key("NVIDIA L4", cost.BUILTIN_PRICES) == "L4"  # not L40S
    assert cost._model_key("NVIDIA H100 80GB HBM3", cost.BUILTIN_PRICES) == "H100"
    assert cost._model_key("NVIDIA A100-SXM4-80GB", cost.BUILTIN_PRICES) == "A100"
    assert cost._model_key("NVIDIA GeForce RTX 4090", cost.BUILTIN_PRICES) == "RTX 4090"
    assert cost._model_key("Tesla T4", cost.BUILTIN_PRICES) is None


def test_price_precedence(tmp_path):
    p = cost.resolve_price(tmp_path, "NVIDIA L40S")
    assert p.gpu_hour_usd == 1.0 and "paper" in p.source
    h100 = cost.resolve_price(tmp_path, "NVIDIA H100 80GB HBM3")
    assert cost.CHECK_PROVIDER in h100.source
    (tmp_path / "config.yaml").write_text("prices:\n  L40S: 0.79\n  cpu: 0.05\n")
    assert cost.resolve_price(tmp_path, "NVIDIA L40S").gpu_hour_usd == 0.79
    assert cost.resolve_price(tmp_path, "NVIDIA L40S", recipe_gpu_hour_usd=0.9).gpu_hour_usd == 0.9
    p = cost.resolve_price(tmp_path, "NVIDIA L40S", cli_gpu_hour_usd=1.2, recipe_gpu_hour_usd=0.9)
    assert (p.gpu_hour_usd, p.source) == (1.2, "--gpu-hour-usd")
    cpu = cost.resolve_price(tmp_path, "cpu", cli_gpu_hour_usd=1.2)
    assert (cpu.gpu_hour_usd, cpu.cpu_hour_usd) == (0.0, 0.05)
    unknown = cost.resolve_price(tmp_path, "Tesla T4")
    assert unknown.gpu_hour_usd == 0.0 and "--gpu-hour-usd" in unknown.source


def test_bad_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("prices: {L40S: cheap}\n")
    with pytest.raises(TinaError, match="config.yaml.*prices"):
        cost.resolve_price(tmp_path, "NVIDIA L40S")


def _run(tmp_path, events, metrics=(), **info) -> RunDir:
    rd = create_run_dir(tmp_path, "c")
    write_json_atomic(rd.run_json, {"run_id": rd.run_id, "gpu_hour_usd": 1.0, "cpu_hour_usd": 0.0,
                                    "stop_at_step": 10, **info})
    for ev in events:  # through the writers the supervisor and the trainer use
        fields = {k: v for k, v in ev.items() if k not in ("event", "ts")}
        rd.event(ev["event"], at=ev["ts"], **fields)
    for m in metrics:
        rd.log_metrics(m["step"], m["attempt"], {k: v for k, v in m.items() if k not in ("step", "attempt", "ts")},
                       at=m["ts"])
    return rd


def test_attempts_and_evals_are_costed_apart(tmp_path):
    # Two GPUs at $1: attempt 1 lives 1800 s, attempt 2 is still running (counted up to open_until);
    # an evaluation on one GPU lasts 360 s.
    rd = _run(tmp_path, [
        {"event": "attempt_started", "attempt": 1, "gpus": 2, "ts": 1000.0},
        {"event": "attempt_exited", "attempt": 1, "ts": 2800.0},
        {"event": "attempt_started", "attempt": 2, "gpus": 2, "ts": 2810.0},
        {"event": "eval_started", "eval_id": "e1", "gpus": 1, "ts": 3000.0},
        {"event": "eval_finished", "eval_id": "e1", "ts": 3360.0},
    ])
    m = cost.Meter.for_run(rd, open_until=2810.0 + 900)
    c = m.cost_usd()
    assert c["train"] == pytest.approx(2 * (1800 + 900) / 3600, abs=1e-4)
    assert c["eval"] == pytest.approx(360 / 3600, abs=1e-4)
    assert c["total"] == pytest.approx(c["train"] + c["eval"], abs=1e-4)
    assert m.usd_per_hour_now() == 2.0
    assert m.gpu_hours("train") == pytest.approx(1.5)


def test_dead_supervisor_attempt_ends_at_its_recorded_end(tmp_path):
    rd = _run(tmp_path, [
        {"event": "attempt_started", "attempt": 1, "gpus": 1, "ts": 0.0},
        # closed on resume, long after: it really ended at the last heartbeat
        {"event": "attempt_exited", "attempt": 1, "ts": 99999.0, "end_ts": 3600.0},
    ])
    assert cost.Meter.for_run(rd).cost_usd()["train"] == pytest.approx(1.0)


def test_cpu_runs_are_free_unless_priced(tmp_path):
    events = [{"event": "attempt_started", "attempt": 1, "gpus": 0, "ts": 0.0},
              {"event": "attempt_exited", "attempt": 1, "ts": 7200.0}]
    assert cost.Meter.for_run(_run(tmp_path, events, gpu_hour_usd=0.0)).cost_usd()["total"] == 0.0
    assert cost.Meter.for_run(_run(tmp_path, events, gpu_hour_usd=0.0, cpu_hour_usd=0.25)).cost_usd()["total"] == 0.5


def test_step_times_keep_each_step_once_from_the_latest_attempt():
    recs = ([{"step": s, "attempt": 1, "ts": 100.0 + s} for s in range(1, 9)]       # died after 8
            + [{"step": s, "attempt": 2, "ts": 200.0 + s} for s in range(6, 8)]      # resumed from 5, died at 7
            + [{"step": s, "attempt": 3, "ts": 300.0 + s} for s in range(6, 11)])    # resumed from 5 again
    times = cost.step_times(recs)
    assert list(times) == list(range(1, 11))
    assert [times[s][1] for s in times] == [1] * 5 + [3] * 5
    assert times[8] == (308.0, 3)


def test_cost_at_step_and_projection(tmp_path):
    # one GPU at $3.60/h = $0.001/s; steps every 2 s from t=10
    metrics = [{"step": s, "attempt": 1, "ts": 10.0 + 2 * s} for s in range(1, 5)]
    rd = _run(tmp_path, [{"event": "attempt_started", "attempt": 1, "gpus": 1, "ts": 10.0}], metrics,
              gpu_hour_usd=3.6)
    m = cost.Meter.for_run(rd, open_until=18.0)
    assert m.cost_at_step(2) == pytest.approx(0.004)
    assert m.cost_at_step(99) is None
    assert m.seconds_per_step() == pytest.approx(2.0)
    assert m.eta_s(4) == pytest.approx(12.0)          # 6 steps left
    assert m.projected_usd(4) == pytest.approx(0.008 + 0.012)
    assert m.projected_usd(4, finished=True) == m.cost_usd()["total"]


def _paced_run(home, tiny_run, name: str, steps: int, seconds: float) -> RunDir:
    """A run of the tiny recipe written through the product's writers: ``steps`` logged steps
    ``seconds`` apart, no end event (a live run)."""
    import time

    from tina_core.recipe.loader import RECIPES_DIR
    from tina_core.rundir import append_jsonl

    rd = create_run_dir(home, name)
    rd.recipe.write_text(tiny_run.recipe.read_text())
    write_json_atomic(rd.run_json, {**tiny_run.info(), "recipe": str(RECIPES_DIR / "tiny.yaml")})
    t0 = time.time()
    for s in range(1, steps + 1):
        append_jsonl(rd.metrics, {"step": s, "attempt": 1, "ts": t0 + seconds * s})
    return rd


def test_the_dry_run_says_what_pace_it_assumes_and_why_until_a_run_here_has_one(tiny_run, tmp_path):
    """The documented pace is stated as an assumption with its reason; a run of the same model on
    the same device replaces it as soon as it has MEASURED_MIN_STEPS steps, ended or still live."""
    from tina_core.recipe.loader import RECIPES_DIR, load_recipe

    rs2 = projection.launch_cost(tmp_path, load_recipe(RECIPES_DIR / "tina" / "open_rs2.yaml"))
    [pace] = [line for line in rs2.lines() if line.startswith("#   pace:")]
    assert pace.startswith("#   pace: assumes 60 s/step because it is Tina's on 2 x L40S")
    assert "four vLLM generations one after another" in pace and "25-45 s/step" in pace

    tiny = load_recipe(RECIPES_DIR / "tiny.yaml")
    _paced_run(tmp_path, tiny_run, "short", projection.MEASURED_MIN_STEPS - 1, 3.0)
    before = projection.launch_cost(tmp_path, tiny)
    assert before.seconds_per_step == projection.STEP_SECONDS[("tiny", "cpu", 0)][0]
    assert "#   pace: assumes 0.12 s/step because bench/tiny_phase_transition.py measured" in before.lines()[1]
    _paced_run(tmp_path, tiny_run, "live", projection.MEASURED_MIN_STEPS, 2.0)
    after = projection.launch_cost(tmp_path, tiny)
    assert after.seconds_per_step == pytest.approx(2.0)
    assert after.lines()[1] == "#   pace: 2 s/step, measured here over 1 run(s)"
    from tina_core.events import Kind

    _paced_run(tmp_path, tiny_run, "broken", projection.MEASURED_MIN_STEPS, 9.0).event(Kind.FAILED, reason="crashed")
    assert projection.launch_cost(tmp_path, tiny).seconds_per_step == pytest.approx(2.0)  # a failed run does not count
