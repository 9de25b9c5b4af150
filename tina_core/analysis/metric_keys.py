"""Metric names: everything is stored and shown under TRL 1.x's names.

Tina's published logs come from TRL 0.15 (``rewards/format_reward``, ``completion_length``), W&B
exports add ``train/`` or ``eval/`` in front, and the progress table a notebook prints spells keys
with spaces (``rewards / strict_format_reward_func / mean``) beside the Trainer's own column names
(``Step``, ``Training Loss``); all are mapped onto the canonical names so one query works across
every run.
"""

from __future__ import annotations

import re

FORMAT_REWARD = "rewards/format_reward/mean"
TAG_COUNT_REWARD = "rewards/tag_count_reward/mean"
ACCURACY_REWARD = "rewards/accuracy_reward/mean"
COMPLETION_LENGTH = "completions/mean_length"

# Keys every metrics line carries besides the logged values.
RECORD_FIELDS = ("step", "attempt", "time", "ts")

_LEGACY = {
    "completion_length": COMPLETION_LENGTH,
    "global_step": "step",
}
# The Trainer's notebook progress table prints these columns under its own names.
_PRINTED = {
    "step": "step",
    "training loss": "loss",
    "validation loss": "eval_loss",
    "epoch": "epoch",
    "learning rate": "learning_rate",
    "grad norm": "grad_norm",
}
_SPACED_SLASH = re.compile(r"\s*/\s*")


def normalise_key(key: str) -> str:
    """The canonical (TRL 1.x) name of a logged key.

    >>> normalise_key("rewards/format_reward"), normalise_key("train/completion_length")
    ('rewards/format_reward/mean', 'completions/mean_length')
    >>> normalise_key("eval/rewards/accuracy_reward")
    'eval_rewards/accuracy_reward/mean'
    >>> normalise_key("rewards / strict_format_reward_func"), normalise_key("Training Loss")
    ('rewards/strict_format_reward_func/mean', 'loss')
    """
    key = _SPACED_SLASH.sub("/", key.strip().lstrip("\ufeff"))
    printed = _PRINTED.get(key.lower())
    if printed is not None:
        return printed
    if key.startswith("train/"):
        return normalise_key(key[len("train/"):])
    for prefix in ("eval/", "eval_"):
        if key.startswith(prefix) and len(key) > len(prefix):
            return "eval_" + normalise_key(key[len(prefix):])
    if key in _LEGACY:
        return _LEGACY[key]
    parts = key.split("/")
    # TRL < 0.17 logged one value per reward function; 1.x logs its mean and std.
    if len(parts) == 2 and parts[0] == "rewards" and parts[1]:
        return f"{key}/mean"
    return key


def normalise_record(rec: dict) -> dict:
    """A metrics record with canonical keys; a canonical key wins over a legacy one."""
    out: dict = {}
    for k, v in rec.items():
        nk = normalise_key(k) if isinstance(k, str) else k
        if nk == k or nk not in out:
            out[nk] = v
    return out
