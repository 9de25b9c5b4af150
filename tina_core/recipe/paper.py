"""The Tina paper's published figures, as data, to show beside our runs in `tina report`.

Source: "Tina: Tiny Reasoning Models via LoRA" (arXiv 2504.15777) and the tables in the Tina
repository's assets/ (tina_eval.png, ablation.png, cost.png). Avg is the mean Pass@1 over AIME24,
AIME25, AMC23, MATH500, GPQA Diamond and Minerva; "best %" is where the best checkpoint sat, as a
percentage of one epoch (one epoch = dataset rows / 8 prompts per step on 2 GPUs).
"""

from __future__ import annotations

from typing import Any

# Unique prompts per optimizer step in every Tina recipe: 2 GPUs x 4 accumulation steps x G
# completions / G. One epoch is the dataset's rows / this.
PROMPTS_PER_STEP = 8

BENCHMARKS = ("aime24", "aime25", "amc23", "math_500", "gpqa:diamond", "minerva")

# recipe file stem (recipes/tina/<stem>.yaml) -> paper rows
MAIN_RESULTS: list[dict[str, Any]] = [
    {"model": "Tina-STILL-3-1.5B-preview", "recipe": "still", "best_pct_epoch": 53, "aime24": 36.67,
     "avg": 48.16, "full_sota_avg": 44.86},
    {"model": "Tina-DeepScaleR-1.5B-Preview", "recipe": "deepscaler", "best_pct_epoch": 19, "aime24": 43.33,
     "avg": 48.38, "full_sota_avg": 48.74},
    {"model": "Tina-Open-RS1", "recipe": "open_rs1", "best_pct_epoch": 34, "aime24": 43.33,
     "avg": 48.56, "full_sota_avg": 44.47},
    {"model": "Tina-Open-RS2", "recipe": "open_rs2", "best_pct_epoch": 51, "aime24": 43.33,
     "avg": 50.60, "full_sota_avg": 41.60},
    {"model": "Tina-Open-RS3", "recipe": "open_rs3", "best_pct_epoch": 57, "aime24": 36.67,
     "avg": 49.45, "full_sota_avg": 46.06},
]

ABLATIONS: list[dict[str, Any]] = [
    {"configuration": "Open-RS data (7k)", "avg": 50.60, "note": "beats OpenR1 93.7k (49.26)"},
    {"configuration": "OpenR1 data (93.7k)", "recipe": "open_r1", "avg": 49.26, "best_pct_epoch": 13},
    {"configuration": "OpenThoughts data", "recipe": "thoughts", "best_pct_epoch": 30},
    {"configuration": "LIMR data (1.39k)", "recipe": "limr", "best_pct_epoch": 58},
    {"configuration": "LR 5e-6", "recipe": "limr_large_lr", "avg": 47.87, "best_pct_epoch": 29},
    {"configuration": "LR 1e-6", "avg": 48.47, "best_pct_epoch": 58},
    {"configuration": "LR 5e-7", "recipe": "limr_small_lr", "best_pct_epoch": 58},
    {"configuration": "LoRA rank 64", "recipe": "limr_large_rank", "best_pct_epoch": 29},
    {"configuration": "LoRA rank 32", "avg": 48.47, "best_pct_epoch": 58},
    {"configuration": "LoRA rank 16", "recipe": "limr_medium_rank", "avg": 48.92, "best_pct_epoch": 58},
    {"configuration": "LoRA rank 8", "recipe": "limr_small_rank", "best_pct_epoch": 29},
    {"configuration": "LoRA rank 4", "recipe": "limr_tiny_rank", "best_pct_epoch": 86},
    {"configuration": "GRPO (Open-RS3)", "avg": 49.45, "best_pct_epoch": 57},
    {"configuration": "Dr.GRPO (Open-RS3)", "recipe": "open_rs3_drgrpo", "avg": 49.53, "best_pct_epoch": 17},
    {"configuration": "completion 3k -> 10k", "avg": 50.63, "note": "length settles near 4k; transition still there"},
    {"configuration": "format reward only", "avg": 50.56, "note": "needs ~850 steps; no transition"},
]

# USD: training / evaluation / total (2x L40S at about $1 per GPU-hour)
COSTS: list[dict[str, Any]] = [
    {"experiment": "Baseline re-evaluation", "train": None, "eval": 6, "total": 6},
    {"experiment": "STILL-3", "recipe": "still", "train": 59, "eval": 7, "total": 66},
    {"experiment": "DeepScaleR", "recipe": "deepscaler", "train": 84, "eval": 10, "total": 94},
    {"experiment": "Open-RS1", "recipe": "open_rs1", "train": 40, "eval": 11, "total": 51},
    {"experiment": "Open-RS2", "recipe": "open_rs2", "train": 15, "eval": 17, "total": 32},
    {"experiment": "Open-RS3", "recipe": "open_rs3", "train": 15, "eval": 17, "total": 32},
    {"experiment": "OpenThoughts", "recipe": "thoughts", "train": 84, "eval": 10, "total": 94},
    {"experiment": "OpenR1", "recipe": "open_r1", "train": 59, "eval": 7, "total": 66},
    {"experiment": "LIMR", "recipe": "limr", "train": 4, "eval": 4, "total": 8},
    {"experiment": "Dr.GRPO", "recipe": "open_rs3_drgrpo", "train": 15, "eval": 17, "total": 32},
    {"experiment": "LR ablation", "train": 7, "eval": 8, "total": 15},
    {"experiment": "LoRA rank ablation", "train": 14, "eval": 16, "total": 30},
    {"experiment": "All tasks", "train": 396, "eval": 130, "total": 526},
    {"experiment": "Main tasks", "train": 213, "eval": 62, "total": 275},
    {"experiment": "Best checkpoint in each main task", "train": 80, "eval": 5, "total": 85},
    {"experiment": "All checkpoints, best task", "train": 14, "eval": 17, "total": 31},
    {"experiment": "Best checkpoint, best task", "train": 8, "eval": 1, "total": 9},
]


def rows_for(recipe_stem: str | None) -> dict:
    """The paper's rows for one recipe (by its file stem): main result, ablation, cost."""
    def pick(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((r for r in rows if recipe_stem and r.get("recipe") == recipe_stem), None)

    return {"main": pick(MAIN_RESULTS), "ablation": pick(ABLATIONS), "cost": pick(COSTS)}
