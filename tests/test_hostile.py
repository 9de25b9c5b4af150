"""Hostile files: what other people's logs and run directories can hold, and what tina does with it.

`tina import` reads files other people made, and a workspace may hold run directories copied from
elsewhere, so every byte in them is input. A line nested thousands deep is one malformed line; a
name holding terminal escapes is shown, never obeyed; a table too wide, a field too long or a
database that never ends is refused with a clear error and leaves nothing behind. Real `tina`
processes, a real index, real SQLite.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from test_cli import ROOT, tina
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


# --- files too big, too wide or never ending: refused clearly, nothing kept -------------------------
def _trackio(path, rows=(), *, view: bool = False, pad_mb: int = 0):
    """A trackio-shaped SQLite database: its metrics table (or a view of it that never ends)."""
    con = sqlite3.connect(path)
    if view:
        con.execute("CREATE VIEW metrics AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                    "SELECT 'r' AS run_name, x AS step, '{}' AS metrics FROM c")
    else:
        con.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY, timestamp TEXT, run_name TEXT, step INTEGER, "
                    "metrics TEXT)")
        con.executemany("INSERT INTO metrics (run_name, step, metrics) VALUES (?, ?, ?)", rows)
    if pad_mb:
        con.execute("CREATE TABLE padding (b BLOB)")
        con.executemany("INSERT INTO padding VALUES (zeroblob(1048576))", [()] * pad_mb)
    con.commit()
    con.close()
    return path


def _refused(home, path, *words: str) -> str:
    out = tina(home, "import", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert all(w in out.stderr for w in words), out.stderr
    assert json.loads(tina(home, "ls", "--json").stdout) == []  # nothing kept
    return out.stderr


def test_a_trackio_database_that_never_ends_or_names_no_run_is_refused(tmp_path):
    """Attack 7: a trackio database whose metrics is an endless recursive view hung `tina import`
    beyond Ctrl-C; rows with a NULL run name crashed it."""
    home = tmp_path / "home"
    _refused(home, _trackio(tmp_path / "endless.db", view=True), "SQLite steps", "a view that never ends",
             "nothing was imported")
    row = json.dumps({"train/global_step": 1, "train/rewards/format_reward/mean": 0.5})
    _refused(home, _trackio(tmp_path / "nameless.db", [(None, 1, row)]), "no run name (NULL)")
    # a named run beside such rows is read, and the rows left out are said
    out = tina(home, "import", str(_trackio(tmp_path / "mixed.db", [(None, 1, row), ("real", 1, row)])))
    assert out.returncode == 0 and "run real (1 rows; 1 rows without a run name left out)" in out.stdout, out.stderr


def test_ctrl_c_stops_a_trackio_read(tmp_path):
    """Attack 7: Ctrl-C during the read of a never-ending view (in a database big enough that its
    budget lasts) ends `tina import` at once, as any Ctrl-C does: exit 130, nothing kept."""
    home = tmp_path / "home"
    db = _trackio(tmp_path / "endless-big.db", view=True, pad_mb=64)
    proc = subprocess.Popen([sys.executable, "-m", "tina_core.cli", "--home", str(home), "import", str(db)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == str(db)  # the read is under way
                      for fd in os.listdir(f"/proc/{proc.pid}/fd")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not (home / "runs").exists() or [p for p in (home / "runs").iterdir() if p.name != ".importing"] == []


def test_a_csv_too_wide_or_with_a_field_too_long_is_refused_at_once(tmp_path):
    """Attack 7: one 200 MB field gave a raw traceback; 10^6 columns took 54 s and 2.5 GB and left
    21 MB in every later `tina ls --json`."""
    home = tmp_path / "home"
    long_field = tmp_path / "long-field.csv"
    with long_field.open("w") as f:
        f.write("step,reward\n1,0.5\n2,")
        for _ in range(200):
            f.write("9" * 1_000_000)
        f.write("\n")
    _refused(home, long_field, "long-field.csv, line 3", "field larger than field limit", "nothing was imported")
    wide = tmp_path / "wide.csv"
    columns = 1_000_000
    wide.write_text("step," + ",".join(f"m{i}" for i in range(columns - 1)) + "\n"
                    + "1," + ",".join(["0.5"] * (columns - 1)) + "\n")
    _refused(home, wide, "1,000,000 columns, more than the 10,000 metrics", "nothing was imported")


# --- the small ones ---------------------------------------------------------------------------------
def test_home_anywhere_on_the_line_and_never_a_file(tmp_path):
    """LOW: `tina ls --home DIR` was refused though the README says any command takes it, and
    `tina --home /etc/hostname ls` answered "no runs yet"."""
    home = tmp_path / "home"
    SyntheticRun("one-1", name="one", steps=20, stop_at_step=20).write(home)
    for args in (("ls", "--json", "--home", str(home)), ("ls", f"--home={home}", "--json"),
                 ("status", "--home", str(home), "one", "--json")):
        out = subprocess.run([sys.executable, "-m", "tina_core.cli", *args], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "TINA_HOME": str(tmp_path / "elsewhere")})
        assert out.returncode == 0 and "one-1" in out.stdout, (args, out.stderr)
    afile = tmp_path / "hostname"
    afile.write_text("box\n")
    for env, args in (({}, ("--home", str(afile), "ls")), ({"TINA_HOME": str(afile)}, ("report",))):
        out = subprocess.run([sys.executable, "-m", "tina_core.cli", *args], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, **env})
        assert out.returncode == 2 and f"the workspace {afile} is not a directory" in out.stderr, out.stderr


def test_a_reader_that_goes_away_ends_any_command_quietly(tmp_path):
    """LOW: `tina ls | head` (a reader that stops reading) gave a BrokenPipeError traceback."""
    home = tmp_path / "home"
    for i in range(3):
        SyntheticRun(f"run-{i}", name=f"run{i}", steps=40, stop_at_step=40, transition=20, seed=i).write(home)
    for args in (("ls",), ("ls", "--json"), ("status", "run1"), ("report",), ("report", "--md"), ("--help",),
                 ("watch", "run1")):
        proc = subprocess.Popen([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader is gone before a byte is written
        err = proc.stderr.read()
        proc.wait(60)
        assert proc.returncode in (1, 141) and "Traceback" not in err and "Exception ignored" not in err, (args, err)


def test_two_runs_of_one_name_are_shown_by_the_newest_and_never_acted_on_blindly(tmp_path):
    """LOW: with two runs of one name, `tina status` and `tina stop` silently picked one. Showing
    takes the newest and says which; acting (stop, resume, policy, eval) refuses, naming both ids."""
    home = tmp_path / "home"
    old = SyntheticRun("twin-1", name="twin", steps=20, stop_at_step=40, state="stopped").write(home)
    new = SyntheticRun("twin-2", name="twin", steps=20, stop_at_step=40, state="stopped",
                       start_ts=SyntheticRun.start_ts + 3600).write(home)
    out = tina(home, "status", "twin")
    assert out.returncode == 0 and out.stdout.startswith(new.run_id)
    assert f"2 runs are named 'twin': this is the newest, {new.run_id}" in out.stderr
    for args in (("stop", "twin"), ("resume", "twin"), ("policy", "twin", "--budget-usd", "5"),
                 ("eval", "twin", "--checkpoint", "base")):
        out = tina(home, *args)
        assert out.returncode == 2 and f"2 runs are named 'twin' ({new.run_id}, {old.run_id})" in out.stderr, \
            (args, out.stderr)
    assert [e["event"] for e in old.read_events()] == [e["event"] for e in new.read_events()]  # neither touched
    assert tina(home, "stop", old.run_id).returncode == 0  # its id says which


def test_imported_runs_odd_steps_diff_and_watch_say_what_they_mean(tmp_path):
    """LOW: an imported run showed `(None)` and `None at $0.0000/hour`; steps 1,3,3,2 dropped one
    without a word; `tina diff RUN /nonexistent.yaml` said "no run"; `tina watch RUN loss` took a
    signal no marker can come from."""
    home = tmp_path / "home"
    log = tmp_path / "odd.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": v, "rewards/format_reward/mean": v / 10}) + "\n"
                           for s, v in ((1, 1.0), (3, 3.0), (3, 3.5), (2, 2.0))))
    out = tina(home, "import", str(log), "--name", "odd")
    assert out.returncode == 0, out.stderr
    assert "the steps went back 1 time(s)" in out.stdout and "1 step(s) logged before it superseded" in out.stdout
    status = tina(home, "status", "odd").stdout
    assert "None" not in status and "(imported)" in status.splitlines()[0]
    assert "None" not in tina(home, "ls").stdout
    SyntheticRun("trained-1", name="trained", steps=20, stop_at_step=20).write(home)
    missing = tina(home, "diff", "trained", str(tmp_path / "nonexistent.yaml"))
    assert missing.returncode == 2 and "nonexistent.yaml: no such recipe file" in missing.stderr
    watch = tina(home, "watch", "odd", "loss")
    assert watch.returncode == 2 and "'loss' is not a signal the marker can watch" in watch.stderr
    assert "format_reward" in watch.stderr  # the candidates it could take


@pytest.mark.extended  # a dry run validates the recipe with TRL: the fast lane checks the settings themselves
def test_a_bad_alerts_section_is_said_at_launch(home, tiny_model):
    """LOW: a malformed `alerts:` (`webhook: ftp://x`) was said only in train.log."""
    (home / "config.yaml").write_text("alerts:\n  webhook: ftp://x\n")
    out = tina(home, "run", str(ROOT / "recipes" / "tiny.yaml"), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "tina: warning: alerts off:" in out.stderr and "alerts.webhook: expected an http(s) URL" in out.stderr


def test_a_stopped_trainer_shows_stalled_not_a_stale_eta(tmp_path):
    """LOW: while a trainer was stopped (SIGSTOP) its ETA stayed as the pace last said. Once no
    step has come for far longer than the pace (5 steps, a minute at least) the ETA is unknown."""
    from tina_core import runstate
    from tina_core.report.runs import describe
    from tina_core.rundir import write_json_atomic
    from tina_tui.widgets.runs_list import RunsTable

    home = tmp_path / "home"
    rd = SyntheticRun("live-1", name="live", steps=40, stop_at_step=100, state="running", step_s=1.0,
                      start_ts=1_800_000_000.0).write(home)
    last = 1_800_000_000.0 + 40

    def at(now: float) -> dict:
        write_json_atomic(rd.supervisor, runstate.heartbeat_record(pid=os.getpid(), started=now - 60, now=now,
                                                                   trainer_pid=os.getpid(), trainer_started=now - 60,
                                                                   attempt=1))
        return describe(home, rd, now=now)

    fresh = at(last + 2)
    assert fresh["state"] == "running" and fresh["eta_s"] == pytest.approx(60) and fresh["stalled_s"] is None
    stopped = at(last + 600)  # its supervisor beats on; the trainer logs nothing
    assert stopped["state"] == "running" and stopped["eta_s"] is None and stopped["stalled_s"] == pytest.approx(600)
    assert RunsTable.cells(stopped)[4].plain == "stalled?"
