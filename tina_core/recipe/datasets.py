"""Training data: a recipe's ``dataset:`` section -> a dataset of chat prompts and gold answers.

The section::

    dataset:
      name: knoveleng/open-rs      # HF hub id, or a local .jsonl/.json/.parquet file or a folder of them
      config: null                 # hub config name
      split: train
      mapping: default             # default | deepscaler | ii_thought | {problem: COL, answer: COL}
                                   #   ({problem: COL, solution: COL} takes the gold as is)
      system_prompt: null          # open_rs | open_r1 | none | a literal prompt (default: Tina's rule)
      max_prompt_tokens: 512       # drop longer prompts (TRL 1.x has no max_prompt_length)
      limit: null                  # first N rows only
      shuffle_seed: null

The column rules are Tina's (``grpo.py``): an ``answer`` column becomes the gold wrapped in ``$...$``
when there is no ``solution`` column; ``question``/``prompt`` become the problem; DeepScaleR's gold is
its ``answer`` wrapped (its ``solution`` is a worked solution); II-Thought's problem is
``messages[0].content`` and its gold ``json(verification_info).answer.value`` wrapped. Tina dropped
``messages`` before reading it for II-Thought; here it is read first, as intended.

``datasets`` is imported only inside ``prepare_dataset``: the checks and ``dataset_size`` are light
enough for the CLI.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tina_core.recipe.prompts import system_prompt_for
from tina_core.rundir import TinaError

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
MAPPING_PRESETS = ("default", "deepscaler", "ii_thought")
SECTION_KEYS = ("name", "config", "split", "mapping", "system_prompt", "max_prompt_tokens", "limit", "shuffle_seed")


@dataclass(frozen=True)
class KnownDataset:
    rows: int  # train split, as Tina's constant.py gives it (rounded there)
    mapping: str = "default"
    config: str | None = None


# Tina's hub datasets (tina-recipe.md section 3), for "% of an epoch" without downloading anything.
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "RUC-AIBOX/STILL-3-Preview-RL-Data": KnownDataset(33_000),
    "agentica-org/DeepScaleR-Preview-Dataset": KnownDataset(40_300, "deepscaler"),
    "knoveleng/open-s1": KnownDataset(18_600),
    "knoveleng/open-rs": KnownDataset(7_000),
    "Intelligent-Internet/II-Thought-RL-v0-Math-50K": KnownDataset(53_300, "ii_thought"),
    "GAIR/LIMR": KnownDataset(1_390),
    "open-r1/OpenR1-Math-220k": KnownDataset(93_700, config="default"),
    "bethgelab/CuratedThoughts": KnownDataset(66_100, config="OpenThoughts-114k-math-default"),
}


def _wrap(value: Any) -> str:
    return f"${value}$"


# --- the section ---------------------------------------------------------------------------------
def check_section(section: dict) -> dict:
    """The section with defaults filled in; raises TinaError naming the bad key and what was expected."""
    if not isinstance(section, dict):
        raise TinaError(f"dataset: expected a mapping with at least 'name', got {section!r}")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise TinaError(f"dataset: unknown key(s) {unknown}; valid keys: {list(SECTION_KEYS)}")
    s = {"config": None, "split": "train", "system_prompt": None, "max_prompt_tokens": None, "limit": None,
         "shuffle_seed": None, **section}
    if not isinstance(s.get("name"), str) or not s["name"].strip():
        raise TinaError("dataset.name: expected a hub dataset id or a local file/folder path")
    for key in ("config", "system_prompt"):
        if s[key] is not None and not isinstance(s[key], str):
            raise TinaError(f"dataset.{key}: expected a string, got {s[key]!r}")
    if not isinstance(s["split"], str):
        raise TinaError(f"dataset.split: expected a string, got {s['split']!r}")
    for key, least in (("max_prompt_tokens", 1), ("limit", 1), ("shuffle_seed", 0)):
        v = s[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
            raise TinaError(f"dataset.{key}: expected an integer >= {least}, got {v!r}")
    mapping = s.get("mapping")
    if mapping is None:
        known = KNOWN_DATASETS.get(s["name"])
        s["mapping"] = known.mapping if known else "default"
    elif isinstance(mapping, str):
        if mapping not in MAPPING_PRESETS:
            raise TinaError(f"dataset.mapping: unknown preset {mapping!r}; expected one of {list(MAPPING_PRESETS)} "
                            "or {problem: COLUMN, answer: COLUMN}")
    elif isinstance(mapping, dict):
        keys = set(mapping)
        if "problem" not in keys or len(keys & {"answer", "solution"}) != 1 or keys - {"problem", "answer", "solution"}:
            raise TinaError(f"dataset.mapping: expected {{problem: COLUMN, answer: COLUMN}} (gold wrapped in $...$) "
                            f"or {{problem: COLUMN, solution: COLUMN}} (gold as is), got {mapping!r}")
        if not all(isinstance(v, str) for v in mapping.values()):
            raise TinaError(f"dataset.mapping: column names must be strings, got {mapping!r}")
    else:
        raise TinaError(f"dataset.mapping: expected a preset name or a mapping, got {mapping!r}")
    return s


def local_path(name: str) -> Path | None:
    """The local file/folder ``name`` points to; None for a hub id. A path-like name that does not
    exist is an error, not a hub lookup."""
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if name.endswith(DATA_SUFFIXES) or name.startswith(("/", "./", "../", "~")):
        raise TinaError(f"dataset.name: local dataset not found: {path}")
    return None


def _data_files(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    # The datasets library's convention: files named after a split belong to it; otherwise all are train.
    named = [p for p in files if split in p.name]
    return named or (files if split == "train" else [])


def _count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return len(data)
    raise TinaError(f"dataset {path}: expected a JSON list of records")


def dataset_size(section: dict) -> int | None:
    """Rows a run will see (before the prompt-length filter): counted for local data, Tina's figure for
    her hub datasets, None when unknown."""
    s = check_section(section)
    path = local_path(s["name"])
    if path is not None:
        files = _data_files(path, s["split"]) if path.is_dir() else [path]
        n = sum(_count_rows(p) for p in files)
    else:
        known = KNOWN_DATASETS.get(s["name"])
        if known is None or s["split"] != "train" or s["config"] not in (None, known.config):
            return None
        n = known.rows
    return min(n, s["limit"]) if s["limit"] else n


# --- loading and mapping -------------------------------------------------------------------------
def _read_file(path: Path) -> list[dict]:
    """Records of one local file. Read here rather than by ``datasets`` so a bad line is reported by
    number and a column mixing numbers and strings (common for answers) is not an error."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:
            raise TinaError(f"dataset {path}: not a readable parquet file ({e})") from e
    if path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TinaError(f"dataset {path}, line {n}: invalid JSON ({e.msg})") from e
    else:
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TinaError(f"dataset {path}: invalid JSON at line {e.lineno} ({e.msg})") from e
        if not isinstance(records, list):
            raise TinaError(f"dataset {path}: expected a JSON list of records, got {type(records).__name__}")
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise TinaError(f"dataset {path}: record {n} is {type(r).__name__}, expected an object")
    return records


def _load(s: dict) -> tuple[list[str], Any]:
    """(columns, rows) of the section's split, at most ``limit`` rows; rows are dicts."""
    path = local_path(s["name"])
    limit = s["limit"]
    if path is None:
        import datasets

        try:
            ds = datasets.load_dataset(s["name"], s["config"], split=s["split"])
        except Exception as e:
            raise TinaError(f"dataset {s['name']} (Hugging Face hub): could not load config {s['config']!r} "
                            f"split {s['split']!r}: {type(e).__name__}: {e}") from e
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        return list(ds.column_names), ds
    if path.is_dir():
        files = _data_files(path, s["split"])
        if not files:
            raise TinaError(f"dataset {path}: no {'/'.join(DATA_SUFFIXES)} files for split {s['split']!r}")
    elif path.suffix in DATA_SUFFIXES:
        files = [path]
    else:
        raise TinaError(f"dataset {path}: expected a {', '.join(DATA_SUFFIXES)} file or a folder of them")
    records = [r for f in files for r in _read_file(f)][:limit]
    return list(dict.fromkeys(k for r in records for k in r)), records


def _need(columns: list[str], wanted: list[str], what: str, name: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise TinaError(f"dataset {name}: {what} needs column(s) {missing}; the columns are {columns}")


def _row_mapper(mapping, columns: list[str], name: str):
    """A function row -> (problem, gold) implementing the mapping, after checking the columns exist."""
    if isinstance(mapping, dict):
        p_col = mapping["problem"]
        g_col, wrap = (mapping["answer"], True) if "answer" in mapping else (mapping["solution"], False)
        _need(columns, [p_col, g_col], f"mapping {mapping}", name)
        return lambda r: (r.get(p_col), None if r.get(g_col) is None else (_wrap(r.get(g_col)) if wrap else str(r.get(g_col))))
    if mapping == "deepscaler":
        _need(columns, ["problem", "answer"], "the deepscaler mapping", name)
        return lambda r: (r.get("problem"), None if r.get("answer") is None else _wrap(r["answer"]))
    if mapping == "ii_thought":
        _need(columns, ["messages", "verification_info"], "the ii_thought mapping", name)

        def ii_thought(r):
            messages, info = r.get("messages"), r.get("verification_info")
            if not messages or info is None:
                return None, None
            try:
                info = json.loads(info) if isinstance(info, str) else info
                return messages[0]["content"], _wrap(info["answer"]["value"])
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise TinaError(f"dataset {name}: expected messages[0].content and a JSON verification_info "
                                f"with answer.value, got {type(e).__name__}: {e}") from e

        return ii_thought
    # default: Tina's generic rules
    problem = next((c for c in ("problem", "question", "prompt") if c in columns), None)
    if problem is None:
        raise TinaError(f"dataset {name}: no problem column (expected 'problem', 'question' or 'prompt'); "
                        f"the columns are {columns}")
    if "solution" in columns:
        return lambda r: (r.get(problem), None if r.get("solution") is None else str(r["solution"]))
    if "answer" in columns:
        return lambda r: (r.get(problem), None if r.get("answer") is None else _wrap(r["answer"]))
    raise TinaError(f"dataset {name}: no gold column (expected 'solution' or 'answer'); the columns are {columns}")


def _problems_and_golds(s: dict) -> tuple[list[tuple[str, str]], int]:
    """``([(problem, gold)], rows read)`` of a checked section: rows without a problem or gold
    are left out; an empty split or a missing column raises TinaError."""
    name = s["name"]
    columns, rows = _load(s)
    if len(rows) == 0:
        raise TinaError(f"dataset {name} (split {s['split']!r}) is empty")
    row = _row_mapper(s["mapping"], columns, name)
    pairs, total = [], 0
    for r in rows:
        total += 1
        problem, gold = row(r)
        if isinstance(problem, str) and problem.strip() and gold is not None:
            pairs.append((problem, gold))
    if not pairs:
        raise TinaError(f"dataset {name} (split {s['split']!r}): no usable rows ({total} read, none with "
                        "both a problem and a gold answer)")
    return pairs, total


def check_local_data(section: dict) -> int | None:
    """Local data read as the trainer will read it, before anything is launched: a malformed or
    empty file or a missing column is a TinaError now, not a failed run. Returns the usable rows
    (before the prompt-length filter, which needs the tokenizer); None for hub data."""
    s = check_section(section)
    if local_path(s["name"]) is None:
        return None
    return len(_problems_and_golds(s)[0])  # `limit` applied as it is read


def prepare_dataset(section: dict, tokenizer=None):
    """A ``datasets.Dataset`` with ``prompt`` (system + user chat messages) and ``solution`` (gold).

    Rows without a problem or gold are dropped, and so are prompts longer than ``max_prompt_tokens``
    under the tokenizer's chat template (the tokenizer is needed then); both are counted in the log.
    """
    import datasets

    s = check_section(section)
    if s["max_prompt_tokens"] and tokenizer is None:
        raise ValueError("dataset.max_prompt_tokens needs the tokenizer to count prompt tokens")
    name = s["name"]
    pairs, total = _problems_and_golds(s)
    system = system_prompt_for(name, s["system_prompt"])
    head = [{"role": "system", "content": system}] if system is not None else []
    records = [{"prompt": head + [{"role": "user", "content": p}], "solution": g} for p, g in pairs]
    if len(records) < total:
        log.warning("dataset %s: dropped %d of %d rows without a problem or gold answer", name, total - len(records), total)
    if records and s["max_prompt_tokens"]:
        records = _drop_long_prompts(records, tokenizer, s["max_prompt_tokens"], name)
    if not records:
        raise TinaError(f"dataset {name} (split {s['split']!r}): no usable rows ({total} read)")
    ds = datasets.Dataset.from_list(records)
    return ds if s["shuffle_seed"] is None else ds.shuffle(seed=s["shuffle_seed"]).flatten_indices()


def _drop_long_prompts(records: list[dict], tokenizer, max_tokens: int, name: str) -> list[dict]:
    from tina_core.recipe.prompts import REASON_CHAT_TEMPLATE

    template = None if getattr(tokenizer, "chat_template", None) else REASON_CHAT_TEMPLATE
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True, chat_template=template)
             for r in records]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [r for r, n in zip(records, lengths) if n <= max_tokens]
    if len(kept) < len(records):
        log.warning("dataset %s: dropped %d of %d prompts longer than %d tokens",
                    name, len(records) - len(kept), len(records), max_tokens)
    return kept
