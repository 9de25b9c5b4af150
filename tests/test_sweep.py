"""Sweeps without Slurm, fast: the grid, the checks before anything is created, the dry run, and the
local queue for real (its daemon, K at a time, GPUs of its own, cancelling a queued run, a queue
started again by `tina ls`). The queue's runs here keep the trainer's contract with sleeps instead of
GRPO steps (test_supervisor's contract trainer), so each case takes seconds; the real tiny trainer
runs sweeps in test_sweep_e2e.py (local) and test_slurm.py (Slurm)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tina_core import runstate
from tina_core.events import RUN_ENDED, Kind, last_of
from tina_core.rundir import RunDir, TinaError, create_run_dir, write_json_atomic
from tina_core.sweep import control, local, record
from tina_core.sweep.plan import expand, parse_grid, split_values

from sweep_support import ROOT, logged_steps, tina, wait_for
from test_supervisor import make_run  # noqa: F401 (the fixture)


def test_a_grid_is_every_combination_in_order_with_names_that_say_it():
    specs = expand("ab", [Path("recipes/tiny.yaml")], ["lora.r=8,16", "grpo.seed=1,2"], ["stop_at_step=5"])
    assert [s.name for s in specs] == ["ab-r8-seed1", "ab-r8-seed2", "ab-r16-seed1", "ab-r16-seed2"]
    assert specs[1].overrides == ("stop_at_step=5", "lora.r=8", "grpo.seed=2")
    assert [s.index for s in specs] == [0, 1, 2, 3]
    two = expand("tina", [Path("recipes/tina/open_rs1.yaml"), Path("recipes/tina/open_rs2.yaml")], [])
    assert [s.name for s in two] == ["tina-open_rs1", "tina-open_rs2"] and two[0].overrides == ()
    assert split_values("[q_proj,v_proj],[q_proj], 'a,b'") == ["[q_proj,v_proj]", "[q_proj]", "'a,b'"]
    assert parse_grid("lora.target_modules=[q_proj,v_proj],[q_proj]")[1] == ["[q_proj,v_proj]", "[q_proj]"]
    for bad in ("lora.r", "lora.r=", "lora.r=8,,16", "lora.r=8,8", "=1,2"):
        with pytest.raises(TinaError, match="--grid"):
            parse_grid(bad)
    with pytest.raises(TinaError, match="given twice"):
        expand("x", [Path("r.yaml")], ["lora.r=8", "lora.r=16"])


def test_every_run_is_checked_before_anything_is_created(home, tiny_model, capsys):
    from tina_core.cli.sweeps import cli_sweep
    from tina_core.sweep.plan import plan_sweep

    recipe = ROOT / "recipes" / "tiny.yaml"
    with pytest.raises(TinaError) as e:
        plan_sweep(home, [recipe], grids=["grpo.learning_rate=1e-3,fast"], name="bad")
    assert "run 1 (bad-learning_ratefast)" in str(e.value) and "nothing was created" in str(e.value)
    assert not (home / "runs").exists() and not (home / "sweeps").exists()

    (home / "config.yaml").write_text("slurm:\n  partition: gpu\n  account: lab\n  time: '2:00:00'\n"
                                      "  sbatch: [--qos=low]\n")
    slurm_opts = {"partition": None, "account": "mine", "gpus_per_task": None, "cpus_per_task": 2, "time": None,
                  "signal_s": 120, "sbatch": []}
    assert cli_sweep(home, [recipe], grids=["lora.r=8,16"], sets=["stop_at_step=5"], name="ranks", engine="slurm",
                     max_parallel=1, dry_run=True, gpus=None, gpu_hour_usd=None, slurm_given=slurm_opts) == 0
    out = capsys.readouterr().out
    assert "sweep ranks: 2 run(s), one Slurm job array, 1 task(s) at a time" in out
    assert "ranks-r8" in out and "ranks-r16" in out and "projected:" in out
    assert "  lora.r: 8" in out and "  lora.r: 16" in out  # each run resolved: what differs between them
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@120",
                 "#SBATCH --partition=gpu", "#SBATCH --account=mine", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --time=2:00:00", "#SBATCH --qos=low", "-m tina_core.sweep task"):
        assert line in out, line  # the command line over config.yaml's slurm: section
    assert not (home / "runs").exists() and not (home / "sweeps").exists()

    (home / "config.yaml").write_text("slurm:\n  partitoin: gpu\n")
    with pytest.raises(TinaError, match="unknown key.*partitoin"):
        plan_sweep(home, [recipe], name="x", engine="slurm")
    (home / "config.yaml").write_text("slurm:\n  time: '10'\n  signal_s: 900\n")
    with pytest.raises(TinaError, match="not shorter than the time limit"):
        plan_sweep(home, [recipe], name="x", engine="slurm")


# --- the local queue, for real ---------------------------------------------------------------------
@pytest.fixture
def contract(make_run, tmp_path, monkeypatch):  # noqa: F811 (the fixture imported above)
    """A workspace and the contract trainer's script (test_supervisor's); the queue's runs inherit
    this environment."""
    monkeypatch.setenv("FT_STOP", "6")
    monkeypatch.setenv("FT_SLEEP", "0.05")
    return make_run.home, tmp_path / "contract_trainer.py"


def make_sweep(home: Path, script: Path, n: int, k: int, *, name: str = "sw", gpus: int = 0,
               gpu_ids: tuple[int, ...] = ()) -> list[RunDir]:
    """A local sweep of ``n`` queued runs of the contract trainer, written through the product's own
    writers (as `tina sweep` does after its checks, which need a real recipe)."""
    runs = []
    for i in range(n):
        rd = create_run_dir(home, f"{name}-{i}")
        rd.recipe.write_text("name: contract\n")
        command = [sys.executable, str(script), str(rd.path)]
        if gpus:  # the GPUs the trainer was given, as it sees them
            command = ["sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES" >> {rd.path}/gpus.txt; exec "$0" "$@"', *command]
        write_json_atomic(rd.run_json, {
            "run_id": rd.run_id, "name": f"{name}-{i}", "created": "now", "device": "cpu", "gpu_count": gpus,
            "gpu_hour_usd": 0.0, "cpu_hour_usd": 3.6, "stop_at_step": 6, "max_restarts": 0, "command": command,
            "sweep": name, "sweep_index": i})
        rd.event(Kind.QUEUED, recipe="contract", command=command, gpus=gpus, gpu_hour_usd=0.0, device="cpu",
                 sweep=name, engine="local")
        runs.append(rd)
    record.sweep_dir(home, name).mkdir(parents=True)
    record.write_sweep(home, record.Sweep(name=name, engine="local", max_parallel=k,
                                          runs=tuple(rd.run_id for rd in runs), gpu_ids=gpu_ids))
    return runs


def _state(rd: RunDir) -> str:
    return runstate.liveness(rd).state


def _ended(runs: list[RunDir], timeout: float = 90) -> None:
    wait_for(lambda: all(_state(rd) in runstate.ENDED_STATES for rd in runs), timeout,
             lambda: "runs still " + ", ".join(_state(rd) for rd in runs))


def _spans(runs: list[RunDir]) -> list[tuple[float, float]]:
    """When each run held its slot: from its launch to its end, as its events say."""
    out = []
    for rd in runs:
        ev = rd.read_events()
        out.append((last_of(ev, Kind.LAUNCHED)["ts"], last_of(ev, *RUN_ENDED)["ts"]))
    return out


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    return max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)


def test_the_queue_runs_k_at_a_time_in_order_each_on_gpus_of_its_own_each_step_once(contract):
    home, script = contract
    runs = make_sweep(home, script, 3, 2, gpus=1, gpu_ids=(0, 1, 2))  # three GPUs, but two at a time
    assert [_state(rd) for rd in runs] == ["queued"] * 3
    assert local.ensure_queue(home, "sw")
    _ended(runs)
    assert [_state(rd) for rd in runs] == ["finished"] * 3
    assert all(logged_steps(rd) == list(range(1, 7)) for rd in runs)
    spans = _spans(runs)
    assert _most_at_once(spans) == 2
    assert spans[2][0] >= min(spans[0][1], spans[1][1])  # the third took the first slot that freed
    given = [(rd.path / "gpus.txt").read_text().split() for rd in runs]  # what each trainer was given
    launched = [last_of(rd.read_events(), Kind.LAUNCHED)["gpu_ids"] for rd in runs]
    assert [[str(g) for g in ids] for ids in launched] == given and all(len(ids) == 1 for ids in launched)
    for i in range(3):
        for j in range(i + 1, 3):
            if spans[i][0] < spans[j][1] and spans[j][0] < spans[i][1]:  # at the same time: not the same GPU
                assert launched[i] != launched[j]
    wait_for(lambda: record.queue_pid(home, "sw") is None, 30, lambda: "the queue never exited")
    log = (record.sweep_dir(home, "sw") / record.QUEUE_LOG).read_text()
    assert log.count("started ") == 3 and "queue exits" in log
    listed = json.loads(tina(home, "ls", "--json").stdout)
    assert [(r["sweep"], r["queue"]["engine"], r["queue"]["index"]) for r in listed] == \
        [("sw", "local", 0), ("sw", "local", 1), ("sw", "local", 2)]


def test_stop_cancels_a_queued_run_and_stops_a_running_one(contract, monkeypatch):
    home, script = contract
    monkeypatch.setenv("FT_STOP", "100000")  # the first run trains until it is stopped
    first, second = make_sweep(home, script, 2, 1)
    local.ensure_queue(home, "sw")
    wait_for(lambda: logged_steps(first), 30, lambda: f"the first run is {_state(first)}")
    assert _state(second) == "queued"
    queued = json.loads(tina(home, "status", second.run_id, "--json").stdout)
    assert queued["state"] == "queued" and queued["queue"]["reason"] == "waiting for a free slot, 1 at a time"
    out = tina(home, "stop", second.run_id)
    assert out.returncode == 0 and out.stdout.strip() == "cancelled" and "had not started" in out.stderr
    assert control.stop(home, second.run_id).said.endswith("already cancelled: nothing to stop")
    assert control.stop(home, first.run_id, wait=True).state == "stopped"
    wait_for(lambda: record.queue_pid(home, "sw") is None, 30, lambda: "the queue never exited")
    assert last_of(second.read_events(), Kind.LAUNCHED) is None  # never started
    assert last_of(second.read_events(), Kind.CANCELLED)["by"] == "tina stop"
    assert [_state(first), _state(second)] == ["stopped", "cancelled"]
    steps = logged_steps(first)
    assert steps == list(range(1, len(steps) + 1)) and first.checkpoint_steps()[-1] == steps[-1]
    out = tina(home, "resume", second.run_id, env={"FT_STOP": "6"})  # a cancelled run starts then
    assert out.returncode == 0 and _state(second) == "finished" and logged_steps(second) == list(range(1, 7))


def test_a_queue_that_died_is_started_again_by_tina_ls(contract):
    home, script = contract
    [rd] = make_sweep(home, script, 1, 1)  # as after a reboot: queued, no queue alive
    out = tina(home, "ls", "--json")  # as it found the run, then what it did about it
    assert json.loads(out.stdout)[0]["queue"]["reason"].startswith("no queue is running")
    assert "no queue was running for sweep(s) sw: started again" in out.stderr
    _ended([rd])
    assert _state(rd) == "finished" and logged_steps(rd) == list(range(1, 7))


def test_a_supervisor_on_another_machine_is_judged_by_its_heartbeat(contract):
    home, script = contract
    [rd] = make_sweep(home, script, 1, 1)
    rd.event(Kind.LAUNCHED, recipe="contract", command=[], gpus=0, gpu_hour_usd=0.0, device="cpu", host="node7")
    rd.event(Kind.SUPERVISOR_STARTED, pid=999999, resume=False)
    rd.event(Kind.ATTEMPT_STARTED, attempt=1, pid=999998, gpus=0, resume_from=None)
    beat = {"pid": 999999, "heartbeat": time.time(), "trainer_pid": os.getpid(), "trainer_started": time.time(),
            "host": "node7"}
    write_json_atomic(rd.supervisor, beat)
    live = runstate.liveness(rd)
    assert live.state == "running" and live.remote  # its pid is not this machine's to look up
    with pytest.raises(TinaError, match="supervised on node7"):
        from tina_core.supervise.lifecycle import stop_run

        stop_run(home, rd.run_id)
    write_json_atomic(rd.supervisor, {**beat, "heartbeat": time.time() - 60})
    live = runstate.liveness(rd)  # a pid of this machine's that is alive is no orphan of node7's
    assert live.state == "crashed" and live.orphan_trainer_pid is None


def test_the_index_can_live_on_local_disk_apart_from_a_shared_workspace(contract, tmp_path):
    home, script = contract
    make_sweep(home, script, 1, 1)
    local_disk = tmp_path / "local"
    out = tina(home, "ingest", env={"TINA_INDEX_DIR": str(local_disk)})
    assert out.returncode == 0, out.stderr
    [index] = list(local_disk.glob("tina-*.duckdb"))
    assert str(index) in out.stdout + out.stderr and not (home / "tina.duckdb").exists()
    assert tina(home, "ls", env={"TINA_INDEX_DIR": str(local_disk)}).returncode == 0
    assert list(local_disk.glob("tina-*.duckdb")) == [index]  # one file per workspace, found again


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_cockpit_shows_the_sweep_and_t_gives_its_table(tmp_path, monkeypatch):
    """Two of three runs of an ablation as sweep `lr` (as `tina sweep` records them): the runs list
    has a sweep column, and T with nothing marked on one of them is that sweep's table."""
    import tina_tui.collector
    from test_tui_support import ablation_workspace, make_app, screen_text, settle
    from tina_tui.screens.ablation import AblationScreen

    monkeypatch.setattr(tina_tui.collector, "REFRESH_BUDGET_S", float("inf"))
    home = ablation_workspace(tmp_path / "home")
    runs = [rd for rd in (RunDir(p) for p in sorted((home / "runs").iterdir())) if rd.info().get("name") != "rs2-r16"]
    for i, rd in enumerate(runs):
        write_json_atomic(rd.run_json, {**rd.info(), "sweep": "lr", "sweep_index": i})
    record.sweep_dir(home, "lr").mkdir(parents=True)
    record.write_sweep(home, record.Sweep(name="lr", engine="local", max_parallel=1,
                                          runs=tuple(rd.run_id for rd in runs)))
    app = make_app(home, run=runs[0].run_id)
    async with app.run_test(size=(100, 24)) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        assert "sweep" in text and text.count(" lr ") == 2
        await pilot.press("T")
        for _ in range(200):
            await settle(app, pilot)
            if isinstance(app.screen, AblationScreen) and app.screen.query_one("#compare-table").row_count:
                break
        assert "sweep lr (2 runs" in app.screen.title_text()
        assert len(app.screen.query_one("#compare-table").columns) == 3  # the label and the sweep's two runs
