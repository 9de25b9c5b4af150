"""Hostile files: what other people's logs and run directories can hold, and what tina does with it.

`tina import` reads files other people made, and a workspace may hold run directories copied from
elsewhere, so every byte in them is input. A line nested thousands deep is one malformed line; a
name holding terminal escapes is shown, never obeyed; a table too wide or a field too long is
refused with a clear error and leaves nothing behind. Real `tina` processes, a real index.
"""

from __future__ import annotations

import json

import pytest

from test_cli import tina
from tina_core.store.index import Store
from tina_tui.collector import Collector
from tina_tui.demo import SyntheticRun

DEEP = 2000  # Python's JSON parser gives up near 1000


def _deep_line(file: str) -> str:
    nested = "[" * DEEP + "]" * DEEP
    return (f'{{"step": 41, "attempt": 1, "loss": {nested}}}\n' if file == "metrics.jsonl"
            else f'{{"time": "2026-01-01T00:00:00+00:00", "ts": 1767225600.0, "event": "stalled", "x": {nested}}}\n')


def test_a_line_nested_2000_deep_is_quarantined_and_every_command_works(tmp_path):
    """Attack 2: one such line in any run's metrics.jsonl or events.jsonl took the whole
    workspace's index down (`RecursionError` was not a malformed line)."""
    home = tmp_path / "home"
    for seed, file in enumerate(("metrics.jsonl", "events.jsonl")):
        rd = SyntheticRun(f"deep-{seed}", name=f"deep-{seed}", steps=40, stop_at_step=40, transition=20,
                          seed=seed).write(home)
        with open(rd.path / file, "a") as f:  # a hostile line, written by hand
            f.write(_deep_line(file))
    SyntheticRun("fine-1", name="fine", steps=40, stop_at_step=40, transition=20, seed=2).write(home)
    for args in (("ls",), ("ingest",), ("ingest", "--rebuild"), ("status", "deep-1")):
        out = tina(home, *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    listed = json.loads(tina(home, "ls", "--json").stdout)
    assert [(r["name"], r["state"], r["step"]) for r in listed] == [
        ("deep-0", "finished", 40), ("deep-1", "finished", 40), ("fine", "finished", 40)]
    bad = Store(home).quarantine()
    assert [(b["run_id"], b["file"]) for b in bad] == [("deep-0", "metrics.jsonl"), ("deep-1", "events.jsonl")]
    assert all("nested too deeply" in b["reason"] for b in bad)
    # the cockpit's refresh: no error, and again (nothing left half done)
    collector = Collector(home)
    for selected in ("deep-0", "deep-1"):
        snap = collector.collect(selected)
        assert snap.error is None and snap.view is not None and len(snap.runs) == 3


class _FailsOnce(Store):
    """An index whose first ingest of events fails midway, inside its transaction (a failure of any
    kind the ingest does not expect)."""

    failed = False

    def _events_chunk(self, con, run_id, chunk, offset, fast):
        stats = super()._events_chunk(con, run_id, chunk, offset, fast)
        if not self.failed:
            self.failed = True
            raise RuntimeError("the disk went away")
        return stats


def test_a_failed_ingest_never_leaves_its_transaction_open(tmp_path):
    """The cockpit repeated "cannot start a transaction within a transaction" after one failed
    ingest: its refresh keeps one connection, and the failure left the transaction open."""
    home = tmp_path / "home"
    rd = SyntheticRun("one-1", name="one", steps=20, stop_at_step=20).write(home)
    store = _FailsOnce(home)
    with store.batch():  # one connection for both, as a cockpit refresh holds it
        with pytest.raises(RuntimeError, match="the disk went away"):
            store.ingest()
        stats = store.ingest()  # the same connection takes a new transaction
    assert stats.updated == 1 and store.quarantine() == []
    # every event exactly once: nothing of the failed attempt was kept
    assert store.query("SELECT count(*) FROM events")[0][0] == len(rd.read_events())
