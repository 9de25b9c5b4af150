"""Cockpit benchmark on workspaces of 20 runs x 13,000 steps and of 60 runs x 2,000 steps, the
latter one sweep's runs (deterministic synthetic JSONL).

Prints: time to first frame (cold and warm index), refresh cycle p50/p95 while a live run grows
a step every refresh (the worst case) and between its steps (Tina logs a step about a minute),
idle CPU of a real `tina-tui` process following a live run (a step a second, and between its
steps), RSS growth over a refresh soak.
Targets: first frame <= 1 s, refresh p95 <= 50 ms, idle CPU <= 5% of a core, RSS growth <= 10%.

    .venv/bin/python bench/tui.py [--workloads 20x13000,60x2000:sweep] [--soak 10000] [--cpu-seconds 20]

Each workload (RUNSxSTEPS, ``:sweep`` for one sweep's runs) is measured in a workspace of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tina_tui.demo import SyntheticRun

LIVE_ID = "live-00"


def build(home: Path, runs: int, steps: int, sweep: str | None = None) -> None:
    """``runs`` ended runs of ``steps`` steps; with ``sweep``, all of them that sweep's (local)."""
    from tina_core.rundir import write_json_atomic
    from tina_core.sweep import record

    made = []
    for i in range(runs):
        rd = SyntheticRun(f"run-{i:02d}", name=f"run-{i:02d}", steps=steps, stop_at_step=steps, max_steps=2 * steps,
                          save_steps=500, dataset_size=steps * 8, transition=int(steps * (0.2 + 0.03 * (i % 20))),
                          seed=i, step_s=1.0, state="finished" if i % 3 else "stopped").write(home)
        if sweep:
            write_json_atomic(rd.run_json, {**rd.info(), "sweep": sweep, "sweep_index": i})
        made.append(rd.run_id)
    if sweep:
        record.sweep_dir(home, sweep).mkdir(parents=True)
        record.write_sweep(home, record.Sweep(name=sweep, engine="local", max_parallel=2, runs=tuple(made)))


def workloads(text: str) -> list[tuple[int, int, str | None]]:
    """``20x13000,60x2000:sweep`` as ``[(20, 13000, None), (60, 2000, "bench")]``."""
    out = []
    for part in text.split(","):
        size, _, tag = part.partition(":")
        runs, steps = size.split("x")
        out.append((int(runs), int(steps), "bench" if tag == "sweep" else None))
    return out


class LiveWriter:
    """Appends one step a `period` and keeps the heartbeat fresh, like a training run."""

    def __init__(self, home: Path, period: float, pid: int | None = None) -> None:
        self.synthetic = SyntheticRun(LIVE_ID, name="live", steps=100, stop_at_step=100000, max_steps=200000,
                                state="running", start_ts=time.time() - 100, step_s=1.0, seed=99)
        self.rd = self.synthetic.write(home)
        self.period, self.pid, self.step = period, pid, 100
        self.stop_flag = threading.Event()

    def append(self) -> None:
        import random

        self.step += 1
        self.rd.log_metrics(self.step, 1, self.synthetic.metrics_at(self.step, random.Random(self.step)))
        with self.rd.train_log.open("a") as f:
            f.write(f"step {self.step}\n")
        SyntheticRun.heartbeat(self.rd, self.pid)

    def loop(self, steps: bool = True) -> None:
        """A step a ``period``; with ``steps`` off, only the heartbeat (a run between its steps:
        Tina's take about a minute each)."""
        while not self.stop_flag.wait(self.period):
            if steps:
                self.append()
            else:
                SyntheticRun.heartbeat(self.rd, self.pid)


def first_frame(home: Path) -> dict[str, float]:
    """A fresh `tina-tui` process: seconds from exec to the first paint and to the first data."""
    code = (
        "import time, sys; t0 = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from tina_tui.app import TinaApp\n"
        "class B(TinaApp):\n"
        # Textual runs each class's handler in the MRO: these add to TinaApp's, not replace them.
        "    def on_mount(self):\n"
        "        self.call_after_refresh(lambda: setattr(self, 'painted', time.perf_counter() - t0))\n"
        "    def on_refreshed(self, m):\n"
        "        self.data = time.perf_counter() - t0; self.call_after_refresh(self.exit)\n"
        "app = B(Path(sys.argv[1]), refresh_s=0)\n"
        "app.run(headless=True, size=(160, 48))\n"
        "print(app.painted, app.data)\n")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"first-frame probe failed:\n{out.stderr[-3000:]}")
    wall = time.perf_counter() - t
    painted, data = map(float, out.stdout.split()[-2:])
    return {"paint": painted, "data": data, "process": wall}


async def refresh_cycles(home: Path, n: int, live: LiveWriter | None) -> list[float]:
    """Seconds per refresh, from asking for it to the screen painted with its snapshot; ``live``:
    a new step each time. Timed by the app's own after-refresh callback: Pilot's pause sleeps in
    20 ms slices while it waits for the app to go idle, which is not the app's time."""
    from tina_tui.app import TinaApp

    class Timed(TinaApp):
        painted: asyncio.Event | None = None

        # Textual runs each class's handler in the MRO: this adds to TinaApp's, after it applies.
        def on_refreshed(self, message) -> None:
            if self.painted is not None:
                self.call_after_refresh(self.painted.set)

    app = Timed(home, run=LIVE_ID, refresh_s=0)
    times = []
    async with app.run_test(size=(160, 48)) as pilot:
        await _settle(app, pilot)
        for _ in range(n):
            if live is not None:
                live.append()
            app.painted = asyncio.Event()
            t = time.perf_counter()
            app.refresh_data()
            await app.painted.wait()
            times.append(time.perf_counter() - t)
            await _settle(app, pilot)  # nothing left in flight before the next one
    return times


async def _settle(app, pilot) -> None:
    while True:
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not app.refreshing and not any(w.is_running for w in app.workers):
            return


async def soak(home: Path, n: int, live: LiveWriter) -> tuple[float, float]:
    from tina_tui.app import TinaApp

    proc = psutil.Process()
    app = TinaApp(home, run=LIVE_ID, refresh_s=0)
    async with app.run_test(size=(160, 48)) as pilot:
        warm = max(1, n // 10)
        rss0 = 0.0
        for i in range(n):
            if i % 50 == 0:
                live.append()
            app.refresh_data()
            await _settle(app, pilot)
            if i == warm:
                rss0 = proc.memory_info().rss
        rss1 = proc.memory_info().rss
    return rss0, rss1


def idle_cpu(home: Path, seconds: float) -> float:
    """% of one core used by a real `tina-tui` (1 s refresh) while a live run logs a step a second."""
    exe = Path(sys.executable).with_name("tina-tui")
    child = subprocess.Popen(["script", "-qfec", f"{exe} --home {home} --run {LIVE_ID}", "/dev/null"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "48"})
    try:
        time.sleep(8)  # start-up and the first refreshes are not idle
        procs = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
        cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        return 100 * (cpu1 - cpu0) / (time.monotonic() - t0)
    finally:
        child.terminate()
        child.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", type=workloads, default=workloads("20x13000,60x2000:sweep"),
                    help="RUNSxSTEPS[:sweep],...: each in a workspace of its own")
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--soak", type=int, default=10000)
    ap.add_argument("--cpu-seconds", type=float, default=20)
    args = ap.parse_args()
    for runs, steps, sweep in args.workloads:
        measure(args, runs, steps, sweep)


def measure(args, runs: int, steps: int, sweep: str | None) -> None:
    home = Path(tempfile.mkdtemp(prefix="tina-bench-"))
    t = time.perf_counter()
    build(home, runs, steps, sweep)
    os.sync()  # the cold probe reads the files, not the disk writing them back meanwhile
    print(f"\nworkspace: {runs} runs x {steps} steps{f' (sweep {sweep})' if sweep else ''} in "
          f"{time.perf_counter() - t:.1f}s ({home})")
    live = LiveWriter(home, period=1.0)
    cold = first_frame(home)
    from tina_core.store.index import Store

    Store(home).ingest()  # the cold probe exits at its first data, with the index part built
    warm = first_frame(home)
    print(f"first frame, cold index: paint {cold['paint']:.2f}s, data {cold['data']:.2f}s (target <= 1 s)")
    print(f"first frame, warm index: paint {warm['paint']:.2f}s, data {warm['data']:.2f}s (target <= 1 s)")
    for what, writer in (("with a live run growing each cycle", live),
                         ("between a live run's steps (nothing new)", None)):
        times = asyncio.run(refresh_cycles(home, args.cycles, writer))
        q = statistics.quantiles(times, n=20)
        print(f"refresh cycle {what}: p50 {1000 * statistics.median(times):.1f} ms, "
              f"p95 {1000 * q[18]:.1f} ms over {len(times)} (target p95 <= 50 ms)")
    for stepping, what in ((True, "a step a second"), (False, "between its steps, heartbeat only")):
        live.stop_flag.clear()
        writer = threading.Thread(target=live.loop, args=(stepping,), daemon=True)
        writer.start()
        cpu = idle_cpu(home, args.cpu_seconds)
        live.stop_flag.set()
        writer.join()
        print(f"idle CPU following a live run ({what}, 1 s refresh): {cpu:.1f}% of a core (target <= 5%)")
    rss0, rss1 = asyncio.run(soak(home, args.soak, live))
    print(f"RSS over a {args.soak}-refresh soak: {rss0 / 2**20:.0f} MiB -> {rss1 / 2**20:.0f} MiB "
          f"({100 * (rss1 - rss0) / rss0:+.1f}%, target <= 10%)")


if __name__ == "__main__":
    main()
