"""The one registry of bindable actions: it builds each screen's BINDINGS and the help screen, so
a key shown in help is always the key that works."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Action:
    keys: str            # Textual key list, comma separated ("j,down")
    action: str          # Textual action string
    description: str
    context: str         # "global", "main", "detail"
    short: str = ""      # footer label; set only for the few keys the footer shows


ACTIONS: tuple[Action, ...] = (
    Action("q", "quit", "Quit (runs keep going)", "global", "quit"),
    Action("question_mark", "help", "Help: every key", "global", "help"),
    Action("ctrl+p", "command_palette", "Command palette", "global"),
    # main screen
    Action("n", "new_run", "New run from a recipe", "main", "new"),
    Action("s", "stop_run", "Stop the selected run, or cancel it while queued (asks first)", "main", "stop"),
    Action("r", "resume_run", "Resume the selected run", "main", "resume"),
    Action("p", "policy", "Stop policy: N steps after the transition, a budget", "main"),
    Action("left_square_bracket", "prev_run", "Previous run", "main"),
    Action("right_square_bracket", "next_run", "Next run", "main"),
    Action("1", "tab('charts')", "Charts tab", "main"),
    Action("2", "tab('checkpoints')", "Checkpoints tab", "main"),
    Action("3", "tab('log')", "Log tab", "main"),
    Action("4", "tab('system')", "GPU / system tab", "main"),
    Action("e", "eval_selected", "Evaluate the highlighted checkpoint (enter too)", "main", "eval"),
    Action("E", "eval('recommended')", "Evaluate the recommended checkpoint", "main"),
    Action("A", "eval('all')", "Evaluate all checkpoints", "main"),
    Action("d,enter", "detail", "Full-screen plot of the selected metric (enter on a run too)", "main", "plot"),
    Action("j,down", "cursor(1)", "Next row / metric", "main"),
    Action("k,up", "cursor(-1)", "Previous row / metric", "main"),
    Action("f", "follow", "Log: follow the end (on/off)", "main"),
    # comparing runs
    Action("space", "mark", "Mark / unmark the run: two or more marked are overlaid on the charts (six at most)",
           "main"),
    Action("x", "clear_marks", "Clear the marks", "main"),
    Action("a", "align", "Overlay: align the runs by step / by each run's transition", "main"),
    Action("D", "diff", "What differs between the marked runs (their recipes' keys)", "main"),
    Action("T", "ablation", "Ablation table of the marked runs (none marked: the selected run's sweep, else every run)",
           "main"),
    Action("w", "choose_watch", "Choose the signals the phase marker watches (and see why)", "main", "watch"),
    # detail screen
    Action("escape,q", "close", "Back", "detail", "back"),
    Action("left,h", "move(-1)", "Cursor one step left", "detail", "cursor"),
    Action("right,l", "move(1)", "Cursor one step right", "detail"),
    Action("shift+left,H", "move(-10)", "Cursor ten steps left", "detail"),
    Action("shift+right,L", "move(10)", "Cursor ten steps right", "detail"),
    Action("home", "jump(0)", "Cursor to the first step", "detail"),
    Action("end", "jump(1)", "Cursor to the last step", "detail"),
    Action("s", "smooth", "Smoothing on/off (raw is always drawn)", "detail", "smooth"),
    Action("plus,equals_sign", "weight(0.05)", "More smoothing", "detail"),
    Action("minus", "weight(-0.05)", "Less smoothing", "detail"),
    Action("left_square_bracket", "metric(-1)", "Previous metric", "detail"),
    Action("right_square_bracket", "metric(1)", "Next metric", "detail"),
    Action("a", "align", "Overlay: align by step / by each run's transition", "detail"),
    # what differs (D) and the ablation table (T)
    Action("escape,q", "close", "Back", "compare", "back"),
)

CONTEXT_TITLES = {"global": "Everywhere", "main": "Runs, charts, checkpoints, log", "detail": "Metric detail",
                  "compare": "What differs, ablation table"}


def bindings(context: str) -> list[BindingType]:
    # Sub-screens pass through to the app's global bindings, so only their own context is needed.
    return [Binding(a.keys, a.action, a.short or a.description, show=bool(a.short), tooltip=a.description)
            for a in ACTIONS if a.context == context]


_KEY_NAMES = {"space": "space", "question_mark": "?", "left_square_bracket": "[", "right_square_bracket": "]",
              "plus": "+", "equals_sign": "=", "minus": "-"}


def key_label(keys: str) -> str:
    return " ".join(_KEY_NAMES.get(k, k) for k in keys.split(","))
