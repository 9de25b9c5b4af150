"""Recipes: YAML files that say everything a run needs (model, LoRA, GRPO, data, rewards, launch).

A recipe may ``extends`` a base recipe (deep-merged, child wins, chains allowed) and is then
adjusted with ``--set a.b=value`` overrides (values parsed as YAML). ``load_recipe`` checks tina's
own sections cheaply; ``validate_recipe`` builds the real ``trl.GRPOConfig`` and
``peft.LoraConfig`` (heavy imports inside) so a bad key fails before any process starts.

Light at import time (only yaml): the CLI and the TUI import this at start-up.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from tina_core.rundir import MASK, TinaError, is_secret_name, remember_secrets


class RecipeError(TinaError):
    """A recipe problem; the message names the file, the key path and what was expected."""


REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
ACCELERATE_DIR = RECIPES_DIR / "accelerate"


# PyYAML follows YAML 1.1, where `1e-6` (no dot) is a string: learning rates would silently become
# text. This loader reads any float literal as a float.
class _Loader(yaml.SafeLoader):
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
    "launch": {"gpus": int, "accelerate_config": (str, type(None)), "main_process_port": int,
               "num_machines": int, "machine_rank": int, "main_process_ip": str, "env": dict,
               "max_restarts": int, "stop_timeout_s": _NUM},
    "price": {"gpu_hour_usd": (_NUM + (type(None),)), "cpu_hour_usd": (_NUM + (type(None),))},
}
TINY_MODEL = "tiny"  # model.name_or_path of the locally built tiny model


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


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_section(data: dict, schema: dict, where: str, prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise RecipeError(f"{where}: {path}: unknown key{_suggest(str(key), list(schema))}; "
                              f"expected one of: {', '.join(schema)}")
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: {path}: expected a mapping, got {value!r}")
            _check_section(value, expected, where, path + ".")
        elif not _isinstance(value, expected):
            raise RecipeError(f"{where}: {path}: expected {_type_name(expected)}, got {value!r}")
    if prefix == "" and "rewards" in data:
        for k, w in data["rewards"].items():
            if not _isinstance(w, _NUM):
                raise RecipeError(f"{where}: rewards.{k}: expected a number (the reward's weight), got {w!r}")


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
    if not sep or not key or any(not p for p in key.split(".")):
        raise RecipeError(f"{where} {override!r}: expected key.path=value, e.g. grpo.learning_rate=5e-4")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RecipeError(f"{where} {override!r}: value is not valid YAML: {e}") from None
    node = data
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise RecipeError(f"{where} {override!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~"))


def _absolutise(data: dict, base: Path) -> None:
    """Local paths in a recipe are relative to the file that names them (to the working directory
    for --set values); make them absolute so the snapshot in a run directory still points at the
    same files."""
    for section, key in (("dataset", "name"), ("model", "name_or_path"), ("launch", "accelerate_config")):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and _looks_local(sec[key]):
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
        from tina_core.rewards import FORMAT_REWARD_KEYS

        return [k for k in self.rewards if k in FORMAT_REWARD_KEYS]

    @property
    def dataset_size(self) -> int | None:
        """Rows in the training data (counted locally, Tina's figure for hub datasets), or None."""
        from tina_core.data import dataset_size

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
                * max(1, self.gpus) * int(self.get("launch.num_machines") or 1)) / int(g.get("num_generations", 8))

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
    def secret_env(self) -> dict[str, str]:
        """``launch.env`` entries whose names look like credentials (HF_TOKEN...), with their values;
        entries a snapshot withheld (``***``) are not here."""
        env = self.get("launch.env") or {}
        return {str(k): str(v) for k, v in env.items() if is_secret_name(str(k)) and v != MASK}

    def to_yaml(self) -> str:
        """The fully resolved recipe (no ``extends``), as written to a run directory or shown:
        credential values in ``launch.env`` are withheld as ``***`` (the supervisor hands them to
        the trainer through its environment; see launch_env)."""
        out = {"name": self.name, **{k: v for k, v in self.data.items() if k != "name"}}
        if self.secret_env:
            out["launch"] = {**out["launch"], "env": {**out["launch"]["env"], **dict.fromkeys(self.secret_env, MASK)}}
        return yaml.safe_dump(out, sort_keys=False, default_flow_style=False)


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe, resolve ``extends``, apply ``--set`` overrides and check tina's sections."""
    src = Path(path).expanduser()
    where = str(src)
    if not src.is_file():
        raise RecipeError(f"{where}: no such recipe file")
    data = _read(src)
    for o in overrides:
        apply_override(data, o)
    _check_section(data, SCHEMA, where)
    if "output_dir" in (data.get("grpo") or {}):
        raise RecipeError(f"{where}: grpo.output_dir: not allowed; tina saves checkpoints to RUN_DIR/checkpoints")
    _absolutise(data, Path.cwd())
    recipe = Recipe(source=src.resolve(), data=data)
    remember_secrets(recipe.secret_env.values())  # whatever this process writes from now on masks them
    return recipe


def masked_override(override: str) -> str:
    """A ``--set`` override as it may be recorded: a credential-looking ``launch.env`` value masked
    by its name (its text may differ from the parsed value that ``secret_env`` knows)."""
    key, sep, _ = override.partition("=")
    parts = key.strip().split(".")
    if sep and len(parts) == 3 and parts[:2] == ["launch", "env"] and is_secret_name(parts[2]):
        return f"{key}={MASK}"
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


# --- validation against the real libraries (heavy) ---------------------------------------------
def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a dataclass field's annotation (lenient with unknown types)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, Sequence, typing.Sequence, set):
        return isinstance(value, (list, tuple)) and (not args or all(
            _type_ok(v, args[0]) for v in value if args[0] is not Ellipsis))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str) and value in {m.value for m in hint} | set(hint.__members__)
    if value is None:
        return False
    return True


def _hint_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _check_fields(values: dict, cls: type, section: str, where: str) -> None:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in values.items():
        if key not in names:
            raise RecipeError(f"{where}: {section}.{key}: unknown {cls.__name__} field{_suggest(key, names)}")
        if not _type_ok(value, hints.get(key, Any)):
            hint = _hint_name(hints.get(key))
            raise RecipeError(f"{where}: {section}.{key}: expected {hint}, got {value!r}")


def _key_in_message(msg: str, keys: Sequence[str]) -> str | None:
    return next((k for k in sorted(keys, key=len, reverse=True) if k in msg), None)


def build_grpo_config(recipe: Recipe, output_dir: str | os.PathLike, *, neutralise_device: bool = False):
    """The real ``trl.GRPOConfig`` for a recipe. ``neutralise_device`` builds it on a machine
    without the recipe's GPUs (validation only): TrainingArguments refuses bf16 without a GPU, so
    bf16/fp16 are switched off for the check; every field name and type was checked beforehand."""
    from trl import GRPOConfig

    kwargs = dict(recipe.grpo)
    where = str(recipe.source)
    _check_fields(kwargs, GRPOConfig, "grpo", where)
    if neutralise_device:
        kwargs.update(bf16=False, fp16=False, tf32=None, use_cpu=True)
    kwargs.setdefault("report_to", "none")
    try:
        return GRPOConfig(output_dir=str(output_dir), push_to_hub=False, **kwargs)
    except (TypeError, ValueError) as e:
        key = _key_in_message(str(e), list(recipe.grpo))
        raise RecipeError(f"{where}: grpo{'.' + key if key else ''}: {e}") from None


def build_lora_config(recipe: Recipe):
    from peft import LoraConfig

    where = str(recipe.source)
    kwargs = dict(recipe.data.get("lora") or {})
    _check_fields(kwargs, LoraConfig, "lora", where)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as e:
        key = _key_in_message(str(e), list(kwargs))
        raise RecipeError(f"{where}: lora{'.' + key if key else ''}: {e}") from None


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Library versions whose config classes decide whether the `grpo` and `lora` sections are valid.
_CONFIG_LIBRARIES = ("trl", "peft", "transformers", "accelerate", "torch")


def _library_verdict_path(recipe: Recipe) -> Path | None:
    """Where a passed library check of these exact sections is remembered: keyed by the sections,
    the installed versions of the libraries that judge them, and whether a GPU is there. None when
    a version cannot be read (then every check runs in full)."""
    import hashlib
    import importlib.metadata
    import json

    from tina_core import gpu
    from tina_core.rundir import cache_root

    try:
        versions = {d: importlib.metadata.version(d) for d in _CONFIG_LIBRARIES}
    except importlib.metadata.PackageNotFoundError:
        return None
    what = {"grpo": recipe.grpo, "lora": recipe.data.get("lora") or {}, "versions": versions,
            "gpu": bool(gpu.gpus()),
            "checks": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}  # this module's own rules
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_root() / "validated" / key


def check_library_configs(recipe: Recipe) -> None:
    """Build the real ``GRPOConfig`` and ``LoraConfig`` from the recipe. Importing TRL costs about
    5 s, longer than a tiny run's training, so a pass is remembered (`_library_verdict_path`) and
    the same sections under the same library versions are not built again; failures never are."""
    verdict = _library_verdict_path(recipe)
    if verdict is not None and verdict.is_file():
        return
    where = str(recipe.source)
    # Run in a throwaway dir: GRPOConfig does not create it, but keep validation side-effect free.
    cfg = build_grpo_config(recipe, os.devnull, neutralise_device=not _gpu_available())
    build_lora_config(recipe)
    # The trainer always saves at stop_at_step (see train.py), so any stop step ends on a checkpoint;
    # what must hold is that saving is switched on at all.
    if str(cfg.save_strategy) not in ("steps", "SaveStrategy.STEPS"):
        raise RecipeError(f"{where}: grpo.save_strategy: expected 'steps' (checkpoints every save_steps), "
                          f"got {cfg.save_strategy!r}")
    if verdict is not None:
        try:
            verdict.parent.mkdir(parents=True, exist_ok=True)
            verdict.write_text(recipe.source.name if recipe.source else "")
        except OSError:
            pass  # a read-only or full cache only costs the next check its time


# model.dtype and model.attn_implementation as transformers' from_pretrained reads them. The usual
# values are answered here; any other is asked of torch / transformers themselves (seconds of
# imports that the usual recipes should not pay on every launch).
_USUAL_DTYPES = ("auto", "bfloat16", "float16", "float32")
_USUAL_ATTENTION = ("eager", "sdpa")
_FLASH_RE = re.compile(r"^flash_attention_(\d+)$")


def check_model_loading(recipe: Recipe) -> None:
    """The values the trainer passes to ``from_pretrained`` (``dtype``, ``attn_implementation``) are
    ones transformers accepts, and a flash attention's package is installed where the recipe will
    run, so a typo or a missing build fails here instead of after the launch."""
    where = str(recipe.source)
    dtype = recipe.get("model.dtype", "auto")
    if dtype not in _USUAL_DTYPES:
        import torch

        found = getattr(torch, str(dtype), None)
        if not (isinstance(found, torch.dtype) and found.is_floating_point):
            raise RecipeError(f"{where}: model.dtype: expected auto or a floating-point torch dtype "
                              f"({', '.join(_USUAL_DTYPES[1:])}), got {dtype!r}")
    attn = recipe.get("model.attn_implementation")
    if attn is None or attn in _USUAL_ATTENTION:
        return
    flash = _FLASH_RE.match(attn)
    if flash is None:
        from transformers.integrations.hub_kernels import is_kernel
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        valid = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
        if attn not in valid and not is_kernel(attn):
            raise RecipeError(f"{where}: model.attn_implementation: expected one of {', '.join(valid)} "
                              f"or a hub kernel (org/name), got {attn!r}")
        return
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX
    from transformers.utils import is_kernels_available

    version = int(flash.group(1))
    if version not in FLASH_ATTENTION_COMPATIBILITY_MATRIX:
        raise RecipeError(f"{where}: model.attn_implementation: transformers has no {attn}; expected "
                          + ", ".join(f"flash_attention_{v}" for v in FLASH_ATTENTION_COMPATIBILITY_MATRIX)
                          + f" or {', '.join(_USUAL_ATTENTION)}")
    # Only where the recipe will run: a GPU recipe checked on a machine without its GPUs (a dry run
    # on a laptop) is validated there, not loaded, as in check_library_configs.
    if recipe.gpus > 0 and not _gpu_available():
        return
    # transformers falls back to a hub kernel when the `kernels` package is there
    if not FLASH_ATTENTION_COMPATIBILITY_MATRIX[version]["pkg_availability_check"]() and not is_kernels_available():
        package = "flash-attn" if version == 2 else f"flash-attn-{version}"
        raise RecipeError(f"{where}: model.attn_implementation: {attn} needs the {package} package, which is "
                          f"not installed here (it is not in requirements/gpu.txt: it builds against the "
                          f"box's CUDA, e.g. pip install {package} --no-build-isolation); or use sdpa")


def validate_recipe(recipe: Recipe) -> None:
    """Check the whole recipe before any process starts (raises RecipeError)."""
    where = str(recipe.source)
    for section in ("model", "lora", "grpo", "dataset", "rewards"):
        if not recipe.data.get(section):
            raise RecipeError(f"{where}: {section}: missing section")
    model = recipe.get("model.name_or_path")
    if not model:
        raise RecipeError(f"{where}: model.name_or_path: missing (a hub id, a local path or 'tiny')")
    if _looks_local(model) and not Path(model).exists():
        raise RecipeError(f"{where}: model.name_or_path: no such local model {model}")
    check_model_loading(recipe)
    if recipe.is_tiny:
        from tina_core.tiny import TinyParams

        try:
            TinyParams(**(recipe.get("model.tiny") or {}))
        except TypeError as e:
            raise RecipeError(f"{where}: model.tiny: {e}; expected fields of "
                              f"{', '.join(f.name for f in dataclasses.fields(TinyParams))}") from None
    ds = recipe.get("dataset.name")
    if not ds:
        raise RecipeError(f"{where}: dataset.name: missing (a hub id or a local path)")
    if _looks_local(ds) and not Path(ds).exists():
        raise RecipeError(f"{where}: dataset.name: no such local dataset {ds}")
    from tina_core.data import check_section

    try:
        check_section(recipe.data["dataset"])  # mapping presets and values, as data.py reads them
    except TinaError as e:
        raise RecipeError(f"{where}: {e}") from None

    from tina_core.rewards import build_reward_funcs

    try:
        build_reward_funcs(recipe.rewards, dict(recipe.data.get("reward_options") or {}))
    except (KeyError, ValueError, TypeError) as e:
        raise RecipeError(f"{where}: rewards: {e}") from None

    check_library_configs(recipe)  # first: it checks the types that the steps below rely on
    if recipe.max_steps <= 0 and "stop_at_step" not in recipe.data:
        raise RecipeError(f"{where}: grpo.max_steps: set it (the LR schedule length) or set stop_at_step")
    stop = recipe.stop_at_step
    if stop <= 0:
        raise RecipeError(f"{where}: stop_at_step: expected a positive integer, got {stop}")
    if recipe.max_steps > 0 and stop > recipe.max_steps:
        raise RecipeError(f"{where}: stop_at_step: {stop} is beyond grpo.max_steps ({recipe.max_steps})")
    if recipe.gpus > 0:
        from tina_core.launch import accelerate_config_path

        accelerate_config_path(recipe)  # raises if the file is missing


def resolve_base_model(recipe: Recipe, home: str | os.PathLike | None = None) -> str:
    """Where the base model comes from: the tiny model's cache folder (built on first use), or
    ``model.name_or_path`` (a hub id or local path)."""
    if recipe.is_tiny:
        from tina_core.tiny import ensure_tiny_model

        return str(ensure_tiny_model(recipe.get("model.tiny") or {}, home=home))
    return str(recipe.get("model.name_or_path"))
