"""The cost meter: GPU-seconds x $/GPU-hour, computed from a run's events alone.

Every GPU process (a trainer attempt, an evaluation) appears in ``events.jsonl`` as a start and an
end with the number of GPUs it held. Summing those intervals survives restarts of the trainer, the
supervisor and the cockpit, because nothing is kept in memory. An attempt still open counts up
to ``open_until`` (now while the run is live, else its supervisor's last heartbeat); an evaluation
still open up to its job's last sign of life (now while the job lives, else its log's last write).

CPU runs hold no GPU: they cost ``cpu_hour_usd`` per hour of process time (``$0`` unless priced).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, TypedDict

from tina_core import runstate
from tina_core.events import EVAL_ENDED, Kind, gpu_count, kind_of
from tina_core.rundir import RunDir, RunInfo, TinaError, iter_jsonl, workspace_config

CHECK_PROVIDER = "default, check your provider"
# $/GPU-hour. L40S is the paper's figure; the others are typical on-demand cloud prices.
BUILTIN_PRICES: dict[str, tuple[float, str]] = {
    "L40S": (1.00, "Tina paper: 2x L40S at about $1/GPU-hour"),
    "H200": (3.50, CHECK_PROVIDER),
    "H100": (2.50, CHECK_PROVIDER),
    "A100": (1.50, CHECK_PROVIDER),
    "A10G": (1.00, CHECK_PROVIDER),
    "L4": (0.70, CHECK_PROVIDER),
    "RTX 4090": (0.40, CHECK_PROVIDER),
}


@dataclass(frozen=True)
class Price:
    gpu_hour_usd: float
    cpu_hour_usd: float
    source: str


def _model_key(device: str, table: Iterable[str]) -> str | None:
    """The table entry naming this GPU model ("NVIDIA L40S" -> "L40S"; "L4" never matches "L40S")."""
    name = device.upper()
    for key in sorted(table, key=len, reverse=True):
        if re.search(rf"(?<![A-Z0-9]){re.escape(key.upper())}(?![A-Z0-9])", name):
            return key
    return None


def _is_price(v: Any) -> bool:
    """Dollars per hour: a finite number >= 0 (an infinite one makes every cost Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def user_prices(home: Path) -> dict[str, float]:
    """``prices:`` from ``$TINA_HOME/config.yaml`` (``{L40S: 1.0, cpu: 0.1}``)."""
    prices = workspace_config(home).get("prices", {})
    if not isinstance(prices, dict) or not all(_is_price(v) for v in prices.values()):
        raise TinaError(f"{home / 'config.yaml'}: 'prices' must map a GPU model (or 'cpu') to $/hour >= 0, "
                        "e.g. prices: {L40S: 1.0}")
    return {str(k): float(v) for k, v in prices.items()}


def resolve_price(home: Path, device: str, *, cli_gpu_hour_usd: float | None = None,
                  recipe_gpu_hour_usd: float | None = None,
                  recipe_cpu_hour_usd: float | None = None) -> Price:
    """The price of this run, first match wins: command line, recipe, config.yaml, built-in table."""
    if cli_gpu_hour_usd is not None and not _is_price(cli_gpu_hour_usd):
        raise TinaError(f"--gpu-hour-usd: expected dollars >= 0, got {cli_gpu_hour_usd!r}")
    prices = user_prices(home)
    cpu = recipe_cpu_hour_usd if recipe_cpu_hour_usd is not None else prices.get("cpu", 0.0)
    if device == "cpu":
        return Price(0.0, float(cpu), "recipe price.cpu_hour_usd" if recipe_cpu_hour_usd is not None
                     else "config.yaml" if "cpu" in prices else "cpu (free unless priced)")
    if cli_gpu_hour_usd is not None:
        return Price(float(cli_gpu_hour_usd), cpu, "--gpu-hour-usd")
    if recipe_gpu_hour_usd is not None:
        return Price(float(recipe_gpu_hour_usd), cpu, "recipe price.gpu_hour_usd")
    key = _model_key(device, prices)
    if key is not None:
        return Price(prices[key], cpu, f"{home / 'config.yaml'}")
    key = _model_key(device, BUILTIN_PRICES)
    if key is not None:
        usd, note = BUILTIN_PRICES[key]
        return Price(usd, cpu, f"built-in {key} ${usd:.2f} ({note})")
    return Price(0.0, cpu, f"unknown GPU {device!r}: no price (use --gpu-hour-usd)")


# --- metrics: the step clock ---------------------------------------------------------------------
def step_times(records: Iterable[dict[str, Any]]) -> dict[int, tuple[float, int]]:
    """``{step: (ts, attempt)}`` with each step once, the latest attempt's record. A new attempt
    resumes from a checkpoint, so its first step supersedes everything the dead one logged from
    that step on."""
    out: dict[int, tuple[float, int]] = {}
    attempt = None
    for rec in records:
        step, ts = rec.get("step"), rec.get("ts")
        if not isinstance(step, int) or not isinstance(ts, (int, float)):
            continue
        a = rec.get("attempt", 1)
        if a != attempt:
            if attempt is not None and isinstance(a, int) and isinstance(attempt, int) and a > attempt:
                for s in [s for s in out if s >= step]:
                    del out[s]
            attempt = a
        out[step] = (float(ts), a)
    return dict(sorted(out.items()))


def seconds_per_step(times: dict[int, tuple[float, int]], window: int = 20) -> float | None:
    """Recent wall seconds per step, from the latest attempt's last ``window`` steps."""
    if not times:
        return None
    last_attempt = times[max(times)][1]
    recent = [(s, ts) for s, (ts, a) in times.items() if a == last_attempt][-window:]
    if len(recent) < 2 or recent[-1][0] == recent[0][0]:
        return None
    return max(0.0, (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]))


# --- GPU intervals --------------------------------------------------------------------------------
@dataclass
class Interval:
    kind: str          # "train" or "eval"
    key: Any           # attempt number or eval id
    start: float
    end: float | None  # None while the process is alive (or its end was never recorded)
    gpus: int


def intervals(events: Iterable[dict[str, Any]]) -> list[Interval]:
    out: list[Interval] = []
    open_: dict[tuple[str, Any], Interval] = {}
    for ev in events:
        kind, ts = kind_of(ev), ev.get("ts")
        if not isinstance(ts, (int, float)):
            continue
        if kind in (Kind.ATTEMPT_STARTED, Kind.EVAL_STARTED):
            train = kind is Kind.ATTEMPT_STARTED
            iv = Interval("train" if train else "eval", ev.get("attempt") if train else ev.get("eval_id"),
                          float(ts), None, gpu_count(ev))
            open_[(iv.kind, iv.key)] = iv
            out.append(iv)
        elif kind is Kind.ATTEMPT_EXITED or kind in EVAL_ENDED:
            k = ("train", ev.get("attempt")) if kind is Kind.ATTEMPT_EXITED else ("eval", ev.get("eval_id"))
            ended = open_.pop(k, None)
            if ended is not None:  # end_ts: when a dead supervisor's attempt really ended
                end = ev.get("end_ts", ts)
                ended.end = float(end if isinstance(end, (int, float)) else ts)
    return out


STALE_STEPS = 5       # a live run's latest step older than this many steps of its pace...
STALE_MIN_S = 60.0    # ...and than this: its ETA is unknown, the run shown stalled (Meter.stalled_s)


class CostUsd(TypedDict):
    """A run's dollars so far: training, evaluation and both."""

    train: float
    eval: float
    total: float


class Meter:
    """Cost figures for one run, computed from its events and metrics."""

    def __init__(self, info: RunInfo, events: list[dict[str, Any]],
                 times: dict[int, tuple[float, int]], *, open_until: float | None = None,
                 eval_open_until: float | None = None, eval_ends: dict[Any, float] | None = None) -> None:
        self.gpu_hour_usd = float(info.gpu_hour_usd or 0.0)
        self.cpu_hour_usd = float(info.cpu_hour_usd or 0.0)
        self.stop_at_step = info.planned_steps
        self.intervals = intervals(events)
        self.times = times
        now = time.time()
        self.open_until = now if open_until is None else open_until
        self.eval_open_until = now if eval_open_until is None else eval_open_until
        self.eval_ends = eval_ends or {}  # eval id -> where its open interval ends (open_eval_ends)

    @classmethod
    def for_run(cls, run_dir: RunDir, **kw: Any) -> "Meter":
        events = run_dir.read_events()
        if "eval_open_until" not in kw:
            kw.setdefault("eval_ends", runstate.open_eval_ends(run_dir, events))
        return cls(RunInfo.read(run_dir), events, step_times(iter_jsonl(run_dir.metrics)), **kw)

    def usd_per_hour(self, iv: Interval) -> float:
        return iv.gpus * self.gpu_hour_usd if iv.gpus > 0 else self.cpu_hour_usd

    def _end(self, iv: Interval) -> float:
        if iv.end is not None:
            return iv.end
        if iv.kind == "eval" and iv.key in self.eval_ends:
            return max(iv.start, self.eval_ends[iv.key])
        return max(iv.start, self.open_until if iv.kind == "train" else self.eval_open_until)

    def spent(self, kind: str, until: float | None = None) -> float:
        total = 0.0
        for iv in self.intervals:
            if iv.kind != kind:
                continue
            end = self._end(iv) if until is None else min(self._end(iv), until)
            total += max(0.0, end - iv.start) * self.usd_per_hour(iv) / 3600
        return total

    def seconds(self, kind: str) -> float:
        """Wall seconds the processes of this kind were alive (all attempts)."""
        return sum(max(0.0, self._end(iv) - iv.start) for iv in self.intervals if iv.kind == kind)

    def gpu_hours(self, kind: str) -> float:
        return sum(max(0.0, self._end(iv) - iv.start) * iv.gpus for iv in self.intervals
                   if iv.kind == kind) / 3600

    def cost_usd(self) -> CostUsd:
        train, ev = self.spent("train"), self.spent("eval")
        return CostUsd(train=round(train, 6), eval=round(ev, 6), total=round(train + ev, 6))

    def cost_at_step(self, step: int) -> float | None:
        """Training cost when ``step`` was logged (None if it never was)."""
        hit = self.times.get(step)
        return None if hit is None else round(self.spent("train", until=hit[0]), 6)

    def usd_per_hour_now(self) -> float:
        """What the processes alive now cost per hour."""
        return sum(self.usd_per_hour(iv) for iv in self.intervals if iv.end is None)

    def seconds_per_step(self) -> float | None:
        return seconds_per_step(self.times)

    def train_usd_per_hour(self) -> float:
        """What the latest trainer attempt costs (or cost) per hour."""
        trains = [iv for iv in self.intervals if iv.kind == "train"]
        return self.usd_per_hour(trains[-1]) if trains else 0.0

    def stalled_s(self, now: float) -> float | None:
        """Seconds since the latest logged step once that is far longer than the pace says a step
        takes (STALE_STEPS steps, and STALE_MIN_S at least): a trainer stopped (SIGSTOP), hung, or
        starting again; an ETA from the pace would then be stale. None while steps come."""
        if not self.times:
            return None
        age = now - max(ts for ts, _ in self.times.values())
        return round(age, 1) if age > max(STALE_STEPS * (self.seconds_per_step() or 0.0), STALE_MIN_S) else None

    def eta_s(self, step: int | None) -> float | None:
        sps = self.seconds_per_step()
        if sps is None or not self.stop_at_step or step is None:
            return None
        return max(0, self.stop_at_step - step) * sps

    def projected_usd(self, step: int | None, *, finished: bool = False) -> float | None:
        """Total cost when training reaches ``stop_at_step`` at the recent pace and price, plus the
        evaluations so far."""
        now = self.cost_usd()
        if finished:
            return now["total"]
        eta = self.eta_s(step)
        if eta is None or not any(iv.kind == "train" for iv in self.intervals):
            return None
        return round(now["total"] + eta * self.train_usd_per_hour() / 3600, 6)


MEASURED = "measured here"  # a figure from this workspace's own runs, not a documented one


# --- before an evaluation: what it will cost ----------------------------------------------------
# Seconds one evaluation (one model, one task) takes, by where it runs, until this workspace has
# measured its own: the median of its finished evaluations of that task on as many GPUs.
EVAL_SECONDS: dict[str, tuple[float, str]] = {
    "gpu": (3600.0, "Tina's: her baseline re-evaluation, one model on her six benchmarks, cost $6 on 2 x L40S "
                    "at $1/GPU-hour (the paper's cost table): 3 h of the 2 GPUs, 1 GPU-hour a benchmark"),
    "cpu": (10.0, "the tiny recipe's arithmetic task on 2 CPU cores: a checkpoint's and the base model's took "
                  "7 s each (`tina eval RUN --checkpoint 6 --wait`, lighteval's transformers backend)"),
}


@dataclass(frozen=True)
class EvalPrice:
    """What one evaluation is projected to cost, and why."""

    usd: float
    seconds: float   # wall seconds on its GPUs (or CPU)
    source: str


def median(values: Sequence[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def eval_seconds_measured(home: Path, task: str, gpus: int) -> list[float]:
    """How long this workspace's finished evaluations of ``task`` on ``gpus`` GPUs took."""
    from tina_core.rundir import list_run_dirs

    out = []
    for rd in list_run_dirs(home):
        for e in runstate.evaluations(rd).values():
            start, end = e.get("started_ts"), e.get("ended_ts")
            if e["state"] == "finished" and e["task"] == task and len(e["gpus"]) == gpus \
                    and isinstance(start, (int, float)) and isinstance(end, (int, float)) and end > start:
                out.append(end - start)
    return out


def eval_price(home: Path, info: RunInfo, task: str, gpus: list[int],
               measures: dict[tuple[str, int], list[float]] | None = None) -> EvalPrice:
    """One evaluation of ``task`` on ``gpus`` (ids; none: the CPU) for the run of ``info``
    (run.json: its prices): this workspace's median time for it where it has one, else EVAL_SECONDS
    (on N GPUs, the documented GPU-hours spread over them), at the run's price."""
    n = len(gpus)
    seen = (measures or {}).get((task, n)) if measures is not None else eval_seconds_measured(home, task, n)
    if seen:
        seconds, source = median(seen), f"{MEASURED} over {len(seen)} evaluation(s) of {task}"
    elif n:
        seconds, source = EVAL_SECONDS["gpu"][0] / n, EVAL_SECONDS["gpu"][1]
    else:
        seconds, source = EVAL_SECONDS["cpu"]
    per_hour = n * float(info.gpu_hour_usd or 0.0) if n else float(info.cpu_hour_usd or 0.0)
    return EvalPrice(round(seconds * per_hour / 3600, 6), seconds, source)



def usd_text(v: float | None) -> str:
    """Dollars as a person reads them: ``$1,234.56``, ``$0.23``, and under a cent in cents
    (``0.05¢``), so a CPU box's run shows its money moving."""
    if v is None:
        return "-"
    return f"${v:,.2f}" if abs(v) >= 0.01 else f"{v * 100:.2f}¢"


def device_key(name: str) -> str:
    """``cpu``, or the GPU model as the price table names it ("NVIDIA L40S" -> "L40S")."""
    return "cpu" if name == "cpu" else (_model_key(name, BUILTIN_PRICES) or name)
