"""The command palette: only the commands that make sense for the screen and run in view."""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tina_tui.view import CHARTS, Allowed, Cockpit
from tina_tui.screens.detail import DetailScreen
from tina_tui.screens.main import MainScreen


class CockpitCommands(Provider):
    @property
    def cockpit(self) -> Cockpit:
        return cast(Cockpit, self.app)

    def _commands(self) -> Iterator[tuple[str, Callable[[], object], str]]:
        app = self.cockpit
        screen = self.screen
        view = app.view
        if isinstance(screen, DetailScreen):
            yield "Toggle smoothing", screen.action_smooth, "raw is always drawn"
            for i, (key, label) in enumerate(CHARTS):
                if i != screen.metric:
                    yield f"Show {label}", partial(screen.show_metric, i), key
            yield "Back to the runs", screen.action_close, ""
            return
        if not isinstance(screen, MainScreen):
            return
        yield "New run from a recipe", app.pick_recipe, "recipe picker"
        if view is not None:
            run = view.run
            name = run["name"] or view.run_id
            allowed = Allowed.of(run)  # what the keys s, r and p do too
            if allowed.stop:
                yield ((f"Cancel {name}", app.confirm_stop, "asks first; it has not started") if run["state"] == "queued"
                       else (f"Stop {name}", app.confirm_stop, "asks first; saves a checkpoint"))
            if allowed.resume:
                yield f"Resume {name}", app.resume, "from its latest complete checkpoint"
            if allowed.policy:
                yield f"Set the stop policy of {name}", app.choose_policy, "N steps after the transition, a budget"
            if view.checkpoints:
                yield f"Evaluate the recommended checkpoint of {name}", partial(app.choose_eval, "recommended"), ""
                yield f"Evaluate all checkpoints of {name}", partial(app.choose_eval, "all"), ""
                for c in view.checkpoints:
                    what = "the base model" if c["step"] == "base" else f"checkpoint {c['step']}"
                    yield f"Evaluate {what} of {name}", partial(app.choose_eval, c["step"]), ""
            for i, (key, label) in enumerate(CHARTS):
                yield f"Plot {label}", partial(app.open_detail, i), key
        if view is not None:
            marked = view.run_id in app.marks
            yield (f"{'Unmark' if marked else 'Mark'} {view.run.get('name', view.run_id)} for comparison",
                   partial(app.toggle_mark, view.run_id), "space; two or more marked are overlaid")
        if len(app.marks) >= 2:
            yield "What differs between the marked runs", app.show_diff, "D"
            yield f"Align the overlay by {'transition' if app.align == 'step' else 'step'}", app.toggle_align, "a"
        if app.marks:
            yield "Clear the marks", app.clear_marks, "x"
        yield "Ablation table" + (" of the marked runs" if app.marks else " of every run"), app.show_ablation, "T"
        for run in (app.snapshot.runs if app.snapshot else []):
            if view is None or run["run_id"] != view.run_id:
                yield f"Go to run {run.get('name')} ({run['run_id']})", partial(self._go, run["run_id"]), \
                    run.get("state", "")
        for tab in ("charts", "checkpoints", "log", "system"):
            yield f"Show the {tab} tab", partial(screen.action_tab, tab), ""

    def _go(self, run_id: str) -> None:
        self.cockpit.selected = run_id
        self.cockpit.refresh_data()

    async def discover(self) -> Hits:
        for text, cb, help_ in self._commands():
            yield DiscoveryHit(text, cb, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, cb, help_ in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), cb, help=help_)
