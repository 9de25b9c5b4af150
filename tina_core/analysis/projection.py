"""Before launch: what a recipe will cost to train, to its ``stop_at_step`` and to its typical
transition (``tina run --dry-run``, ``tina sweep``, the cockpit's recipe picker).

A price (``cost.resolve_price``) times a pace: this workspace's own for the model and device where it
has measured one (``measured``), else the documented one (``STEP_SECONDS``); the transition where
this workspace's markers put it, else the paper's best checkpoint as a share of an epoch
(``recipe.paper``), else ``TYPICAL_TRANSITION``. Light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tina_core.analysis.cost import MEASURED, device_key, median, resolve_price, seconds_per_step, step_times, usd_text
from tina_core.events import Kind, is_kind, marker
from tina_core.recipe import paper
from tina_core.rundir import RunInfo, iter_jsonl

# Seconds per optimizer step of a model on a device (model, GPU model or "cpu", GPUs) and why, until
# the workspace has measured its own: its runs of the same model on the same device (MEASURED_MIN_STEPS
# steps or more, live or ended, not failed) then decide. The dry run says "assumes N s/step because <why>".
STEP_SECONDS: dict[tuple[str, str, int], tuple[float, str]] = {
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "L40S", 2): (
        60.0, "it is Tina's on 2 x L40S (the paper: a step within a minute), with her layout: four "
              "vLLM generations one after another on GPU 0 each step; tina generates on both GPUs in one "
              "call a step, estimated at 25-45 s/step, so this is an upper bound until a run here measures it"),
    ("tiny", "cpu", 0): (0.12, "bench/tiny_phase_transition.py measured 10-15 s for its 100 steps on 2 cores"),
}
ASSUMED_GPU = "L40S"  # a GPU recipe planned on a machine without one: Tina's hardware
# Where a recipe's transition typically falls, for those the paper has no figure for (its best
# checkpoints are "% of 1 epoch", see recipe.paper): the tiny recipe's, seed 42, as
# bench/tiny_phase_transition.py prints it (bench/stop_policy.py shows the spread over seeds).
TYPICAL_TRANSITION: dict[str, tuple[int, str]] = {
    "tiny": (47, "the tiny recipe's with seed 42, bench/tiny_phase_transition.py"),
}
MEASURED_MIN_STEPS = 10  # a run's pace counts once it has this many steps


@dataclass(frozen=True)
class LaunchCost:
    """A recipe's projected training cost to ``stop_at_step`` and to its typical transition."""

    device: str                  # "2 x L40S (assumed: no GPU here)", "cpu"
    usd_per_hour: float
    price_source: str
    seconds_per_step: float | None
    pace_source: str
    stop_at_step: int
    transition_step: int | None
    transition_source: str

    def usd_to(self, step: int | None) -> float | None:
        if step is None or self.seconds_per_step is None:
            return None
        return round(step * self.seconds_per_step * self.usd_per_hour / 3600, 6)

    def hours_to(self, step: int | None) -> float | None:
        return None if step is None or self.seconds_per_step is None else step * self.seconds_per_step / 3600

    def lines(self) -> list[str]:
        """The dry run's ``# cost`` section."""
        def money(step: int | None) -> str:
            usd, h = self.usd_to(step), self.hours_to(step)
            return "unknown (no pace for this model and device yet)" if usd is None or h is None else \
                f"{usd_text(usd)} ({h * 60:,.1f} min)" if h < 1 else f"{usd_text(usd)} ({h:,.1f} h)"
        if self.seconds_per_step is None:
            pace = f"unknown: {self.pace_source}"
        elif self.pace_source.startswith(MEASURED):
            pace = f"{self.seconds_per_step:.3g} s/step, {self.pace_source}"
        else:
            pace = f"assumes {self.seconds_per_step:.3g} s/step because {self.pace_source}"
        out = [f"# cost, training only: {self.device}, ${self.usd_per_hour:g}/hour ({self.price_source})",
               f"#   pace: {pace}",
               f"#   to stop_at_step {self.stop_at_step}: {money(self.stop_at_step)}"]
        if self.transition_step is None:
            out.append(f"#   to the typical transition: {self.transition_source}")
        else:
            out.append(f"#   to the typical transition, step ~{self.transition_step} ({self.transition_source}): "
                       f"{money(self.transition_step)}")
        return out


def measured(home: Path, store: Any = None) -> tuple[dict[tuple, list[float]], dict[str, list[int]]]:
    """What this workspace has measured itself: seconds per step by (model, device, GPUs) over its
    runs with MEASURED_MIN_STEPS steps or more, live or ended but not failed (a live one counts as
    soon as it has them), and
    transition steps by recipe file stem (the markers its supervisors placed)."""
    from tina_core.recipe.loader import parse_yaml
    from tina_core.rundir import list_run_dirs

    paces: dict[tuple, list[float]] = {}
    transitions: dict[str, list[int]] = {}
    for rd in list_run_dirs(home):
        info = RunInfo.read(rd)
        if info.imported:
            continue
        events = rd.read_events()
        if (m := marker(events)) is not None and info.recipe:
            transitions.setdefault(Path(info.recipe).stem, []).append(int(m["step"]))
        if any(is_kind(e, Kind.FAILED, Kind.CANCELLED) for e in events):
            continue  # a failed run's steps say more about what failed than about the pace
        try:
            model = ((parse_yaml(rd.recipe.read_text()) or {}).get("model") or {}).get("name_or_path")
        except Exception:
            continue
        clock = None
        if store is not None:
            try:
                clock = store.step_clock(rd.run_id)[0]
            except Exception:
                clock = None
        times = clock if clock is not None else step_times(iter_jsonl(rd.metrics))
        if len(times) >= MEASURED_MIN_STEPS and (pace := seconds_per_step(times, window=len(times))):
            key = (model, device_key(info.device or "cpu"), info.gpu_count or 0)
            paces.setdefault(key, []).append(pace)
    return paces, transitions


def launch_cost(home: Path, recipe: Any, *, gpu_name: str | None = None,
                measures: tuple[dict, dict] | None = None) -> LaunchCost:
    """What ``recipe`` will cost to train, before it runs: its price (as ``tina run`` resolves it)
    times a pace, this workspace's own for the model and device where it has one, else the
    documented one (STEP_SECONDS). ``gpu_name``: the GPU here (None: none, so Tina's L40S)."""
    gpus = recipe.gpus
    device = "cpu" if not gpus else (gpu_name or ASSUMED_GPU)
    price = resolve_price(home, device, recipe_gpu_hour_usd=recipe.get("price.gpu_hour_usd"),
                          recipe_cpu_hour_usd=recipe.get("price.cpu_hour_usd"))
    usd_per_hour = gpus * price.gpu_hour_usd if gpus else price.cpu_hour_usd
    label = "cpu" if not gpus else (f"{gpus} x {device_key(device)}" + ("" if gpu_name else " (assumed: no GPU here)")
                                    + f" at ${price.gpu_hour_usd:g}/GPU-hour")
    paces, transitions = measures if measures is not None else measured(home)
    model = "tiny" if recipe.is_tiny else str(recipe.get("model.name_or_path"))
    key = (model, device_key(device), gpus)
    if paces.get(key):
        pace, pace_source = median(paces[key]), f"{MEASURED} over {len(paces[key])} run(s)"
    elif key in STEP_SECONDS:
        pace, pace_source = STEP_SECONDS[key]
    else:
        pace, pace_source = None, f"no documented pace for {model} on {label}"
    stem = recipe.source.stem
    row = paper.rows_for(stem)
    pct = next((r["best_pct_epoch"] for r in (row["main"], row["ablation"]) if r and r.get("best_pct_epoch")), None)
    per_epoch = recipe.steps_per_epoch if pct is not None else None
    if transitions.get(stem):
        step, source = int(median(transitions[stem])), f"measured here over {len(transitions[stem])} run(s)"
    elif pct is not None and per_epoch:
        step, source = round(pct / 100 * per_epoch), f"{pct}% of an epoch, the paper's best checkpoint"
    elif stem in TYPICAL_TRANSITION:
        step, source = TYPICAL_TRANSITION[stem]
    else:
        step, source = None, "none known for this recipe (the paper has no figure for it, and no run here had one)"
    return LaunchCost(label, usd_per_hour, price.source, pace, pace_source, recipe.stop_at_step,
                      None if step is None else min(step, recipe.stop_at_step), source)
