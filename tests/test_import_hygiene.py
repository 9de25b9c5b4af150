"""Start-up stays light: the CLI and the cockpit never import the training stack, and the headless
core never imports Textual (invariant 4)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import import_graph  # noqa: E402

HEAVY = ["torch", "transformers", "trl", "peft", "datasets", "vllm", "lighteval", "deepspeed", "accelerate"]
REPO = Path(__file__).resolve().parents[1]


def _loaded_after(code: str, home: Path) -> set[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "TINA_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("argv", [["--help"], ["ls"], ["ls", "--json"]])
def test_cli_start_up_is_light(tmp_path, argv):
    code = (
        "import sys\nfrom tina_core import cli\n"
        f"sys.argv = ['tina', {', '.join(repr(a) for a in argv)}]\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
    )
    loaded = _loaded_after(code, tmp_path)
    assert _heavy(loaded) == []
    assert "textual" not in loaded


def test_tui_start_up_is_light(tmp_path):
    code = (
        "import asyncio\nfrom tina_core.rundir import tina_home\nfrom tina_tui.app import TinaApp\n"
        "async def go():\n"
        "    app = TinaApp(tina_home())\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await pilot.pause(0.5)\n"
        "asyncio.run(go())\n"
    )
    assert _heavy(_loaded_after(code, tmp_path)) == []


def test_core_never_imports_textual(tmp_path):
    # every module of the core (the __main__ entry points run when imported)
    modules = sorted(m for m in import_graph.modules() if m.startswith("tina_core") and not m.endswith("__main__"))
    code = "import importlib\n" + "".join(f"importlib.import_module('{m}')\n" for m in modules)
    loaded = _loaded_after(code, tmp_path)
    assert not any(m.split(".")[0] == "textual" for m in loaded)


def test_no_import_circles_and_no_upward_imports():
    """``python tests/import_graph.py`` prints the graph this reads."""
    edges = import_graph.graph()
    assert "tina_core.runstate" in edges and "tina_core.report.runs" in edges  # it sees the packages
    assert import_graph.problems(edges) == []


def test_readers_ask_the_run_state_module_never_a_daemon():
    edges = import_graph.graph()
    daemons = {"tina_core.supervise.supervisor", "tina_core.supervise.lifecycle", "tina_core.evaluate.worker",
               "tina_core.evaluate.job"}
    for reader in ("tina_core.report.runs", "tina_core.analysis.cost", "tina_core.report.table", "tina_tui.collector"):
        assert not edges[reader] & daemons, reader


def test_the_cockpit_opens_the_index_off_its_event_loop(tmp_path):
    # DuckDB's import is most of a second on a cold cache: the first refresh's worker thread pays
    # it while the first frame paints
    assert "duckdb" not in _loaded_after("import tina_tui.app", tmp_path)
