"""Reward throughput: tina's accuracy reward against a per-call math-verify baseline.

A GRPO batch repeats each gold answer num_generations times; tina parses each gold once (cached).
The baseline parses the gold for every completion, as Tina's own reward does. Both score the same
completions and must agree.

    .venv/bin/python bench/rewards.py [--groups 16] [--generations 6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time


def make_batch(groups: int, generations: int) -> tuple[list, list[str]]:
    completions, solutions = [], []
    for g in range(groups):
        gold = f"$\\frac{{{g + 1}}}{{{g + 2}}}$"
        for k in range(generations):
            value = f"\\frac{{{g + 1}}}{{{g + 2}}}" if k % 2 == 0 else f"{g + k}"
            text = f"<think>\nStep 1: simplify.\nStep 2: check.\n</think>\n<answer>\n\\boxed{{{value}}}\n</answer>"
            completions.append([{"role": "assistant", "content": text}])
            solutions.append(gold)
    return completions, solutions


def baseline(completions, solutions):
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    cfg = [LatexExtractionConfig(normalization_config=NormalizationConfig(nits=False, malformed_operators=False,
           basic_latex=True, equations=True, boxed="all", units=True), boxed_match_priority=0,
           try_extract_without_anchor=False)]
    out = []
    for c, sol in zip(completions, solutions):
        gold = parse(sol, extraction_mode="first_match")
        out.append(float(verify(gold, parse(c[0]["content"], extraction_config=cfg, extraction_mode="first_match")))
                   if gold else None)
    return out


def timed(fn, repeats: int) -> tuple[float, list]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from tina_core.recipe import rewards

    completions, solutions = make_batch(a.groups, a.generations)
    baseline(completions[:2], solutions[:2])  # warm-up: imports and first sympy use
    rewards.accuracy_reward(completions[:2], solutions[:2])

    t_base, r_base = timed(lambda: baseline(completions, solutions), a.repeats)

    def tina():
        rewards._parse_gold.cache_clear()  # each batch starts cold: every gold parsed once per batch
        return rewards.accuracy_reward(completions, solutions)

    t_tina, r_tina = timed(tina, a.repeats)
    assert r_base == r_tina, "tina and the baseline disagree"
    n = len(completions)
    print(f"batch: {n} completions ({a.groups} groups x {a.generations}), median of {a.repeats}")
    print(f"baseline (gold parsed per completion): {t_base * 1e3:8.1f} ms  {n / t_base:8.0f} completions/s")
    print(f"tina accuracy_reward (gold cached):    {t_tina * 1e3:8.1f} ms  {n / t_tina:8.0f} completions/s")
    print(f"speed-up: {t_base / t_tina:.2f}x; mean reward {sum(r_tina) / n:.3f}")


if __name__ == "__main__":
    main()
