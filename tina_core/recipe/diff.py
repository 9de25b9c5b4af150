"""What differs between runs: the resolved-recipe keys whose values are not the same in all of them.

An ablation study is twenty runs that differ in one or two settings; this names those settings and
nothing else. Each side is a run's recipe snapshot (``RUN_DIR/recipe.yaml``, what actually ran) or
a recipe file resolved as ``tina run --dry-run`` resolves it (``extends`` merged, paths absolute),
so a planned run can be compared with finished ones. Light: yaml only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tina_core.rundir import RunDir, RunInfo, TinaError, find_run
from tina_core.terminal import printable

# Labels, not settings: they differ between any two runs and say nothing about the ablation.
LABEL_KEYS = frozenset({"name", "description"})


class _Absent:
    """A key one side does not set (distinct from a key set to null)."""

    def __repr__(self) -> str:
        return "(unset)"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Side:
    """One thing compared: a run or a recipe file, and its resolved recipe."""

    label: str             # the run's name, or the recipe file's stem
    ref: str               # what was asked for
    run_id: str | None     # None for a recipe file
    recipe: dict[str, Any]


@dataclass(frozen=True)
class KeyDiff:
    key: str                    # dotted: lora.r, grpo.learning_rate, rewards.accuracy
    values: tuple[Any, ...]     # one per side, ABSENT where a side does not set it


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 32}}`` -> ``{"lora.r": 32}``; lists stay whole values, an empty mapping is a value."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differing(recipes: Sequence[dict[str, Any]]) -> list[KeyDiff]:
    """The keys whose values are not the same in every recipe, in the order the recipes name them
    (the first recipe's order, then keys only later ones set)."""
    flat = [flatten(r) for r in recipes]
    keys = list(dict.fromkeys(k for f in flat for k in f if k not in LABEL_KEYS))
    out = []
    for k in keys:
        values = tuple(f.get(k, ABSENT) for f in flat)
        if any(not _same(values[0], v) for v in values[1:]):
            out.append(KeyDiff(k, values))
    return out


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same setting, True and 1 are not
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def run_side(rd: RunDir, ref: str | None = None) -> Side:
    """A run's side: its recipe snapshot, what actually ran."""
    from tina_core.recipe.loader import parse_yaml

    info = RunInfo.read(rd)
    name = info.name or rd.run_id
    try:
        data = parse_yaml(rd.recipe.read_text())
    except FileNotFoundError:
        raise TinaError(f"run {name} ({rd.run_id}) has no recipe snapshot"
                        + (" (it was imported)" if info.imported else "")) from None
    if not isinstance(data, dict):
        raise TinaError(f"{rd.recipe}: not a recipe (a YAML mapping)")
    return Side(name, ref or rd.run_id, rd.run_id, data)


def load_side(home: Path, ref: str) -> Side:
    """A run (id, id prefix or name) or, when ``ref`` is a YAML file, the recipe it resolves to."""
    from tina_core.recipe.loader import load_recipe, parse_yaml

    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():  # a recipe file meant, not a run's name
            raise TinaError(f"{ref}: no such recipe file" + (" (it is a folder)" if path.is_dir() else ""))
        recipe = load_recipe(path)
        return Side(path.stem, ref, None, parse_yaml(recipe.to_yaml()) or {})
    return run_side(find_run(home, ref), ref)


def diff_refs(home: Path, refs: Sequence[str]) -> tuple[list[Side], list[KeyDiff]]:
    if len(refs) < 2:
        raise TinaError("tina diff needs two runs (or recipe files) at least")
    sides = [load_side(home, r) for r in refs]
    return sides, differing([s.recipe for s in sides])


def show_value(v: Any) -> str:
    """A value as the table prints it: YAML-like scalars, flow-style lists and mappings."""
    if v is ABSENT:
        return "(unset)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(show_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {show_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def as_json(sides: Sequence[Side], diffs: Sequence[KeyDiff]) -> dict[str, Any]:
    """``{"runs": [...], "keys": [{"key", "values", "unset"}]}``: ``values`` one per run (null where
    unset), ``unset`` the indices of the runs that do not set the key."""
    return {
        "runs": [{"ref": s.ref, "name": s.label, "run_id": s.run_id} for s in sides],
        "keys": [{"key": d.key, "values": [None if v is ABSENT else v for v in d.values],
                  "unset": [i for i, v in enumerate(d.values) if v is ABSENT]} for d in diffs],
    }


def labels(sides: Sequence[Side]) -> list[str]:
    """Column titles: each side's name, or its run id where two share a name."""
    names = [s.label for s in sides]
    return [s.run_id or s.ref if names.count(s.label) > 1 else s.label for s in sides]


def render_text(sides: Sequence[Side], diffs: Sequence[KeyDiff]) -> str:
    if not diffs:
        return f"the {len(sides)} recipes are the same (apart from name and description)\n"
    # keys, values and names from the runs' files, written out (tina_core.terminal)
    head = list(map(printable, ["key", *labels(sides)]))
    rows = [list(map(printable, [d.key, *map(show_value, d.values)])) for d in diffs]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]) + "\n"
