"""``python -m tina_core.evaluate worker|job|merge|lighteval|vllm-engine ...``: the evaluation processes.
Each subcommand imports only what it needs (the worker stays light; the job loads the heavy stack)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from tina_core.evaluate.tasks import EvalError
from tina_core.rundir import RunDir, TinaError, tina_home


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tina_core.evaluate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run the workspace's evaluation queue until it is empty")
    w.add_argument("home")
    j = sub.add_parser("job", help="run one queued evaluation")
    j.add_argument("home")
    j.add_argument("run")
    j.add_argument("eval_id")
    m = sub.add_parser("merge", help="merge a LoRA checkpoint into its base model")
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--base", default=None, help="base model (default: adapter_config.json's)")
    m.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    c = sub.add_parser("lighteval", help="score a model on one task: lighteval, generating with vLLM or transformers")
    c.add_argument("--model", required=True)
    c.add_argument("--task", required=True, help="a task of tina's (aime24, ..., arith) or its lighteval name")
    c.add_argument("--output-dir", required=True)
    c.add_argument("--backend", choices=["vllm", "transformers"], required=True)
    c.add_argument("--gpus", default="", help="GPU ids for vLLM, one engine each (none: the CPU)")
    c.add_argument("--recipe", default=None, help="the run's recipe: its system prompt, for the tiny benchmark")
    c.add_argument("--max-samples", type=int, default=None)
    e = sub.add_parser("vllm-engine", help="one vLLM engine of a data-parallel evaluation (run by lighteval)")
    e.add_argument("request")
    e.add_argument("out")
    a = p.parse_args(argv)
    try:
        if a.cmd == "worker":
            from tina_core.evaluate.worker import worker_main

            return worker_main(a.home)
        if a.cmd == "job":
            from tina_core.evaluate.job import run_job

            h = tina_home(a.home)
            rc = run_job(h, RunDir(h / "runs" / a.run), a.eval_id)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)  # the result is recorded: skip seconds of torch/lighteval teardown
        if a.cmd == "vllm-engine":
            from tina_core.evaluate.vllm_model import engine_main

            return engine_main(a.request, a.out)
        from tina_core.evaluate.job import merge_adapter, run_lighteval
        from tina_core.evaluate.vllm_model import devices_for

        if a.cmd == "merge":
            merge_adapter(a.adapter, a.out, base=a.base, dtype=a.dtype)
            return 0
        gpus = [int(g) for g in a.gpus.split(",") if g.strip()]
        run_lighteval(a.model, a.task, a.output_dir, backend=a.backend, devices=devices_for(gpus), recipe=a.recipe,
                      max_samples=a.max_samples)
        return 0
    except (EvalError, TinaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
