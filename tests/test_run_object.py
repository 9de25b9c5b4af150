"""The run object is one typed thing (report.runs.RunObject) that `tina ls/status --json`, the
report and the cockpit share, and the cockpit reaches the store through real methods only."""

from __future__ import annotations

import ast
import json
import shutil
import typing
from pathlib import Path

from tina_core.report.runs import RunObject, describe
from tina_core.rundir import list_run_dirs
from tina_core.store.index import Store

from test_cli import RUN_FIELDS, tina

REPO = Path(__file__).resolve().parents[1]
# design.md's fields, and what `tina ls --json` printed before the run object had a type: kept
# (fields are added, never renamed)
LISTED_BEFORE = RUN_FIELDS | {
    "attempts", "cpu_hour_usd", "price_source", "usd_per_hour_now", "seconds_per_step", "eta_s",
    "best_evaluated_checkpoint", "recommendation_disagrees", "base", "evals_pending", "evaluations",
    "failure", "write_errors", "supervisor_pid", "imported", "path"}


def test_the_run_object_is_what_ls_status_and_describe_give(tiny_run, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_run.path.parent.parent, home)
    fields = set(typing.get_type_hints(RunObject))
    assert LISTED_BEFORE <= fields
    [listed] = json.loads(tina(home, "ls", "--json").stdout)
    status = json.loads(tina(home, "status", tiny_run.run_id, "--json").stdout)
    [rd] = list_run_dirs(home)
    described = describe(home, rd, Store(home))
    assert set(listed) == set(status) == set(described) == fields
    assert listed["state"] == "finished" and [c["step"] for c in listed["checkpoints"]] == [3, 6]


def _store_methods_named(path: Path) -> tuple[set[str], list[str]]:
    """(``Store.<name>`` attributes the file reads, calls that name a Store method by a string)."""
    methods = {n for n in dir(Store) if not n.startswith("__")}
    named, by_string = set(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Store":
            named.add(node.attr)
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if func in ("getattr", "ask", "_ask", "_store_call") and any(s in methods for s in strings):
                by_string.append(f"{path.name}:{node.lineno}")
    return named, by_string


def test_the_cockpit_and_the_run_object_call_real_store_methods():
    files = [*sorted((REPO / "tina_tui").rglob("*.py")), *sorted((REPO / "tina_core" / "report").glob("*.py"))]
    named, by_string = set(), []
    for path in files:
        n, s = _store_methods_named(path)
        named |= n
        by_string += s
    assert by_string == []
    assert {"ingest", "metric_series_many", "phase", "step_clock"} <= named  # the guard's callers found
    assert sorted(m for m in named if not callable(getattr(Store, m, None))) == []
