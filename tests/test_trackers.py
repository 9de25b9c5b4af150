"""grpo.report_to: a run logs to the user's tracker and to tina at once, the tracker's files where
its users look, and no credential from the environment in the run directory."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_RECIPE, run_tiny_recipe
from tina_core.recipe.configs import TRACKER_PACKAGES
from tina_core.rundir import iter_jsonl

ROOT = Path(__file__).resolve().parent.parent
WANDB_KEY = "wandb_trackerKEY0123456789abcdef"  # exported as a W&B user does


def _dry_run(home: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "run", str(TINY_RECIPE),
                           *args, "--dry-run"], cwd=ROOT, capture_output=True, text=True)


def test_report_to_is_checked_before_launch(home, tiny_model):
    absent = next((n for n, pkgs in TRACKER_PACKAGES.items()
                   if not any(importlib.util.find_spec(p) for p in pkgs)), None)
    if absent is not None:
        out = _dry_run(home, f"grpo.report_to={absent}")
        assert out.returncode == 2 and f"grpo.report_to: {absent} is not installed here" in out.stderr
    unknown = _dry_run(home, "grpo.report_to=[tensorboard, wandbb]")
    assert unknown.returncode == 2 and "grpo.report_to: unknown tracker 'wandbb'" in unknown.stderr


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every TensorBoard event file under ``folder`` (TFRecord framing:
    length, its CRC, an Event protobuf, its CRC)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


@pytest.mark.extended
@pytest.mark.slow
def test_a_run_logs_to_tensorboard_and_to_tina_and_keeps_the_key_out(home, tiny_cache, tiny_model, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    rd = run_tiny_recipe(home, tiny_cache, "tracked", ("grpo.max_steps=4", "stop_at_step=4", "grpo.save_steps=2",
                                                     "grpo.report_to=tensorboard"))
    # tina's metrics, one line per step, as always
    ours = {r["step"]: r for r in iter_jsonl(rd.metrics) if "train_runtime" not in r}
    assert sorted(ours) == [1, 2, 3, 4]
    # TensorBoard's own event files, in the run directory's tensorboard/, with the same figures
    assert list((rd.path / "tensorboard").glob("events.out.tfevents.*"))
    tb = _scalars(rd.path / "tensorboard")
    for key in ("rewards/format_reward/mean", "completions/mean_length", "loss", "learning_rate"):
        assert tb[f"train/{key}"] == pytest.approx({s: r[key] for s, r in ours.items()}, rel=1e-6), key
    assert not (rd.checkpoints / "runs").exists()  # not among the checkpoints
    # the key reached the trainer's environment and nothing tina or the tracker wrote
    for path in rd.path.rglob("*"):
        if path.is_file():
            assert WANDB_KEY.encode() not in path.read_bytes(), path
    assert WANDB_KEY not in json.dumps(rd.info())
    assert os.environ["WANDB_API_KEY"] == WANDB_KEY
