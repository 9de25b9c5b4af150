"""lighteval custom tasks: the two Tina benchmarks lighteval 0.13 lacks, and the tiny CPU benchmark.

Pass this file to ``lighteval ... --custom-tasks``. lighteval 0.13 already ships ``aime24``,
``aime25``, ``math_500`` and ``gpqa:diamond``, and refuses custom tasks whose names clash with
built-ins, so the ones defined here are prefixed ``tina_``:

- ``tina_amc23``   knoveleng/AMC-23, gold an expression (Tina's ``expr_gold_metric``);
- ``tina_minerva`` knoveleng/Minerva-Math, gold a LaTeX solution (Tina's ``latex_gold_metric``);
- ``tina_arith``   a small arithmetic set shipped in ``tiny_data/tiny_eval/test.jsonl`` (a local folder,
  so it evaluates fully offline), the benchmark of the tiny CPU model; its metric is Tina's
  extractive match applied to the ``<answer>`` tag's content when there is one.

The prompts are the simple-evals ``\\boxed{ANSWER}`` template Tina evaluated with; the score is
lighteval's extractive match (math-verify), one sample per problem: Pass@1.

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



def _build_tasks_table() -> list:
    import dataclasses
    import re

    import numpy as np
    from lighteval.metrics.dynamic_metrics import (
        ExprExtractionConfig,
        LatexExtractionConfig,
        MultilingualExtractiveMatchMetric,
    )
    from lighteval.metrics.metrics import Metrics
    from lighteval.metrics.utils.metric_utils import SampleLevelMetric
    from lighteval.tasks.lighteval_task import LightevalTaskConfig
    from lighteval.tasks.requests import Doc, SamplingMethod
    from lighteval.utils.language import Language

    # Tina's latex_gold_metric (gone from lighteval 0.13): the gold is a LaTeX solution, the
    # prediction's box is matched first. Same key as expr_gold_metric: extractive_match.
    latex_gold_metric = SampleLevelMetric(
        metric_name="extractive_match",
        sample_level_fn=MultilingualExtractiveMatchMetric(
            language=Language.ENGLISH,
            fallback_mode="first_match",
            precision=5,
            gold_extraction_target=(LatexExtractionConfig(),),
            pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
            aggregation_function=max,
        ),
        category=SamplingMethod.GENERATIVE,
        corpus_level_fn=np.mean,
        higher_is_better=True,
    )

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

    arith_metric = SampleLevelMetric(
        metric_name="extractive_match",
        sample_level_fn=AnswerTagMatch(
            language=Language.ENGLISH,
            fallback_mode="first_match",
            precision=5,
            gold_extraction_target=(ExprExtractionConfig(),),
            pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
            aggregation_function=max,
        ),
        category=SamplingMethod.GENERATIVE,
        corpus_level_fn=np.mean,
        higher_is_better=True,
    )

    def math_prompt(gold_column: str):
        def prompt(line: dict, task_name: str | None = None) -> Doc:
            return Doc(task_name=task_name, query=MATH_QUERY_TEMPLATE.format(question=line["problem"]),
                       choices=[str(line[gold_column])], gold_index=0)
        return prompt

    def arith_prompt(line: dict, task_name: str | None = None) -> Doc:
        # The tiny model's own wording: it knows no other. The format request comes from the
        # system prompt the run trained with, which the CPU evaluation passes on.
        return Doc(task_name=task_name, query=line["problem"],
                   choices=[str(line["answer"])], gold_index=0)

    common = dict(hf_subset="default", few_shots_split=None, few_shots_select=None, version=1)
    return [
        LightevalTaskConfig(name="tina_amc23", prompt_function=math_prompt("answer"), hf_repo="knoveleng/AMC-23",
                            hf_avail_splits=["train"], evaluation_splits=["train"], generation_size=32768,
                            metrics=[Metrics.expr_gold_metric], **common),
        LightevalTaskConfig(name="tina_minerva", prompt_function=math_prompt("solution"),
                            hf_repo="knoveleng/Minerva-Math", hf_avail_splits=["train"], evaluation_splits=["train"],
                            generation_size=32768, metrics=[latex_gold_metric], **common),
        LightevalTaskConfig(name="tina_arith", prompt_function=arith_prompt, hf_repo=str(TINY_EVAL_DIR),
                            hf_avail_splits=["test"], evaluation_splits=["test"], generation_size=64,
                            metrics=[arith_metric], **common),
    ]


def __getattr__(name: str):
    if name == "TASKS_TABLE":
        table = _build_tasks_table()
        globals()["TASKS_TABLE"] = table
        return table
    raise AttributeError(name)
