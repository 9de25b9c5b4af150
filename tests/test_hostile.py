"""Hostile files: what other people's logs and run directories can hold, and what tina does with it.

`tina import` reads files other people made, and a workspace may hold run directories copied from
elsewhere, so every byte in them is input. A line nested thousands deep is one malformed line; a
name holding terminal escapes is shown, never obeyed; a table too wide or a field too long is
refused with a clear error and leaves nothing behind. Real `tina` processes, a real index.
"""

from __future__ import annotations

import csv
import io
import json
import re

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


# --- terminal escapes: shown, never obeyed ----------------------------------------------------------
TITLE = "\x1b]0;pwned\x07"          # sets the terminal's title
CLIPBOARD = "\x1b]52;c;cHduZWQ=\x07"  # OSC 52: writes the clipboard
CLEAR = "\x1b[2J"                    # blanks the screen
ESCAPES = (TITLE, CLIPBOARD, CLEAR)
CONTROL = ("\x1b", "\x07", "\x9b")


def hostile_csv(path, steps: int = 60):
    """A W&B-style export whose reward name and run name carry every escape; format turns at 30."""
    reward = f"hostile{TITLE}run - rewards/{CLIPBOARD}format_reward{CLEAR}/mean"
    rows = [f"{s},{0.1 if s < 30 else 0.9},{0.5}" for s in range(1, steps + 1)]
    path.write_text("\n".join([f"Step,{reward},hostile{TITLE}run - loss{CLEAR}", *rows]) + "\n")
    return path


def _no_control(text: str, where: str) -> None:
    assert not any(c in text for c in CONTROL), f"{where}: {text!r}"


def test_escapes_in_names_and_keys_are_written_out_in_every_text_output(tmp_path):
    """Attack 1: a reward name, a run name or a CSV header holding ESC sequences set the terminal's
    title, wrote its clipboard or cleared it through every command; `--json` escapes them already.
    A name with `|` or a newline forged rows of `report --md` (and of every table)."""
    home = tmp_path / "home"
    name = f"ev{TITLE}il | x\n| forged | row |{CLEAR}"
    out = tina(home, "import", str(hostile_csv(tmp_path / "export.csv")), "--name", name)
    assert out.returncode == 0, out.stderr
    outputs = {"import": out.stdout + out.stderr}
    [run_id] = [p.name for p in (home / "runs").iterdir() if not p.name.startswith(".")]
    for args in (("ls",), ("status", "ev"), ("watch", "ev"), ("report",), ("report", "--md"),
                 ("report", "--csv")):
        got = tina(home, *(run_id if a == "ev" else a for a in args))
        assert got.returncode == 0, (args, got.stderr)
        outputs[" ".join(args)] = got.stdout + got.stderr
    for where, text in outputs.items():
        _no_control(text, where)
        assert "\\x1b]" in text, where  # shown, written out
    assert "\\x1b]52;c;cHduZWQ=\\x07format_reward\\x1b[2J" in outputs["status ev"]
    # one line per run under the header: a newline in a name starts no row
    assert len(outputs["ls"].splitlines()) == 2
    # every row of every Markdown table has as many cells as its header
    for table in outputs["report --md"].split("### ")[1:]:
        rows = [ln for ln in table.splitlines() if ln.startswith("|")]
        cells = [len(re.split(r"(?<!\\)\|", ln)) for ln in rows]
        assert len(set(cells)) <= 1, table
    # the CSV parses to rows of the header's width, the name in one cell
    parsed = list(csv.reader(io.StringIO(outputs["report --csv"])))
    assert len({len(r) for r in parsed}) == 1
    assert [r[1] for r in parsed if r[0] == "ours"] == ["ev\\x1b]0;pwned\\x07il | x\\n| forged | row |\\x1b[2J"]
    # --json keeps the text as it is (its encoder escapes the control characters)
    [run] = json.loads(tina(home, "ls", "--json").stdout)
    assert run["name"] == name and any(CLIPBOARD in k for k in run["last_metrics"])
