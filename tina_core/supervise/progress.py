"""A foreground run's progress: a live panel on a terminal, plain lines otherwise.

Reads progress from metrics.jsonl (tailed), never from the trainer's output.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from tina_core.rundir import JsonlTail, RunDir, RunInfo

if TYPE_CHECKING:
    from rich.live import Live


class Display:
    """Foreground progress: a live panel on a terminal, plain lines otherwise. Reads progress
    from metrics.jsonl (tailed), never from the trainer's output."""

    KEYS = {"format": ("rewards/format_reward/mean", "rewards/format_reward"),
            "accuracy": ("rewards/accuracy_reward/mean", "rewards/accuracy_reward"),
            "length": ("completions/mean_length", "completion_length")}

    def __init__(self, run_dir: RunDir, *, live: bool, quiet: bool = False, stream=None) -> None:
        self.run_dir = run_dir
        self.live_mode = live
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._tail = JsonlTail(run_dir.metrics)
        self._last: dict[str, Any] | None = None
        self._shown_step = None
        self._last_draw = 0.0
        self._live: Live | None = None

    def silence(self) -> None:
        self.quiet = True
        if self._live is not None:
            try:
                self._live.stop()
            except Exception:
                pass
            self._live = None

    def _read_new(self) -> None:
        for rec in self._tail.read()[0]:
            # the trainer's final summary log (train_runtime...) carries no step metrics
            if isinstance(rec.get("step"), int) and "train_runtime" not in rec:
                self._last = rec

    def _pick(self, name: str) -> float | None:
        for key in self.KEYS[name]:
            if self._last and isinstance(self._last.get(key), (int, float)):
                return self._last[key]
        return None

    def figures(self) -> dict[str, Any]:
        from tina_core.analysis.cost import Meter

        info = RunInfo.read(self.run_dir)
        meter = Meter.for_run(self.run_dir)
        step = self._last["step"] if self._last else None
        return {"step": step, "target": info.planned_steps,
                "format": self._pick("format"), "accuracy": self._pick("accuracy"), "length": self._pick("length"),
                "s_per_step": meter.seconds_per_step(), "eta": meter.eta_s(step),
                "usd": meter.cost_usd()["total"], "usd_per_hour": meter.usd_per_hour_now(),
                "projected": meter.projected_usd(step)}

    @staticmethod
    def _num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def line(self, f: dict[str, Any] | None = None) -> str:
        f = f or self.figures()
        n = self._num
        return (f"step {n(f['step'], 'd')}/{f['target'] or '?'}  format {n(f['format'], '.3f')}  "
                f"accuracy {n(f['accuracy'], '.3f')}  length {n(f['length'], '.1f')}  "
                f"{n(f['s_per_step'], '.2f')} s/step  ETA {_hms(f['eta'])}  ${f['usd']:.4f}"
                + (f" (projected ${f['projected']:.4f})" if f["projected"] is not None else ""))

    def panel(self, f: dict[str, Any]):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        n = self._num
        grid = Table.grid(padding=(0, 2))
        grid.add_row(f"[bold]{self.run_dir.run_id}[/bold]")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=float(f["target"] or 1), completed=float(f["step"] or 0), width=40),
                    f"step {n(f['step'], 'd')}/{f['target'] or '?'}",
                    f"{n(f['s_per_step'], '.2f')} s/step", f"ETA {_hms(f['eta'])}")
        grid.add_row(bar)
        grid.add_row(f"format [bold]{n(f['format'], '.3f')}[/bold]   accuracy [bold]{n(f['accuracy'], '.3f')}"
                     f"[/bold]   completion length [bold]{n(f['length'], '.1f')}[/bold]")
        grid.add_row(f"cost [bold]${f['usd']:.4f}[/bold] at ${f['usd_per_hour']:.2f}/h   projected "
                     + (f"[bold]${f['projected']:.4f}[/bold]" if f["projected"] is not None else "-")
                     + "   [dim]Ctrl-C: save and stop[/dim]")
        return grid

    def update(self, force: bool = False) -> None:
        if self.quiet:
            return
        self._read_new()
        now = time.monotonic()
        if self.live_mode:
            if force or now - self._last_draw >= 0.5:
                self._last_draw = now
                self._draw_live()
        elif self._last and self._last["step"] != self._shown_step:
            self._shown_step = self._last["step"]
            self._print(self.line())

    def _draw_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        view = self.panel(self.figures())
        if self._live is None:
            self._live = Live(view, console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.console.print(f"[dim]{_escape(text)}[/dim]")
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except OSError:  # the terminal went away
            self.quiet = True

    def close(self) -> None:
        if not self.quiet:
            self.update(force=True)
        if self._live is not None:
            self._live.stop()
            self._live = None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


