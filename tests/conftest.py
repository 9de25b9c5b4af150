"""Shared fixtures: the tiny model's cache, a fresh workspace per test, one short tiny run per session.

The tiny model is built once and kept in pytest's cache folder (``.pytest_cache/d/tina-cache``), keyed
by its build parameters, so later sessions reuse it; ``TINA_TEST_CACHE`` points elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPE = ROOT / "recipes" / "tiny.yaml"
# The shared short run: 6 GRPO steps, checkpoints at 3 and 6.
TINY_RUN_OVERRIDES = ("grpo.max_steps=6", "grpo.save_steps=3", "stop_at_step=6")


def pytest_configure(config):
    # numpy notices flushed denormals (torch.set_flush_denormal in the tiny build): expected.
    config.addinivalue_line("filterwarnings", "ignore:The value of the smallest subnormal:UserWarning")


@pytest.fixture(scope="session")
def tiny_cache(request) -> Path:
    """A session-wide ``TINA_CACHE`` holding the built tiny model."""
    env = os.environ.get("TINA_TEST_CACHE")
    return Path(env) if env else request.config.cache.mkdir("tina-cache")


@pytest.fixture(scope="session")
def tiny_model(tiny_cache) -> Path:
    """The tiny model's folder (built on first use; a few tens of seconds)."""
    from tina_core.recipe.tiny_model import ensure_tiny_model

    old = os.environ.get("TINA_CACHE")
    os.environ["TINA_CACHE"] = str(tiny_cache)
    try:
        return ensure_tiny_model()
    finally:
        if old is None:
            os.environ.pop("TINA_CACHE", None)
        else:
            os.environ["TINA_CACHE"] = old


@pytest.fixture
def home(tmp_path, tiny_cache, monkeypatch) -> Path:
    """A fresh ``TINA_HOME`` for one test, sharing the session's tiny-model cache."""
    h = tmp_path / "tina-home"
    h.mkdir()
    monkeypatch.setenv("TINA_HOME", str(h))
    monkeypatch.setenv("TINA_CACHE", str(tiny_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return h


def run_tiny_recipe(home: Path, cache: Path, name: str, overrides=()):
    """``tina run recipes/tiny.yaml --name NAME [--set ...]`` in the foreground, in a workspace of
    its own: the finished run's RunDir (the tiny model must be in ``cache`` already)."""
    from tina_core.rundir import RunDir, list_run_dirs

    env = {**os.environ, "TINA_HOME": str(home), "TINA_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    args = [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), "run", str(TINY_RECIPE),
                           "--name", name, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    runs = list_run_dirs(home)
    log = runs[0].train_log.read_text()[-3000:] if runs and runs[0].train_log.exists() else ""
    assert proc.returncode == 0 and len(runs) == 1, (
        f"tina run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{log}")
    run: RunDir = runs[0]
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model, tiny_cache):
    """A finished short tiny run (``tina run recipes/tiny.yaml``, 6 steps, checkpoints 3 and 6),
    trained once per session: its RunDir, in a workspace of its own (``run.path.parent.parent``).
    Treat it as read-only; copy it to change it."""
    run = run_tiny_recipe(tmp_path_factory.mktemp("tiny-run-home"), tiny_cache, "tiny-shared", TINY_RUN_OVERRIDES)
    assert run.checkpoint_steps() == [3, 6], run.train_log.read_text()[-3000:]
    return run
