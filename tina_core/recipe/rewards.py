"""Tina's reward functions, by recipe key.

Each function has TRL's reward signature ``fn(completions, solution=None, **kwargs)`` and returns one
float (or ``None``, which TRL turns into NaN and leaves out of the mean) per completion. Completions
may be conversational (``[[{"role": "assistant", "content": ...}]]``) or plain strings. The
``__name__`` of each function is Tina's, so TRL logs them as ``rewards/<name>/mean``.

Semantics follow Tina's ``rewards.py`` (lengths are in characters), with these differences:
- ``len_reward`` takes its shortest and longest per prompt group (``num_generations`` consecutive
  completions). Tina's TRL 0.15.2 called a reward function on one group at a time; TRL 1.x calls
  it once per process on the whole local batch (several groups), so a batch-wide min/max would rank
  lengths across prompts.
- ``reward_options.read_answer_tag: true`` reads an answer from the last ``<answer>...</answer>``
  block first (math-verify finds nothing in a bare ``<answer>7</answer>``), then Tina's boxed-only
  parse of the whole text. Off by default: Tina's recipes score what Tina scored (a ``\\boxed``
  answer, or "the final answer is ..."); the tiny recipe, whose model writes ``<answer>`` tags,
  turns it on.
- math-verify also works off the main thread (see ``_math_verify``).

Like Tina's, the len and cosine rewards call math-verify as ``verify(answer, gold)`` and the accuracy
reward as ``verify(gold, answer)``: math-verify reads its two sides differently, so the order is Tina's.

math-verify (sympy) is imported on first use: this module is imported by the cockpit for
``FORMAT_REWARD_KEYS`` and must stay light.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list]

# Keys whose rewards measure format only: the phase detector watches these metrics.
FORMAT_REWARD_KEYS = ("format", "tag_count")
FUNC_NAMES = {
    "format": "format_reward",
    "accuracy": "accuracy_reward",
    "tag_count": "tag_count_reward",
    "length": "len_reward",
    "cosine": "cosine_scaled_reward",
    "reasoning_steps": "reasoning_steps_reward",
    "repetition_penalty": "repetition_penalty_reward",
}
FORMAT_REWARD_METRICS = tuple(f"rewards/{FUNC_NAMES[k]}/mean" for k in FORMAT_REWARD_KEYS)

# Tina's defaults (tina/config.py). For wrong answers the cosine runs from min_value_wrong at length 0
# to max_value_wrong at max_len: 0.0 -> -0.5.
DEFAULT_OPTIONS: dict[str, float | int] = {
    "cosine_min_value_wrong": 0.0,
    "cosine_max_value_wrong": -0.5,
    "cosine_min_value_correct": 0.5,
    "cosine_max_value_correct": 1.0,
    "cosine_max_len": 1000,
    "repetition_n_grams": 3,
    "repetition_max_penalty": -1.0,
    "read_answer_tag": False,  # Tina's parse: boxed only (see the module's docstring)
}

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_STEP_RE = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)")


def _texts(completions) -> list[str]:
    """The text of each completion, conversational or plain."""
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(c)
        else:
            out.append("".join(m.get("content") or "" for m in c if m.get("role", "assistant") == "assistant"))
    return out


# --- math-verify ---------------------------------------------------------------------------------
@functools.cache
def _math_verify():
    """math-verify's API, imported on first use.

    math-verify 0.5.2 (the version lighteval pins) always arms SIGALRM for its timeouts. Off the main
    thread that raises, and ``verify`` swallows the error as "not equal": every answer would silently
    score 0. Newer releases skip the alarm when the timeout is None; this gives 0.5.2 the same rule.
    """
    import math_verify.grader
    import math_verify.parser
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    for mod in (math_verify.parser, math_verify.grader):
        alarm = getattr(mod, "timeout", None)
        if alarm is not None and not getattr(alarm, "thread_aware", False):

            def thread_aware(timeout_seconds=10, _alarm=alarm):
                if timeout_seconds is None or threading.current_thread() is not threading.main_thread():
                    return lambda func: func
                return _alarm(timeout_seconds)

            thread_aware.thread_aware = True
            mod.timeout = thread_aware

    def answer_configs(boxed):
        norm = NormalizationConfig(
            nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed=boxed, units=True
        )
        # Tina's: a boxed (or "final answer is") answer only; then the no-anchor reading for the
        # content of an <answer> block.
        tina = [LatexExtractionConfig(normalization_config=norm, boxed_match_priority=0, try_extract_without_anchor=False)]
        bare = [LatexExtractionConfig(normalization_config=norm, boxed_match_priority=0), ExprExtractionConfig()]
        return tina, bare

    return {
        "parse": parse,
        "verify": verify,
        "gold_default": [LatexExtractionConfig(), ExprExtractionConfig()],
        "gold_latex": [LatexExtractionConfig()],
        "answer": {"all": answer_configs("all"), True: answer_configs(True)},
    }


def _timeouts() -> tuple[dict, dict]:
    if threading.current_thread() is threading.main_thread():
        return {}, {}
    return {"parsing_timeout": None}, {"timeout_seconds": None}


@functools.lru_cache(maxsize=4096)
def _parse_gold(solution: str, latex_only: bool) -> tuple:
    """The gold, parsed first-match (cached: each gold is scored once per generation of its group)."""
    mv = _math_verify()
    cfg = mv["gold_latex"] if latex_only else mv["gold_default"]
    parsed = mv["parse"](solution, extraction_config=cfg, extraction_mode="first_match", **_timeouts()[0])
    if not parsed:
        log.warning("could not parse gold solution %r", solution[:200])
    return tuple(parsed)


def _parse_answer(text: str, boxed, read_answer_tag: bool) -> list:
    mv = _math_verify()
    parse, (tina, bare) = mv["parse"], mv["answer"][boxed]
    kw = dict(extraction_mode="first_match", **_timeouts()[0])
    blocks = _ANSWER_RE.findall(text) if read_answer_tag else []
    inner = blocks[-1].strip() if blocks else ""
    if inner:
        # Bare content is read as one LaTeX expression first ("\sqrt{2}", "x = 3"), then as text.
        for candidate in [inner] if "$" in inner or "\\boxed" in inner else [f"${inner}$", inner]:
            found = parse(candidate, extraction_config=bare, **kw)
            if found:
                return found
    return parse(text, extraction_config=tina, **kw)


def _verify(gold, target) -> bool:
    """math-verify's ``verify(gold, target)``. Its two sides are not symmetric (a gold relation such
    as ``x < 3`` matches a target interval ``(-oo, 3)``, not the other way round), so each reward
    passes them in Tina's order."""
    mv = _math_verify()
    return bool(mv["verify"](list(gold), list(target), **_timeouts()[1]))


def _correct_or_none(text: str, solution: str, read_answer_tag: bool) -> bool | None:
    """Whether ``text`` answers ``solution`` (Tina's len/cosine reading); None if the gold won't parse.
    As in Tina's len and cosine rewards, the answer goes first: ``verify(answer, gold)`` (her
    accuracy reward, and so ours, calls ``verify(gold, answer)``)."""
    gold = _parse_gold(str(solution), True)
    if not gold:
        return None
    try:
        return _verify(_parse_answer(text, True, read_answer_tag), gold)
    except Exception as e:  # math-verify's own errors: count as not verified
        log.warning("verify failed: %s", e)
        return False


def _need_solution(solution, completions, name: str) -> list:
    if solution is None:
        raise ValueError(f"{name} needs the dataset's 'solution' column (gold answers)")
    if len(solution) != len(completions):
        raise ValueError(f"{name}: {len(completions)} completions but {len(solution)} solutions")
    return list(solution)


# --- the rewards ---------------------------------------------------------------------------------
def make_accuracy_reward(read_answer_tag: bool = False) -> RewardFunc:
    """1.0 if the answer math-verifies against the gold, else 0.0; None if the gold won't parse or
    verification throws (TRL then leaves the sample out of the mean)."""

    def accuracy_reward(completions, solution=None, **kwargs) -> list[float | None]:
        solutions = _need_solution(solution, completions, "accuracy_reward")
        rewards: list[float | None] = []
        for text, sol in zip(_texts(completions), solutions):
            gold = _parse_gold(str(sol), False)
            if not gold:
                rewards.append(None)
                continue
            try:
                rewards.append(float(_verify(gold, _parse_answer(text, "all", read_answer_tag))))
            except Exception as e:
                log.warning("verify failed: %s", e)
                rewards.append(None)
        return rewards

    return accuracy_reward


accuracy_reward = make_accuracy_reward()  # Tina's reading


def format_reward(completions, solution=None, **kwargs) -> list[float]:
    """1.0 if "\\n</think>\\n" occurs exactly once. Tina checks only the closing think tag: the
    prompt already shows the format, and <answer> is not checked."""
    return [1.0 if t.count("\n</think>\n") == 1 else 0.0 for t in _texts(completions)]


def tag_count_reward(completions, solution=None, **kwargs) -> list[float]:
    """0.5 for exactly one "<think>\\n" plus 0.5 for exactly one "\\n</think>\\n"."""
    return [0.5 * (t.count("<think>\n") == 1) + 0.5 * (t.count("\n</think>\n") == 1) for t in _texts(completions)]


def make_len_reward(num_generations: int | None = None, read_answer_tag: bool = False) -> RewardFunc:
    """Kimi-1.5 length reward within each prompt group: lambda = 0.5 - (len - min) / (max - min) in
    characters, min and max over the group's ``num_generations`` completions (consecutive in TRL's
    batch; None: the whole call is one group, as Tina's calls were); correct answers get lambda,
    wrong ones min(0, lambda); all-equal lengths give 0. A gold that won't parse counts as correct,
    as in Tina."""

    def len_reward(completions, solution=None, prompts=None, **kwargs) -> list[float]:
        texts = _texts(completions)
        solutions = _need_solution(solution, completions, "len_reward")
        size = num_generations or len(texts) or 1
        if len(texts) % size:
            raise ValueError(f"len_reward: {len(texts)} completions are not whole groups of {size} "
                             "(num_generations): each prompt's group must reach one call whole")
        rewards: list[float] = []
        for start in range(0, len(texts), size):
            group = range(start, start + size)
            if prompts is not None and any(prompts[i] != prompts[start] for i in group):
                raise ValueError(f"len_reward: completions {start}..{start + size - 1} are not one prompt's group")
            lengths = [len(texts[i]) for i in group]
            lo, hi = min(lengths), max(lengths)
            for i, n in zip(group, lengths):
                if hi == lo:
                    rewards.append(0.0)
                    continue
                lam = 0.5 - (n - lo) / (hi - lo)
                correct = _correct_or_none(texts[i], solutions[i], read_answer_tag)
                rewards.append(float(lam if correct is not False else min(0.0, lam)))
        return rewards

    return len_reward


len_reward = make_len_reward()  # one call, one group (Tina's)


def reasoning_steps_reward(completions, solution=None, **kwargs) -> list[float]:
    """min(1, markers / 3) for step markers ("Step 1:", "First,", bullets...). As in Tina the
    pattern has no MULTILINE flag, so "^\\d+\\." only counts at the very start."""
    return [min(1.0, len(_STEP_RE.findall(t)) / 3) for t in _texts(completions)]


def make_cosine_scaled_reward(
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    read_answer_tag: bool = False,
) -> RewardFunc:
    """Tina's cosine length reward: r = lo + 0.5 (hi - lo)(1 + cos(pi * chars / max_len)), with
    [lo, hi] = [min_correct, max_correct] for correct answers and [max_wrong, min_wrong] for wrong
    ones. Progress is not clamped, as in Tina. An unparseable gold gives 1.0."""

    def cosine_scaled_reward(completions, solution=None, **kwargs) -> list[float]:
        solutions = _need_solution(solution, completions, "cosine_scaled_reward")
        rewards = []
        for text, sol in zip(_texts(completions), solutions):
            correct = _correct_or_none(text, sol, read_answer_tag)
            if correct is None:
                rewards.append(1.0)
                continue
            lo, hi = (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong)
            cosine = math.cos(math.pi * len(text) / max_len)
            rewards.append(float(lo + 0.5 * (hi - lo) * (1.0 + cosine)))
        return rewards

    return cosine_scaled_reward


def make_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFunc:
    """(1 - unique / total) * max_penalty over lowercased whitespace n-grams; 0 for empty text or
    fewer words than ``ngram_size``."""
    if max_penalty > 0:
        raise ValueError(f"repetition_max_penalty must be <= 0, got {max_penalty}")

    def repetition_penalty_reward(completions, solution=None, **kwargs) -> list[float]:
        rewards = []
        for text in _texts(completions):
            words = text.lower().split()
            if len(words) < ngram_size:
                rewards.append(0.0)
                continue
            ngrams = list(zip(*(words[i:] for i in range(ngram_size))))
            rewards.append((1 - len(set(ngrams)) / len(ngrams)) * max_penalty)
        return rewards

    return repetition_penalty_reward


# --- registry ------------------------------------------------------------------------------------
def _cosine(o: dict) -> RewardFunc:
    return make_cosine_scaled_reward(
        min_value_wrong=o["cosine_min_value_wrong"],
        max_value_wrong=o["cosine_max_value_wrong"],
        min_value_correct=o["cosine_min_value_correct"],
        max_value_correct=o["cosine_max_value_correct"],
        max_len=o["cosine_max_len"],
        read_answer_tag=o["read_answer_tag"],
    )


def _repetition(o: dict) -> RewardFunc:
    return make_repetition_penalty_reward(o["repetition_n_grams"], o["repetition_max_penalty"])


# Recipe key -> factory(options, num_generations) -> reward function.
REWARDS: dict[str, Callable[[dict, int | None], RewardFunc]] = {
    "format": lambda o, g: format_reward,
    "accuracy": lambda o, g: make_accuracy_reward(o["read_answer_tag"]),
    "tag_count": lambda o, g: tag_count_reward,
    "length": lambda o, g: make_len_reward(g, o["read_answer_tag"]),
    "cosine": lambda o, g: _cosine(o),
    "reasoning_steps": lambda o, g: reasoning_steps_reward,
    "repetition_penalty": lambda o, g: _repetition(o),
}


def resolve_options(options: dict | None) -> dict[str, Any]:
    """Tina's defaults overlaid with ``options``, checked: unknown names and bad values raise ValueError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown reward option(s) {unknown}; valid: {sorted(DEFAULT_OPTIONS)}")
    out = {**DEFAULT_OPTIONS, **options}
    for key, value in out.items():
        default = DEFAULT_OPTIONS[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"reward option {key} must be true or false, got {value!r}")
            continue
        want_int = isinstance(default, int)
        ok = isinstance(value, int) if want_int else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"reward option {key} must be {'an integer' if want_int else 'a number'}, got {value!r}")
    for key in ("cosine_max_len", "repetition_n_grams"):
        if out[key] < 1:
            raise ValueError(f"reward option {key} must be >= 1, got {out[key]}")
    if out["repetition_max_penalty"] > 0:
        raise ValueError(f"reward option repetition_max_penalty must be <= 0, got {out['repetition_max_penalty']}")
    return out


def build_reward_funcs(rewards: dict[str, float], options: dict | None = None,
                       num_generations: int | None = None) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions and weights for a recipe's ``{key: weight}`` mapping, in its order.
    ``num_generations`` (the GRPO group size) is what group-relative rewards compare within."""
    if not rewards:
        raise ValueError(f"no rewards given; valid keys: {sorted(REWARDS)}")
    unknown = [k for k in rewards if k not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward key(s) {unknown}; valid keys: {sorted(REWARDS)}")
    for key, weight in rewards.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"reward weight for {key!r} must be a number, got {weight!r}")
    opts = resolve_options(options)
    return [REWARDS[k](opts, num_generations) for k in rewards], [float(w) for w in rewards.values()]
