"""A Hugging Face ``trainer_state.json`` (any TRL version, 0.14 to 1.x): its ``log_history`` entries,
one per logged step (``logging_steps`` apart) plus eval and summary entries, merged per step."""

from __future__ import annotations

from pathlib import Path

from tina_core.importer.records import Read, checked_step, merge, values
from tina_core.store.records import step_of
from tina_core.rundir import TinaError, parse_json

RUN_FIELDS = ("max_steps", "save_steps", "logging_steps", "num_train_epochs", "train_batch_size")


def read(path: Path) -> Read:
    try:
        state = parse_json(path.read_text(encoding="utf-8-sig", errors="replace"))
    except ValueError as e:
        raise TinaError(f"{path}: not valid JSON ({e})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise TinaError(f"{path}: expected a trainer_state.json with a 'log_history' list")
    rows, bad = [], 0
    for i, entry in enumerate(history):
        step = checked_step(path, f"log_history[{i}]", entry) if isinstance(entry, dict) else None
        if step is None:
            bad += 1
            continue
        rows.append((step, values(entry, ("step",))))
    extra = {k: state[k] for k in RUN_FIELDS if step_of(state.get(k)) is not None or
             isinstance(state.get(k), float) and k == "num_train_epochs"}
    every = f", logged every {state['logging_steps']} steps" if step_of(state.get("logging_steps")) else ""
    return Read("trainer_state", merge(rows), bad, extra, f"{len(history)} log_history entries{every}")
