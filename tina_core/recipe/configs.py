"""The complete check of a recipe before anything starts, and the recipe as the real TRL and PEFT
configs (``GRPOConfig``, ``LoraConfig``) that the trainer builds from it.

Heavy in part: building the configs imports TRL (~5 s), so a pass is remembered under
``$TINA_CACHE/validated/`` (see ``check_library_configs``). The cheap checks run every time.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from tina_core.credentials import is_secret_name
from tina_core.recipe.loader import Recipe, RecipeError, looks_local, suggest, accelerate_config_path, shown_value
from tina_core.rundir import TinaError


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
            raise RecipeError(f"{where}: {section}.{key}: unknown {cls.__name__} field{suggest(key, names)}")
        if not _type_ok(value, hints.get(key, Any)):
            hint = _hint_name(hints.get(key))
            raise RecipeError(f"{where}: {section}.{key}: expected {hint}, got {shown_value(key, value)}")


def _key_in_message(msg: str, keys: Sequence[str]) -> str | None:
    return next((k for k in sorted(keys, key=len, reverse=True) if k in msg), None)


def config_fields(section: dict) -> dict:
    """A ``grpo`` or ``lora`` section as its config is built from it: without credentials
    (``hub_token``), which reach the trainer through its environment and would otherwise be
    saved with every checkpoint (``training_args.bin``)."""
    return {k: v for k, v in section.items() if not is_secret_name(k)}


def build_grpo_config(recipe: Recipe, output_dir: str | os.PathLike, *, neutralise_device: bool = False):
    """The real ``trl.GRPOConfig`` for a recipe. ``neutralise_device`` builds it on a machine
    without the recipe's GPUs (validation only): TrainingArguments refuses bf16 without a GPU, so
    bf16/fp16 are switched off for the check; every field name and type was checked beforehand."""
    from trl import GRPOConfig

    where = str(recipe.source)
    _check_fields(recipe.grpo, GRPOConfig, "grpo", where)
    kwargs = config_fields(recipe.grpo)
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
    _check_fields(recipe.data.get("lora") or {}, LoraConfig, "lora", where)
    kwargs = config_fields(recipe.data.get("lora") or {})
    kwargs.setdefault("task_type", "CAUSAL_LM")
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as e:
        key = _key_in_message(str(e), list(kwargs))
        raise RecipeError(f"{where}: lora{'.' + key if key else ''}: {e}") from None


def _declared_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, enum.Enum):
        default = default.value
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple, set)):
        return list(value) == list(default)
    return value == default


def differences_from_defaults(recipe: Recipe) -> list[tuple[str, Any, Any]]:
    """``(key, recipe value, library default)`` for every ``grpo`` and ``lora`` value of the resolved
    recipe that differs from the default the real ``trl.GRPOConfig`` / ``peft.LoraConfig`` declares
    (read from the installed classes, so a library upgrade that moves a default shows here)."""
    from peft import LoraConfig
    from trl import GRPOConfig

    out = []
    for section, cls in (("grpo", GRPOConfig), ("lora", LoraConfig)):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in (recipe.data.get(section) or {}).items():
            default = _declared_default(fields[key]) if key in fields else dataclasses.MISSING
            if default is dataclasses.MISSING or not _same(value, default):
                out.append((f"{section}.{key}", value, None if default is dataclasses.MISSING else
                            default.value if isinstance(default, enum.Enum) else default))
    return out


def resolved_grpo(recipe: Recipe) -> dict[str, Any]:
    """Every ``GRPOConfig`` field as the recipe resolves it (its values over TRL's defaults, after
    TRL's own post-init: ``steps_per_generation`` and the like). bf16/fp16 read as off on a machine
    without a GPU (see ``build_grpo_config``)."""
    cfg = build_grpo_config(recipe, os.devnull, neutralise_device=not _gpu_available())
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Library versions whose config classes decide whether the `grpo` and `lora` sections are valid.
_CONFIG_LIBRARIES = ("trl", "peft", "transformers", "accelerate", "torch")


def _library_verdict_path(recipe: Recipe) -> Path | None:
    """Where a passed library check of these exact sections is remembered: keyed by the sections,
    the installed versions of the libraries that judge them, and whether a GPU is there. None when
    a version cannot be read (then every check runs in full)."""
    import importlib.metadata

    from tina_core import gpu
    from tina_core.rundir import cache_root

    try:
        versions = {d: importlib.metadata.version(d) for d in _CONFIG_LIBRARIES}
    except importlib.metadata.PackageNotFoundError:
        return None
    what = {"grpo": config_fields(recipe.grpo), "lora": config_fields(recipe.data.get("lora") or {}),
            "versions": versions,
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
    _check_tracker_names(recipe)
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


# grpo.report_to: each tracker's package, as transformers looks for it (integration_utils'
# is_*_available); importing transformers' own table costs the launch its torch import.
TRACKER_PACKAGES = {"wandb": ("wandb",), "trackio": ("trackio",), "tensorboard": ("tensorboard", "tensorboardX"),
                    "mlflow": ("mlflow",), "comet_ml": ("comet_ml",), "clearml": ("clearml",),
                    "dvclive": ("dvclive",), "swanlab": ("swanlab",), "neptune": ("neptune",),
                    "codecarbon": ("codecarbon",), "dagshub": ("dagshub",), "flyte": ("flytekit",)}


def trackers(recipe: Recipe) -> list[str]:
    """The trackers of ``grpo.report_to`` (a name or a list; ``none``: none)."""
    value = recipe.grpo.get("report_to", "none")
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [n for n in names if isinstance(n, str) and n != "none"]  # other types: GRPOConfig's check says


def check_trackers(recipe: Recipe) -> None:
    """Every tracker ``grpo.report_to`` names is installed here, so a missing one fails before the
    launch (transformers would raise once the trainer is built). Checked every time: a verdict kept
    from before could not see a package uninstalled since."""
    import importlib.util

    for name in trackers(recipe):
        packages = TRACKER_PACKAGES.get(name)
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise RecipeError(f"{recipe.source}: grpo.report_to: {name} is not installed here "
                              f"(pip install {packages[0]} in tina's environment), or report_to: none")


def _check_tracker_names(recipe: Recipe) -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in trackers(recipe):
        if name != "all" and name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(f"{recipe.source}: grpo.report_to: unknown tracker {name!r}; expected none, all or "
                              f"some of {', '.join(INTEGRATION_TO_CALLBACK)}")


def validate_recipe(recipe: Recipe) -> None:
    """Check the whole recipe before any process starts (raises RecipeError)."""
    where = str(recipe.source)
    for section in ("model", "lora", "grpo", "dataset", "rewards"):
        if not recipe.data.get(section):
            raise RecipeError(f"{where}: {section}: missing section")
    model = recipe.get("model.name_or_path")
    if not model:
        raise RecipeError(f"{where}: model.name_or_path: missing (a hub id, a local path or 'tiny')")
    if looks_local(model) and not Path(model).exists():
        raise RecipeError(f"{where}: model.name_or_path: no such local model {model}")
    check_model_loading(recipe)
    if recipe.is_tiny:
        from tina_core.recipe.tiny_model import TinyParams

        try:
            TinyParams(**(recipe.get("model.tiny") or {}))
        except TypeError as e:
            raise RecipeError(f"{where}: model.tiny: {e}; expected fields of "
                              f"{', '.join(f.name for f in dataclasses.fields(TinyParams))}") from None
    ds = recipe.get("dataset.name")
    if not ds:
        raise RecipeError(f"{where}: dataset.name: missing (a hub id or a local path)")
    if looks_local(ds) and not Path(ds).exists():
        raise RecipeError(f"{where}: dataset.name: no such local dataset {ds}")
    from tina_core.recipe.datasets import check_local_data

    try:
        # mapping presets and values, and local data read as the trainer reads it
        rows = check_local_data(recipe.data["dataset"])
    except TinaError as e:
        raise RecipeError(f"{where}: {e}") from None
    need = recipe.prompts_per_step
    if rows is not None and rows < need:
        raise RecipeError(f"{where}: dataset.name: {ds} has {rows} usable row(s), fewer than the {need:g} prompts "
                          "one optimizer step takes (per_device_train_batch_size x gradient_accumulation_steps x "
                          "processes / num_generations): not one step could be trained")

    from tina_core.recipe.rewards import build_reward_funcs

    try:
        build_reward_funcs(recipe.rewards, dict(recipe.data.get("reward_options") or {}),
                           num_generations=recipe.grpo.get("num_generations"))
    except (KeyError, ValueError, TypeError) as e:
        raise RecipeError(f"{where}: rewards: {e}") from None

    check_trackers(recipe)  # before the library check: a missing tracker is said at once
    check_library_configs(recipe)  # first: it checks the types that the steps below rely on
    if recipe.max_steps <= 0 and "stop_at_step" not in recipe.data:
        raise RecipeError(f"{where}: grpo.max_steps: set it (the LR schedule length) or set stop_at_step")
    stop = recipe.stop_at_step
    if stop <= 0:
        raise RecipeError(f"{where}: stop_at_step: expected a positive integer, got {stop}")
    if recipe.max_steps > 0 and stop > recipe.max_steps:
        raise RecipeError(f"{where}: stop_at_step: {stop} is beyond grpo.max_steps ({recipe.max_steps})")
    if recipe.gpus > 0:
        accelerate_config_path(recipe)  # raises if the file is missing


