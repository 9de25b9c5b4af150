"""A damaged index ($TINA_HOME/tina.duckdb: garbage, cut short, or garbage inside): `tina ls`,
`tina status` and the cockpit's Collector still answer from the run directories and say how to
mend it, and `tina ingest --rebuild` does. Real `tina` processes on a run made by `tina import`."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from test_cli import ROOT, tina
from tina_core.rundir import iter_jsonl, list_run_dirs
from tina_tui.collector import Collector

DAMAGE = {
    "garbage": lambda good: os.urandom(len(good)),  # not a DuckDB file at all: refused on open
    "cut short": lambda good: good[: len(good) // 2],  # opens; fails where a read runs off the end
    "garbage inside": lambda good: good[: len(good) // 4] + os.urandom(len(good) // 4) + good[len(good) // 2:],
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A workspace with one imported run, its index and what `tina ls --json` says with it."""
    home = tmp_path_factory.mktemp("indexed")
    out = tina(home, "import", str(ROOT / "tests" / "data" / "tiny_run_metrics.jsonl"), "--name", "imported")
    assert out.returncode == 0, out.stderr
    listed = tina(home, "ls", "--json")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    return home, json.loads(listed.stdout)


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_index_is_answered_around_then_rebuilt(indexed, tmp_path, damage):
    good_home, expected = indexed
    home = tmp_path / "home"
    shutil.copytree(good_home, home)
    db = home / "tina.duckdb"
    db.write_bytes(DAMAGE[damage](db.read_bytes()))
    [run] = expected
    [rd] = list_run_dirs(home)
    last = [r["step"] for r in iter_jsonl(rd.metrics)][-1]  # what the run directory alone says

    listed = tina(home, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "showing run directories only" in listed.stderr and "try `tina ingest --rebuild`" in listed.stderr
    [got] = json.loads(listed.stdout)
    assert (got["run_id"], got["state"], got["step"]) == (run["run_id"], "finished", last)
    status = tina(home, "status", "imported", "--json")
    assert status.returncode == 0 and "try `tina ingest --rebuild`" in status.stderr
    assert json.loads(status.stdout)["step"] == last

    snap = Collector(home).collect(None)
    assert [(r["run_id"], r["state"], r["step"]) for r in snap.runs] == [(run["run_id"], "finished", last)]
    assert "try `tina ingest --rebuild`" in snap.error

    rebuilt = tina(home, "ingest", "--rebuild")
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("rebuilt 1 runs"), rebuilt.stderr
    listed = tina(home, "ls", "--json")
    assert listed.stderr == "" and json.loads(listed.stdout) == [{**run, "path": str(home / "runs" / run["run_id"])}]
    assert Collector(home).collect(None).error is None


UNUSABLE = {
    "empty": lambda db: db.write_bytes(b""),                         # the disk filled before its first write
    "a directory": lambda db: (db.mkdir(), (db / "x").write_text("x")),  # not a file at all
}


@pytest.mark.parametrize("unusable, by", [("empty", "tina ls"), ("empty", "the cockpit"),
                                          ("a directory", "tina ingest --rebuild"), ("a directory", "tina ls")])
def test_an_index_file_that_cannot_be_one_is_set_aside_and_built_again(indexed, tmp_path, unusable, by):
    """Attack 6: a 0-byte tina.duckdb left every listing without its phase until a rebuild, and
    one that is a directory crashed the rebuild itself. Any reader now renames it aside, says so,
    and builds the index again."""
    from tina_core.report import run_cache

    good_home, expected = indexed
    [run] = expected
    home = tmp_path / "home"
    shutil.copytree(good_home, home)
    run_cache.clear(home)  # the run is described from the index, not from the kept objects
    db = home / "tina.duckdb"
    db.unlink()
    UNUSABLE[unusable](db)
    if by == "the cockpit":
        snap = Collector(home).collect(None)
        said, got = " ".join(n.text for n in snap.notices), snap.runs[0]
        assert snap.error is None
    else:
        out = tina(home, *by.split()[1:]) if by != "tina ls" else tina(home, "ls", "--json")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        said = out.stderr
        got = json.loads(tina(home, "ls", "--json").stdout)[0]
    assert f"tina.duckdb was {unusable}" in said and "set aside as tina.duckdb.unusable-" in said
    [aside] = home.glob("tina.duckdb.unusable-*")
    assert aside.is_dir() == (unusable == "a directory")          # kept as it was, out of the way
    assert got["phase_transition"] == run["phase_transition"] and got["step"] == run["step"]
    assert db.is_file() and db.stat().st_size > 0
