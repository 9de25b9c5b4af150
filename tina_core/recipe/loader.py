"""Recipes: YAML files that say everything a run needs (model, LoRA, GRPO, data, rewards, launch).

A recipe may ``extends`` a base recipe (deep-merged, child wins, chains allowed) and is then
adjusted with ``--set a.b=value`` overrides (values parsed as YAML). ``load_recipe`` checks tina's
own sections cheaply; ``tina_core.recipe.configs.validate_recipe`` builds the real
``trl.GRPOConfig`` and ``peft.LoraConfig`` so a bad key fails before any process starts.

Light at import time (only yaml): the CLI and the TUI import this at start-up.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from tina_core.credentials import MASK, is_secret_name, redact, remember_secrets, secret_fields
from tina_core.rundir import TinaError


class RecipeError(TinaError):
    """A recipe problem; the message names the file, the key path and what was expected."""


REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO_ROOT / "recipes"
ACCELERATE_DIR = RECIPES_DIR / "accelerate"
DEFAULT_ACCELERATE_CONFIG = "zero2.yaml"
CPU_RANKS_ACCELERATE_CONFIG = "cpu_ranks.yaml"  # launch.processes > 1 on a CPU box


# PyYAML follows YAML 1.1, where `1e-6` (no dot) is a string: learning rates would silently become
# text. This loader reads any float literal as a float. libyaml's parser where PyYAML has it: every
# `tina ls` reads each run's recipe snapshot, ~10x faster so.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # a base chosen at import
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


# --- tina's own sections -----------------------------------------------------------------------
# key -> expected type(s); a nested dict is a section whose keys are checked in turn. `grpo` and
# `lora` are checked against the real GRPOConfig / LoraConfig in validate_recipe.
_NUM = (int, float)
SCHEMA: dict[str, Any] = {
    "extends": str,
    "name": str,
    "description": str,
    "model": {"name_or_path": str, "dtype": str, "attn_implementation": (str, type(None)),
              "tiny": dict},
    "lora": dict,
    "grpo": dict,
    "dataset": {"name": str, "config": (str, type(None)), "split": str, "mapping": (str, dict),
                "system_prompt": (str, type(None)), "max_prompt_tokens": (int, type(None)),
                "limit": (int, type(None)), "shuffle_seed": (int, type(None))},
    "rewards": dict,
    "reward_options": dict,  # checked by rewards.resolve_options
    "stop_at_step": int,
    # the stop policy (tina_core.analysis.policy) and the snapshot ring (tina_core.train.snapshots)
    "stop": {"after_transition": (int, type(None)), "budget_usd": (_NUM + (type(None),)), "ring": int,
             "evaluate": bool},
    "launch": {"gpus": int, "processes": int, "accelerate_config": (str, type(None)), "main_process_port": int,
               "num_machines": int, "machine_rank": int, "main_process_ip": str, "env": dict,
               "max_restarts": int, "stop_timeout_s": _NUM},
    "price": {"gpu_hour_usd": (_NUM + (type(None),)), "cpu_hour_usd": (_NUM + (type(None),))},
    "divergences": dict,  # name -> what differs from how Tina ran, and why (documentation, printed by --dry-run)
    # the signals the phase marker comes from (reward names, metric keys, `length`), or `auto`
    "watch": (list, str),
}
TINY_MODEL = "tiny"  # model.name_or_path of the locally built tiny model
# Where tina's own numbers must lie (inclusive; None: unbounded). Every number of tina's sections
# must also be finite: an infinite price would make every cost Infinity, which JSON cannot say.
RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "stop_at_step": (1, None, "a step >= 1"),
    "launch.gpus": (0, None, "a GPU count >= 0 (0: CPU)"),
    "launch.num_machines": (1, None, "a machine count >= 1"),
    "launch.machine_rank": (0, None, "a rank >= 0"),
    "launch.main_process_port": (1, 65535, "a port 1..65535"),
    "launch.max_restarts": (0, None, "a count >= 0"),
    "launch.stop_timeout_s": (0, None, "seconds >= 0"),
    "price.gpu_hour_usd": (0, None, "dollars >= 0"),
    "price.cpu_hour_usd": (0, None, "dollars >= 0"),
    # the stop policy's (also what `tina policy` and the cockpit's `p` take): Tina's runs are 850 to
    # 3,750 steps; a ring of adapters is a few dozen, each up to 148 MB
    "stop.after_transition": (0, 100_000, "a number of steps 0..100000"),
    "stop.budget_usd": (0, 10_000_000, "dollars > 0, at most 10,000,000"),
    "stop.ring": (0, 1000, "a number of snapshots 0..1000 (0: no ring)"),
}


def _type_name(t: Any) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", bool: "true/false",
             list: "a list", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in ts))


def _isinstance(value: Any, t: Any) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in ts:
        return False
    return isinstance(value, ts)


def suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_section(data: dict, schema: dict, where: str, prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise RecipeError(f"{where}: {path}: unknown key{suggest(str(key), list(schema))}; "
                              f"expected one of: {', '.join(schema)}")
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: {path}: expected a mapping, got {value!r}")
            _check_section(value, expected, where, path + ".")
        elif not _isinstance(value, expected):
            raise RecipeError(f"{where}: {path}: expected {_type_name(expected)}, got {shown_value(key, value)}")
    if prefix == "" and isinstance(data.get("divergences"), dict):
        for k, text in data["divergences"].items():
            if not isinstance(text, str):
                raise RecipeError(f"{where}: divergences.{k}: expected a string (what differs from Tina, and why), "
                                  f"got {text!r}")
    if prefix == "" and "watch" in data:
        w = data["watch"]
        if w != "auto" and not (isinstance(w, list) and w and all(isinstance(x, str) and x.strip() for x in w)):
            raise RecipeError(f"{where}: watch: expected `auto` or a list of signal names (reward names like "
                              f"strict_format_reward_func, metric keys, length), got {w!r}")
    if prefix == "" and isinstance(data.get("stop"), dict):
        if data["stop"].get("budget_usd") == 0:  # RANGES bound the rest; a budget of nothing is none
            raise RecipeError(f"{where}: stop.budget_usd: expected {RANGES['stop.budget_usd'][2]}, got 0")
    if prefix == "" and "rewards" in data:
        for k, w in data["rewards"].items():
            if not _isinstance(w, _NUM) or not math.isfinite(w):
                raise RecipeError(f"{where}: rewards.{k}: expected a number (the reward's weight), got {w!r}")
    if prefix == "":
        _check_ranges(data, where)


def _check_ranges(data: dict, where: str) -> None:
    """tina's own numbers (not grpo's or lora's) finite and within ``RANGES`` (types checked already)."""
    found = []
    for key, expected in SCHEMA.items():
        value = data.get(key)
        if isinstance(expected, dict) and isinstance(value, dict):
            found += [(f"{key}.{k}", v) for k, v in value.items() if expected.get(k) is not dict]
        elif expected is not dict:
            found.append((key, value))
    for path, value in found:
        if not _isinstance(value, _NUM):
            continue
        lo, hi, what = RANGES.get(path, (None, None, "a finite number"))
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise RecipeError(f"{where}: {path}: expected {what}, got {value!r}")


def shown_value(key: Any, value: Any) -> str:
    """A value as an error message may quote it: a credential's never."""
    return MASK if is_secret_name(str(key)) else repr(value)


def deep_merge(base: dict, child: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"{path}: extends loops back: " + " -> ".join(str(p) for p in chain + (path,)))
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        where = f"{chain[-1]}: extends" if chain else "recipe"
        raise RecipeError(f"{where}: no such file {path}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    _absolutise(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: extends: expected a relative path to a base recipe, got {parent!r}")
    return deep_merge(_read(path.parent / parent, chain + (path,)), data)


def apply_override(data: dict, override: str, where: str = "--set") -> None:
    """Apply one ``a.b.c=value`` override in place (value parsed as YAML: 5e-4, true, [a, b])."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    shown = masked_override(override)
    if not sep or not key or any(not p for p in key.split(".")):
        raise RecipeError(f"{where} {shown!r}: expected key.path=value, e.g. grpo.learning_rate=5e-4")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"{where} {shown!r}: value is not valid YAML"
                          + ("" if shown != override else f": {e}")) from None
    node = data
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise RecipeError(f"{where} {shown!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~"))


def _absolutise(data: dict, base: Path) -> None:
    """Local paths in a recipe are relative to the file that names them (to the working directory
    for --set values); make them absolute so the snapshot in a run directory still points at the
    same files."""
    for section, key in (("dataset", "name"), ("model", "name_or_path"), ("launch", "accelerate_config")):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and looks_local(sec[key]):
            sec[key] = str((base / os.path.expanduser(sec[key])).resolve())


@dataclass(frozen=True)
class Recipe:
    source: Path
    data: dict

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for p in dotted.split("."):
            if not isinstance(node, dict) or p not in node:
                return default
            node = node[p]
        return node

    @property
    def name(self) -> str:
        stem = self.source.stem
        return self.data.get("name") or stem

    @property
    def description(self) -> str:
        return self.data.get("description") or ""

    @property
    def grpo(self) -> dict:
        return self.data.get("grpo") or {}

    @property
    def max_steps(self) -> int:
        """Optimizer steps that shape the LR schedule (-1: unset, one epoch)."""
        return int(self.grpo.get("max_steps", -1))

    @property
    def stop_at_step(self) -> int:
        """Where training ends (after saving); ``max_steps`` unless the recipe stops earlier."""
        return int(self.data.get("stop_at_step") or self.max_steps)

    @property
    def save_steps(self) -> int:
        return int(self.grpo.get("save_steps", 500))  # TrainingArguments' default

    @property
    def gpus(self) -> int:
        return int(self.get("launch.gpus", 0) or 0)

    @property
    def processes(self) -> int:
        """Training processes per machine: one per GPU, else ``launch.processes`` CPU ranks (gloo)."""
        return self.gpus if self.gpus > 0 else max(1, int(self.get("launch.processes") or 1))

    @property
    def num_machines(self) -> int:
        """``launch.num_machines``: machines one run trains on (1 unless a multi-node launch)."""
        return int(self.get("launch.num_machines") or 1)

    @property
    def max_restarts(self) -> int | None:
        """``launch.max_restarts``: crashes the supervisor restarts (None: its default)."""
        v = self.get("launch.max_restarts")
        return None if v is None else int(v)

    @property
    def stop_timeout_s(self) -> float | None:
        """``launch.stop_timeout_s``: how long a stop waits for the checkpoint (None: the default)."""
        v = self.get("launch.stop_timeout_s")
        return None if v is None else float(v)

    @property
    def distributed(self) -> bool:
        """Whether the trainer runs under ``accelerate launch`` (GPUs, or more than one CPU rank)."""
        return self.gpus > 0 or self.processes > 1 or self.num_machines > 1

    @property
    def gpu_hour_usd(self) -> float | None:
        v = self.get("price.gpu_hour_usd")
        return None if v is None else float(v)

    @property
    def cpu_hour_usd(self) -> float:
        return float(self.get("price.cpu_hour_usd") or 0.0)

    @property
    def rewards(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.data.get("rewards") or {}).items()}

    @property
    def format_reward_keys(self) -> list[str]:
        """The recipe's reward keys that score format (their curves show the phase transition)."""
        from tina_core.recipe.rewards import FORMAT_REWARD_KEYS

        return [k for k in self.rewards if k in FORMAT_REWARD_KEYS]

    @property
    def dataset_size(self) -> int | None:
        """Rows in the training data (counted locally, Tina's figure for hub datasets), or None."""
        from tina_core.recipe.datasets import dataset_size

        section = self.data.get("dataset")
        try:
            return dataset_size(section) if section else None
        except TinaError:
            return None

    @property
    def prompts_per_step(self) -> float:
        """Unique prompts per optimizer step (TRL counts completions per device)."""
        g = self.grpo
        return (int(g.get("per_device_train_batch_size", 8)) * int(g.get("gradient_accumulation_steps", 1))
                * self.processes * self.num_machines) / int(g.get("num_generations", 8))

    @property
    def steps_per_epoch(self) -> float | None:
        """Optimizer steps in one pass over the data (Tina's "% of 1 epoch"): rows / prompts per step."""
        rows = self.dataset_size
        per_step = self.prompts_per_step
        return rows / per_step if rows and per_step else None

    @property
    def is_tiny(self) -> bool:
        return self.get("model.name_or_path") == TINY_MODEL

    @property
    def credentials(self) -> dict[str, Any]:
        """Every credential-named field (``launch.env.HF_TOKEN``, ``grpo.hub_token``...) by dotted
        path, with its value; fields a snapshot withheld (``***``) are not here."""
        return {p: v for p, v in secret_fields(self.data).items() if v != MASK}

    @property
    def secret_env(self) -> dict[str, str]:
        """The recipe's credentials as the trainer's environment gets them (``credential_env_name``);
        a ``launch.env`` entry wins over another field naming the same variable."""
        found = sorted(self.credentials.items(), key=lambda pv: pv[0].startswith("launch.env."))
        return {credential_env_name(p): str(v) for p, v in found}

    @property
    def withheld_env(self) -> list[str]:
        """Variables whose values a run's snapshot withholds (``***``): only the supervisor's
        environment holds them."""
        return list(dict.fromkeys(credential_env_name(p) for p, v in secret_fields(self.data).items() if v == MASK))

    def to_yaml(self) -> str:
        """The fully resolved recipe (no ``extends``), as written to a run directory or shown:
        every credential withheld as ``***`` (the supervisor hands them to the trainer through its
        environment; see launch_env)."""
        out = {"name": self.name, **{k: v for k, v in self.data.items() if k != "name"}}
        return yaml.safe_dump(redact(out, {}), sort_keys=False, default_flow_style=False)


# A recipe's credential reaches the trainer as an environment variable, never through a file:
# launch.env's under its own name, grpo.hub_token as HF_TOKEN (the Hugging Face token, as the hub
# libraries read it), any other under its key in capitals.
_CREDENTIAL_ENV = {"grpo.hub_token": "HF_TOKEN"}


def credential_env_name(path: str) -> str:
    """The environment variable that carries the recipe credential at ``path`` to the trainer."""
    if path.startswith("launch.env."):
        return path.removeprefix("launch.env.")
    return _CREDENTIAL_ENV.get(path) or path.rsplit(".", 1)[-1].upper()


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe, resolve ``extends``, apply ``--set`` overrides and check tina's sections."""
    src = Path(path).expanduser()
    where = str(src)
    if not src.is_file():
        raise RecipeError(f"{where}: no such recipe file")
    data = _read(src)
    for o in overrides:
        apply_override(data, o)
    # before any check, so no error message shows them either
    remember_secrets(v for p, v in secret_fields(data).items())
    _check_section(data, SCHEMA, where)
    if "output_dir" in (data.get("grpo") or {}):
        raise RecipeError(f"{where}: grpo.output_dir: not allowed; tina saves checkpoints to RUN_DIR/checkpoints")
    processes = (data.get("launch") or {}).get("processes")
    if processes is not None and (processes < 1 or (processes > 1 and (data.get("launch") or {}).get("gpus"))):
        raise RecipeError(f"{where}: launch.processes: expected a positive number of CPU ranks with launch.gpus 0 "
                          f"(on GPUs there is one rank per GPU), got {processes}")
    _absolutise(data, Path.cwd())
    return Recipe(source=src.resolve(), data=data)


def masked_override(override: str) -> str:
    """A ``--set`` override as it may be recorded or shown: a credential's value masked by its key
    (``grpo.hub_token=***``; its text may differ from the parsed value), and by name inside a
    mapping given whole (``launch.env={HF_TOKEN: ***}``)."""
    key, sep, raw = override.partition("=")
    if not sep:
        return override
    if is_secret_name(key.strip().rsplit(".", 1)[-1]):
        return f"{key}={MASK}"
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError:
        return override
    if isinstance(value, dict) and secret_fields(value):
        return f"{key}={yaml.safe_dump(redact(value, {}), default_flow_style=True).strip()}"
    return override


def list_recipes(root: str | os.PathLike = RECIPES_DIR) -> list[tuple[Path, str]]:
    """(path, description) of every recipe under ``root`` (the TUI picker); bases and accelerate
    configs are not recipes. Unreadable files are listed with the error as description."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*.yaml")):
        rel = p.relative_to(root).parts
        if rel[0] in ("base", "accelerate"):
            continue
        try:
            desc = load_recipe(p).description
        except TinaError as e:
            desc = f"(invalid: {e})"
        out.append((p, desc))
    return out


def accelerate_config_path(recipe: Recipe) -> Path:
    """``launch.accelerate_config``: a file name in recipes/accelerate/ or a path."""
    ref = recipe.get("launch.accelerate_config") or (
        DEFAULT_ACCELERATE_CONFIG if recipe.gpus > 0 else CPU_RANKS_ACCELERATE_CONFIG)
    path = Path(ref) if os.sep in ref else ACCELERATE_DIR / ref
    if not path.is_file():
        raise RecipeError(f"{recipe.source}: launch.accelerate_config: no such file {path} "
                          f"(expected a name in {ACCELERATE_DIR} or a path)")
    return path.resolve()


def resolve_base_model(recipe: Recipe, home: str | os.PathLike | None = None) -> str:
    """Where the base model comes from: the tiny model's cache folder (built on first use), or
    ``model.name_or_path`` (a hub id or local path)."""
    if recipe.is_tiny:
        from tina_core.recipe.tiny_model import ensure_tiny_model

        return str(ensure_tiny_model(recipe.get("model.tiny") or {}, home=home))
    return str(recipe.get("model.name_or_path"))
