"""`tina-tui`: the cockpit.

One thread worker a second ingests the run directories and queries the store, then posts a single
``Refreshed`` message; widgets update from that message only. Actions that touch runs (start, stop,
resume, evaluate, the choice of watched signals) also run in thread workers and report back through
notifications. Closing the cockpit never affects a run: it reads run directories, asks the
supervisor for things, and records only what the user chose (a `watch_changed` event).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from textual import work
from textual.app import App
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tina_core import runstate
from tina_core.rundir import TinaError, find_run, tina_home
from tina_core.terminal import printable
from tina_tui.actions import bindings
from tina_tui.commands import CockpitCommands
from tina_tui.collector import Collector
from tina_tui.view import Allowed, RunView, Snapshot, described
from tina_tui.plot import MAX_OVERLAY
from tina_tui.screens.ablation import AblationScreen
from tina_tui.screens.confirm import ConfirmScreen
from tina_tui.screens.detail import DetailScreen
from tina_tui.screens.diff import DiffScreen
from tina_tui.screens.help import HelpScreen
from tina_tui.screens.main import MainScreen
from tina_tui.screens.policy import PolicyDialog
from tina_tui.screens.recipe_picker import RecipePicker
from tina_tui.screens.task_chooser import TaskChooser
from tina_tui.screens.watch_chooser import AUTO, WatchChooser

if TYPE_CHECKING:
    from tina_tui.view import RunRow

REPO_RECIPES = Path(__file__).resolve().parent.parent / "recipes"
LOW_COLOUR_SYSTEMS = ("standard", "windows")


class Refreshed(Message):
    """A new snapshot of the workspace, gathered off the event loop."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class ActionDone(Message):
    """A run action finished in a worker (``ok`` False: ``text`` is the error to show)."""

    def __init__(self, text: str, ok: bool = True) -> None:
        super().__init__()
        self.text, self.ok = text, ok


class TinaApp(App[None]):
    TITLE = "tina"
    CSS_PATH = Path(__file__).with_name("app.tcss")
    BINDINGS = bindings("global")
    COMMANDS = App.COMMANDS | {CockpitCommands}
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, home: Path, *, run: str | None = None, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.time, recipes_root: Path | None = None) -> None:
        super().__init__()
        self.home = home
        self.selected: str | None = run
        self.refresh_s = refresh_s
        self.recipes_root = recipes_root or (Path.cwd() / "recipes" if (Path.cwd() / "recipes").is_dir()
                                             else REPO_RECIPES)
        self.collector = Collector(home, clock=clock)
        self.snapshot: Snapshot | None = None
        # Runs marked for comparison (space), each with its glyph, in the order they were marked;
        # two or more are overlaid on the charts, aligned by step or by transition (a).
        self.marks: dict[str, int] = {}
        self.align = "step"
        self.refreshes = 0
        self.refreshing = False
        self._revived = float("-inf")  # when a dead evaluation worker was last restarted
        self._again = False
        self._keyed: dict[str, Notification] = {}  # the notice shown for each key (see notify)

    def get_default_screen(self) -> Screen:
        return MainScreen()

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = False, key: str | None = None) -> None:
        """Every notice as plain text (it may quote a run's name or a reason: never markup, its
        control characters written out); one with a ``key`` replaces the notice shown before under
        that key, so a live marker that moves says where it is now, not each step of the way."""
        note = Notification(printable(message), printable(title), severity,
                            self.NOTIFICATION_TIMEOUT if timeout is None else timeout, markup=False)
        if key is not None:
            shown = self._keyed.get(key)
            if shown is not None and shown in self._notifications:
                self._unnotify(shown)  # Textual's own way out for a notice, as its timeout takes it
            self._keyed[key] = note
        self.post_message(Notify(note))

    @property
    def main(self) -> MainScreen:
        return next(s for s in self.screen_stack if isinstance(s, MainScreen))

    @property
    def view(self) -> RunView | None:
        return self.snapshot.view if self.snapshot else None

    def on_mount(self) -> None:
        self.sub_title = str(self.home)
        if not self.is_headless and self.console.color_system in LOW_COLOUR_SYSTEMS:
            # 8/16-colour terminals (TERM=screen in a default tmux, xterm, linux console): the ANSI
            # theme uses the terminal's own palette instead of hex colours squashed onto it.
            self.theme = "ansi-dark"

    def start_refreshing(self) -> None:
        self.refresh_data()
        if self.refresh_s > 0:
            self.set_interval(self.refresh_s, self.refresh_data)

    def refresh_data(self) -> None:
        """Gather a new snapshot now, or right after the one in flight (never two at once, and a
        request made meanwhile, e.g. a new selection, is not lost)."""
        if not self.is_running:  # shutting down: the screens are going
            return
        if self.refreshing:
            self._again = True
            return
        self.refreshing, self._again = True, False
        detail = self.screen.key if isinstance(self.screen, DetailScreen) else None
        self._gather(self.selected, detail, dict(self.marks))

    @work(thread=True, group="refresh", exit_on_error=False)
    def _gather(self, selected: str | None, detail_key: str | None, marks: dict[str, int]) -> None:
        try:
            snap = self.collector.collect(selected, detail_key, marks)
        except Exception as e:  # shown, and the next tick tries again
            snap = Snapshot(runs=self.snapshot.runs if self.snapshot else [], view=None, error=f"refresh: {e!r}")
        self.post_message(Refreshed(snap))

    def on_refreshed(self, message: Refreshed) -> None:
        self.refreshing = False
        if not self.is_running:  # a snapshot that arrives while the app shuts down has nowhere to go
            return
        if self._again or self.collector.pending:
            self.refresh_data()
        snap = message.snapshot
        if snap.view is None and snap.error and self.snapshot is not None:
            self.notify(snap.error, severity="error", timeout=5)
            return
        self.snapshot = snap
        self.refreshes += 1
        if snap.view is not None:
            self.selected = snap.view.run_id
        gone = [rid for rid in self.marks if rid not in {r["run_id"] for r in snap.runs}]
        for rid in gone:  # a run directory that went away is no longer compared
            del self.marks[rid]
        self.main.apply(snap)
        if isinstance(self.screen, DetailScreen) and snap.view is not None:
            self.screen.update_view(snap.view, snap.overlay)
        last = {n.key: i for i, n in enumerate(snap.notices) if n.key}
        for i, n in enumerate(snap.notices):
            if n.key is None or last[n.key] == i:  # of one key, the latest says it
                self.notify(n.text, severity=n.severity, timeout=8, key=n.key)
        if any(n.bell for n in snap.notices):
            self.bell()  # once per refresh: tmux shows it (bell-action, visual-bell) in any window
        if snap.error:
            self.notify(snap.error, severity="error", timeout=5)
        if any(r.get("eval_worker") == "gone" or r.get("state") == "queued" for r in snap.runs) \
                and time.monotonic() > self._revived + 10:
            self._revived = time.monotonic()
            self._revive_daemons(list(snap.runs))

    @work(thread=True, group="actions", exit_on_error=False)
    def _revive_daemons(self, runs: list[RunRow]) -> None:
        """Evaluations wait or run with no worker alive (it was killed), or a local sweep's runs
        wait with no queue alive: start one, and say so."""
        from tina_core.evaluate.worker import revive_worker
        from tina_core.sweep.local import revive_queues

        gone = any(described(r) and r["eval_worker"] == "gone" for r in runs)
        for note in (revive_worker(self.home) if gone else None,
                     revive_queues(self.home, runs)):
            if note:
                self.post_message(ActionDone(note, ok=False))

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "error",
                    timeout=6 if message.ok else 12)
        self.refresh_data()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """An action that failed in a way its own handler did not foresee (a database or file
        error) is said like any other, never dropped with its worker."""
        worker = event.worker
        if event.state is WorkerState.ERROR and worker.group == "actions":
            error = worker.error
            self.notify(f"{worker.name.strip('_').replace('_', ' ')} failed: {type(error).__name__}: {error}",
                        severity="error", timeout=12)

    # --- comparing runs --------------------------------------------------------------------------
    def toggle_mark(self, run_id: str | None) -> None:
        """Mark a run for the overlay (the lowest free glyph), or unmark it."""
        if run_id is None:
            return
        if run_id in self.marks:
            del self.marks[run_id]
        elif len(self.marks) >= MAX_OVERLAY:
            self.notify(f"{MAX_OVERLAY} runs at most are compared at once: x clears the marks", severity="warning")
            return
        else:
            self.marks[run_id] = min(set(range(MAX_OVERLAY)) - set(self.marks.values()))
        if len(self.marks) == 1:
            self.notify("marked: mark another run (space) to overlay them on the charts; D what differs, "
                        "T the ablation table", timeout=5)
        self.refresh_data()

    def clear_marks(self) -> None:
        self.marks.clear()
        self.refresh_data()

    def toggle_align(self) -> None:
        self.align = "transition" if self.align == "step" else "step"
        if self.snapshot is not None:
            self.main.apply(self.snapshot)
        if isinstance(self.screen, DetailScreen):
            self.screen.refresh_plot()

    def show_diff(self) -> None:
        if len(self.marks) < 2:
            self.notify("mark two runs or more (space) to see what differs between them", severity="warning")
            return
        self.push_screen(DiffScreen(self.home, list(self.marks), dict(self.marks)))

    def show_ablation(self) -> None:
        # the marked runs; with none marked, the selected run's sweep, or every run
        if self.marks:
            self.push_screen(AblationScreen(self.collector, list(self.marks), dict(self.marks)))
            return
        run = self.view.run if self.view else None
        sweep = run["sweep"] if run and described(run) else None
        ids = [r["run_id"] for r in (self.snapshot.runs if self.snapshot else [])
               if sweep and described(r) and r["sweep"] == sweep]
        self.push_screen(AblationScreen(self.collector, ids, {}, sweep=sweep if ids else None))

    # --- run actions ---------------------------------------------------------------------------
    def _selected_run(self) -> RunRow | None:
        view = self.view
        if view is None:
            self.notify("no run selected", severity="warning")
        return view.run if view else None

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def open_detail(self, metric: int) -> None:
        if self.view is None:
            self.notify("no run selected", severity="warning")
            return
        self.push_screen(DetailScreen(self.view, metric))
        self.refresh_data()  # the summary series now, every step of the metric a moment later

    @work(thread=True, group="actions", exit_on_error=False)
    def pick_recipe(self) -> None:
        from tina_core.recipe.loader import list_recipes

        try:
            recipes = list_recipes(self.recipes_root)
        except (TinaError, OSError) as e:
            self.post_message(ActionDone(f"recipes: {e}", ok=False))
            return
        if not recipes:
            self.post_message(ActionDone(f"no recipes under {self.recipes_root}", ok=False))
            return
        # Top-level recipes (tiny.yaml) first: they are the ones that run anywhere.
        recipes.sort(key=lambda r: (len(r[0].relative_to(self.recipes_root).parts), str(r[0])))
        self.call_from_thread(self.push_screen, RecipePicker(recipes, self.recipes_root.parent,
                                                             self._recipe_costs(recipes)),
                              self._recipe_picked)

    def _recipe_costs(self, recipes: list[tuple[Path, str]]) -> dict[Path, str]:
        """What each recipe would cost to train, as `tina run --dry-run` projects it (this
        workspace's own pace once it has one, else the documented one)."""
        from tina_core.analysis import projection
        from tina_core.recipe.loader import load_recipe
        from tina_tui.widgets.text import usd

        try:
            measures = projection.measured(self.home)
        except Exception:  # an unreadable run costs the picker its measured paces, nothing more
            measures = ({}, {})
        out = {}
        for path, _ in recipes:
            try:
                plan = projection.launch_cost(self.home, load_recipe(path), measures=measures)
            except Exception:
                continue
            to_stop, to_turn = plan.usd_to(plan.stop_at_step), plan.usd_to(plan.transition_step)
            if to_stop is not None:
                out[path] = f"{usd(to_stop)} to stop" + ("" if to_turn is None else f", {usd(to_turn)} to the transition")
        return out

    def _recipe_picked(self, choice: tuple[Path, str | None] | None) -> None:
        if choice is not None:
            self.notify(f"validating {choice[0]} ...", timeout=4)
            self.start_run(*choice)

    @work(thread=True, group="actions", exit_on_error=False)
    def start_run(self, recipe: Path, name: str | None) -> None:
        # A child process validates and detaches the supervisor: recipe validation imports TRL and
        # torch, which must never load into the cockpit itself.
        cmd = [sys.executable, "-m", "tina_core.cli", "--home", str(self.home), "run", str(recipe), "--detach"]
        if name:
            cmd += ["--name", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            self.post_message(ActionDone(err[-1] if err else f"tina run exited {proc.returncode}", ok=False))
            return
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
        self.post_message(ActionDone(f"started {lines[-1] if lines else recipe}"))

    def confirm_stop(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        if not Allowed.of(run).stop:
            self.notify(f"{run['name']} is {run['state']}: nothing to stop", severity="warning")
            return
        rid = run["run_id"]
        ask = (f"Cancel {run['name']}? It has not started." if run["state"] == "queued" else
               f"Stop {run['name']} at step {run['step'] if described(run) else None}? It saves a checkpoint at "
               "the end of the current step.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.stop(rid)
        self.push_screen(ConfirmScreen(ask), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def stop(self, run_id: str) -> None:
        from tina_core.sweep import control

        try:
            self.post_message(ActionDone(control.stop(self.home, run_id).said))
        except TinaError as e:
            self.post_message(ActionDone(str(e), ok=False))

    def choose_policy(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        if not Allowed.of(run).policy:
            self.notify(f"{run['name']} was imported: it has no stop policy", severity="warning")
            return
        rid, name = run["run_id"], run["name"] or run["run_id"]

        def chosen(changes: dict[str, Any] | None) -> None:
            if changes:
                self.set_policy(rid, changes, name)
        self.push_screen(PolicyDialog(name, dict(run["stop_policy"]) if described(run) else {}), chosen)

    @work(thread=True, group="actions", exit_on_error=False)
    def set_policy(self, run_id: str, changes: dict[str, Any], name: str | None = None) -> None:
        from tina_core.supervise import lifecycle
        from tina_tui.widgets.text import policy_text

        try:
            now = lifecycle.set_policy(self.home, run_id, by="cockpit", **changes)
            self.post_message(ActionDone(f"{name or run_id}: stop policy now {policy_text(now.as_dict())}"))
        except TinaError as e:
            self.post_message(ActionDone(str(e), ok=False))

    def resume(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        if not Allowed.of(run).resume:
            self.notify(f"{run['name']} is {run['state']}: nothing to resume", severity="warning")
            return
        self._resume(run["run_id"])

    @work(thread=True, group="actions", exit_on_error=False)
    def _resume(self, run_id: str) -> None:
        from tina_core.supervise import lifecycle

        try:
            lifecycle.resume_run(self.home, run_id)
            self.post_message(ActionDone(f"{run_id}: resuming"))
        except TinaError as e:
            self.post_message(ActionDone(str(e), ok=False))

    def choose_eval(self, checkpoint: int | str) -> None:
        run = self._selected_run()
        if run is None:
            return
        if not run.get("checkpoints"):
            self.notify(f"{run.get('name')} has no complete checkpoint yet", severity="warning")
            return
        self._eval_tasks(run["run_id"], checkpoint)

    @work(thread=True, group="actions", exit_on_error=False)
    def _eval_tasks(self, run_id: str, checkpoint: int | str) -> None:
        import yaml

        from tina_core.evaluate import tasks as evaluate
        from tina_core.rundir import RunDir

        try:  # the run's resolved recipe snapshot says whether it trains on GPUs
            recipe = yaml.safe_load(RunDir(self.home / "runs" / run_id).recipe.read_text()) or {}
            defaults = evaluate.default_tasks(recipe)
        except (TinaError, OSError, yaml.YAMLError) as e:
            self.post_message(ActionDone(f"tasks: {e}", ok=False))
            return
        what = (f"checkpoint {checkpoint}" if isinstance(checkpoint, int) else "the base model"
                if checkpoint == "base" else f"{checkpoint} checkpoint(s)")
        self.call_from_thread(self.push_screen, TaskChooser(what, dict(evaluate.TASKS), defaults),
                              lambda tasks: self.queue_eval(run_id, checkpoint, tasks) if tasks else None)

    def choose_watch(self) -> None:
        from tina_core.analysis.phase import explain

        view = self.view
        if view is None:
            return
        watch: dict[str, Any] = dict(view.run["watch"]) if described(view.run) else {}
        if not watch.get("candidates"):
            self.notify(f"{view.run['name']}: no metrics to choose from yet", severity="warning")
            return
        rid = view.run_id
        why = explain(view.phase, watch, ended=not runstate.is_live(view.run["state"]))

        def picked(chosen: list[str] | str | None) -> None:
            if chosen:
                self.set_watch(rid, chosen)
        self.push_screen(WatchChooser(view.run["name"] or rid, watch, why), picked)

    @work(thread=True, group="actions", exit_on_error=False)
    def set_watch(self, run_id: str, chosen: list[str] | str) -> None:
        """Record the choice (a watch_changed event) and let the next refresh show the re-judged marker."""
        from tina_core.analysis.signals import record_watch, short
        from tina_core.rundir import RunDir

        view = self.view
        keys = [c["signal"] for c in view.run["watch"]["candidates"]] if view and described(view.run) else []
        try:
            picked = record_watch(RunDir(self.home / "runs" / run_id), None if chosen == AUTO else chosen, keys,
                                  by="cockpit")
        except (TinaError, OSError) as e:
            self.post_message(ActionDone(f"watch: {e}", ok=False))
            return
        what = "the automatic choice" if picked is None else ", ".join(short(k) for k in picked)
        self.post_message(ActionDone(f"{run_id}: watching {what}; judging the marker again"))

    @work(thread=True, group="actions", exit_on_error=False)
    def queue_eval(self, run_id: str, checkpoint: int | str, tasks: list[str]) -> None:
        from tina_core.evaluate import queue as evaluate

        try:
            ids = evaluate.queue_eval(self.home, run_id, checkpoint, tasks)
            self.post_message(ActionDone(f"queued {len(ids)} evaluation(s) of {checkpoint}: {', '.join(tasks)}"))
        except TinaError as e:
            self.post_message(ActionDone(str(e), ok=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tina-tui", description="The tina cockpit.")
    parser.add_argument("--home", help="workspace directory (default $TINA_HOME or ~/.tina)")
    parser.add_argument("--run", help="open on this run (id, id prefix or name)")
    parser.add_argument("--demo", action="store_true",
                        help="first write three synthetic runs into the workspace (to look around)")
    args = parser.parse_args(argv)
    home = tina_home(args.home)
    try:
        if args.demo:
            from tina_tui.demo import make_workspace

            make_workspace(home)
        run = find_run(home, args.run).run_id if args.run else None
    except TinaError as e:
        print(f"tina-tui: error: {e}", file=sys.stderr)
        sys.exit(2)
    TinaApp(home, run=run).run()


if __name__ == "__main__":
    main()
