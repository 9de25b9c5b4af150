"""lighteval tasks: Tina's six benchmarks as Tina evaluated them, and the tiny CPU benchmark.

lighteval 0.13 ships ``aime24``, ``aime25``, ``math_500`` and ``gpqa:diamond``, but not as Tina ran
them: its math tasks ask for an ``ANSWER:`` line and score with ``pass_at_k_math``, where Tina asked
for a boxed answer and scored with extractive match (``expr_gold_metric`` / ``latex_gold_metric``).
So every task tina evaluates is defined here, prefixed ``tina_`` (lighteval refuses custom tasks
whose names clash with built-ins), from Tina's ``scripts/eval/run_eval_custom_tasks.py``:

| task                | data (split)                          | gold            | metric             |
|---------------------|---------------------------------------|-----------------|--------------------|
| `tina_aime24`       | HuggingFaceH4/aime_2024 (train)       | `answer`        | `expr_gold_metric` |
| `tina_aime25`       | yentinglin/aime_2025 (train)          | `answer`        | `expr_gold_metric` |
| `tina_amc23`        | knoveleng/AMC-23 (train)              | `answer`        | `expr_gold_metric` |
| `tina_math_500`     | HuggingFaceH4/MATH-500 (test)         | `solution`      | `latex_gold_metric`|
| `tina_minerva`      | knoveleng/Minerva-Math (train)        | `solution`      | `latex_gold_metric`|
| `tina_gpqa_diamond` | Idavidrein/gpqa, gpqa_diamond (train) | a letter A-D    | letter match       |
| `tina_arith`        | tiny_data/tiny_eval (test), local     | `answer`        | `<answer>` match   |

The math prompt is simple-evals' ``\\boxed{ANSWER}`` template, GPQA's simple-evals' ``Answer: $LETTER``
one with the correct answer at a random position (Python's ``random``, which lighteval's pipeline
seeds with 1234 before it builds the prompts). Every metric is lighteval's extractive match
(math-verify) under the key ``extractive_match``, one sample per problem at Tina's temperature: Pass@1.

One default moved since the lighteval Tina ran (ed084813): ``IndicesExtractionConfig`` no longer
tries to extract a letter without an anchor ("Answer:"), so Tina's GPQA metric sets it back. The
job also turns lighteval 0.13's ``remove_reasoning_tags`` off: Tina's lighteval scored the whole
completion, ``<think>`` block included.

``TASKS_TABLE`` is built on first access (PEP 562 ``__getattr__``), so importing this module stays
light for anything that merely lists tina's modules; lighteval reads the attribute when it loads
the file, which is when the heavy imports happen.
"""

from __future__ import annotations

from pathlib import Path

TINY_EVAL_DIR = Path(__file__).resolve().parents[1] / "tiny_data" / "tiny_eval"

# simple-evals' math template as Tina's run_eval_custom_tasks.py has it: math-verify needs the box.
MATH_QUERY_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be "
    "of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' "
    "(without quotes) where ANSWER is just the final number or expression that solves the problem. "
    "Think step by step before answering.\n\n{question}"
)

# simple-evals' multiple-choice template, as Tina's GPQA task has it.
GPQA_QUERY_TEMPLATE = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
    "step before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)

# Where each benchmark's data is: (dataset, subset, split). A local folder of JSONL files works too
# (subset "default"), as for the tiny benchmark.
DATA = {
    "tina_aime24": ("HuggingFaceH4/aime_2024", "default", "train"),
    "tina_aime25": ("yentinglin/aime_2025", "default", "train"),
    "tina_amc23": ("knoveleng/AMC-23", "default", "train"),
    "tina_math_500": ("HuggingFaceH4/MATH-500", "default", "test"),
    "tina_minerva": ("knoveleng/Minerva-Math", "default", "train"),
    "tina_gpqa_diamond": ("Idavidrein/gpqa", "gpqa_diamond", "train"),
    "tina_arith": (str(TINY_EVAL_DIR), "default", "test"),
}

# Tina's math benchmarks: the gold's column and its metric (expr_gold_metric / latex_gold_metric).
MATH_TASKS = {"tina_aime24": ("answer", "expr"), "tina_aime25": ("answer", "expr"), "tina_amc23": ("answer", "expr"),
              "tina_math_500": ("solution", "latex"), "tina_minerva": ("solution", "latex")}

TINA_GENERATION_SIZE = 32768


def _build_tasks_table() -> list:
    import dataclasses
    import random
    import re

    import numpy as np
    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
    from lighteval.metrics.utils.extractive_match_utils import (
        ExprExtractionConfig,
        IndicesExtractionConfig,
        LatexExtractionConfig,
    )
    from lighteval.metrics.utils.metric_utils import SampleLevelMetric
    from lighteval.tasks.lighteval_task import LightevalTaskConfig
    from lighteval.tasks.requests import Doc, SamplingMethod
    from lighteval.utils.language import Language

    def extractive_match(fn: MultilingualExtractiveMatchMetric) -> SampleLevelMetric:
        return SampleLevelMetric(metric_name="extractive_match", sample_level_fn=fn, category=SamplingMethod.GENERATIVE,
                                 corpus_level_fn=np.mean, higher_is_better=True)

    def math_match(gold, cls=MultilingualExtractiveMatchMetric) -> SampleLevelMetric:
        # Tina's expr_gold_metric / latex_gold_metric: the prediction's box is matched first.
        return extractive_match(cls(
            language=Language.ENGLISH, fallback_mode="first_match", precision=5,
            gold_extraction_target=(gold,),
            pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
            aggregation_function=max))

    metrics = {"expr": math_match(ExprExtractionConfig()), "latex": math_match(LatexExtractionConfig())}

    letters = IndicesExtractionConfig(prefix_for_extraction="NativeLetters", try_extract_without_anchor=True)
    gpqa_metric = extractive_match(MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH, gold_extraction_target=[letters], pred_extraction_target=[letters], precision=5))

    class AnswerTagMatch(MultilingualExtractiveMatchMetric):
        """Extractive match on the last ``<answer>...</answer>`` when there is one (math-verify finds
        nothing in ``<answer>7</answer>``: no anchor before the 7), else on the whole text, so a
        boxed answer still counts."""

        def compute(self, doc: Doc, model_response):
            def inner(text: str) -> str:
                tags = re.findall(r"<answer>(.*?)</answer>", text, flags=re.S)
                return f"${tags[-1].strip()}$" if tags and tags[-1].strip() else text

            resp = dataclasses.replace(model_response, text_post_processed=[inner(t) for t in model_response.final_text])
            return super().compute(doc=doc, model_response=resp)

    def math_prompt(gold_column: str):
        def prompt(line: dict, task_name: str | None = None) -> Doc:
            return Doc(task_name=task_name, query=MATH_QUERY_TEMPLATE.format(question=line["problem"]),
                       choices=[str(line[gold_column])], gold_index=0)
        return prompt

    def gpqa_prompt(line: dict, task_name: str | None = None) -> Doc:
        gold_index = random.randint(0, 3)
        options = [line["Incorrect Answer 1"], line["Incorrect Answer 2"], line["Incorrect Answer 3"]]
        options.insert(gold_index, line["Correct Answer"])
        query = GPQA_QUERY_TEMPLATE.format(question=line["Question"], A=options[0], B=options[1], C=options[2],
                                           D=options[3])
        return Doc(task_name=task_name, query=query, choices=["A", "B", "C", "D"], gold_index=gold_index)

    def arith_prompt(line: dict, task_name: str | None = None) -> Doc:
        # The tiny model's own wording: it knows no other. The format request comes from the
        # system prompt the run trained with, which the job passes on for this task.
        return Doc(task_name=task_name, query=line["problem"], choices=[str(line["answer"])], gold_index=0)

    def task(name: str, prompt_function, generation_size: int, metric, **extra) -> LightevalTaskConfig:
        repo, subset, split = DATA[name]
        return LightevalTaskConfig(name=name, prompt_function=prompt_function, hf_repo=repo, hf_subset=subset,
                                   hf_avail_splits=[split], evaluation_splits=[split], few_shots_split=None,
                                   few_shots_select=None, generation_size=generation_size, metrics=[metric],
                                   version=1, **extra)

    table = [task(name, math_prompt(gold), TINA_GENERATION_SIZE, metrics[kind])
             for name, (gold, kind) in MATH_TASKS.items()]
    table.append(task("tina_gpqa_diamond", gpqa_prompt, TINA_GENERATION_SIZE, gpqa_metric, stop_sequence=[]))
    table.append(task("tina_arith", arith_prompt, 64, math_match(ExprExtractionConfig(), cls=AnswerTagMatch)))
    return table


def __getattr__(name: str):
    if name == "TASKS_TABLE":
        table = _build_tasks_table()
        globals()["TASKS_TABLE"] = table
        return table
    raise AttributeError(name)
