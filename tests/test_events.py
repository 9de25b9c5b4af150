"""events.py is the vocabulary of events.jsonl: ARCHITECTURE.md's event table says the same, every
writer goes through it, and the shared folds answer as their readers need."""

import json
import re
from pathlib import Path

import pytest

from tina_core import events
from tina_core.events import Kind
from tina_core.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def _table() -> dict[str, set[str]]:
    """``{kind: {field, ...}}`` from ARCHITECTURE.md's event table."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("### Events (", 1)[1].split("\n### ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    out = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        (kind,) = re.findall(r"`([a-z_]+)`", cells[0])
        assert kind not in out, f"{kind} documented twice"
        out[kind] = set(re.findall(r"`([a-z_]+)`", cells[1]))
    return out


def test_the_documented_kinds_are_the_kinds():
    documented = set(_table())
    assert sorted(set(Kind) - documented) == [], "kinds missing from ARCHITECTURE.md's event table"
    assert sorted(documented - set(Kind)) == [], "ARCHITECTURE.md documents kinds events.Kind does not have"


def test_every_kind_has_one_record_type_and_its_fields_are_documented():
    assert set(events.RECORD_TYPES) == set(Kind)
    table = _table()
    for kind in Kind:
        assert set(events.fields(kind)) == table[kind], kind
        assert {"time", "ts", "event"} <= events.RECORD_TYPES[kind].__required_keys__


def test_a_kind_is_written_as_its_name_and_a_typo_fails_at_once(tmp_path):
    rd = RunDir(tmp_path)
    rec = rd.event(Kind.FINISHED, step=3)
    assert json.loads(rd.events.read_text())["event"] == "finished" == rec["event"]
    rd.event("stopped", step=4)  # a string that names a kind is that kind
    with pytest.raises(ValueError, match="finishd"):
        rd.event("finishd", step=5)
    assert [e["event"] for e in rd.read_events()] == ["finished", "stopped"]  # nothing written for the typo
    assert events.kind_of({"event": "someday_new"}) is None and events.kind_of({}) is None


def _write(rd: RunDir, *kinds_and_fields) -> list[dict]:
    for kind, fields in kinds_and_fields:
        rd.event(kind, **fields)
    return rd.read_events()


def test_since_start_keeps_each_readers_meaning(tmp_path):
    evs = _write(RunDir(tmp_path),
                 (Kind.LAUNCHED, {"gpus": 0}), (Kind.SUPERVISOR_STARTED, {"pid": 11, "resume": False}),
                 (Kind.STOPPED, {"step": 3, "by": "budget_usd"}),
                 (Kind.SUPERVISOR_STARTED, {"pid": 22, "resume": True}), (Kind.STOP_REQUESTED, {"by": "tina stop"}),
                 (Kind.LAUNCHED, {"gpus": 0}))
    # the stop figures: from the last supervisor start; a later `launched` is not one
    start, since = events.since_start(evs)
    assert start["pid"] == 22 and [e["event"] for e in since] == ["stop_requested", "launched"]
    # the run's state: a `launched` counts (created, its supervisor not up yet)
    start, since = events.since_start(evs, launched=True)
    assert events.is_kind(start, Kind.LAUNCHED) and since == []
    # a supervisor: from its own start only; none yet recorded -> no start
    start, since = events.since_start(evs, pid=11)
    assert start["pid"] == 11 and events.last_of(since, *events.RUN_ENDED)["step"] == 3
    assert events.since_start(evs, pid=33)[0] is None
    assert events.since_start([])[0] is None


def test_open_attempts_marker_and_gpus(tmp_path):
    evs = _write(RunDir(tmp_path),
                 (Kind.ATTEMPT_STARTED, {"attempt": 1, "gpus": 2}), (Kind.ATTEMPT_EXITED, {"attempt": 1}),
                 (Kind.ATTEMPT_STARTED, {"attempt": 2, "gpus": 2}),
                 (Kind.TRANSITION, {"status": "tentative", "step": 8}),
                 (Kind.TRANSITION, {"status": "confirmed", "step": 8}),
                 (Kind.EVAL_STARTED, {"eval_id": "e", "gpus": [0, 1, 2]}))
    assert events.open_attempts(evs) == [2]
    assert events.marker(evs)["status"] == "confirmed"
    assert events.marker(evs + [{"event": "transition", "status": "rejected", "step": 8}]) is None
    assert [events.gpu_count(e) for e in events.of_kind(evs, Kind.ATTEMPT_STARTED, Kind.EVAL_STARTED)] == [2, 2, 3]
