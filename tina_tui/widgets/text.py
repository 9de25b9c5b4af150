"""How the cockpit writes figures: dollars, durations, states, the marker, the cost and recommendation lines."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Mapping

from rich.style import Style
from rich.text import Text

from tina_core import runstate
from tina_core.analysis.metric_keys import COMPLETION_LENGTH
from tina_core.analysis.policy import POLICY_STOPS
from tina_core.events import CONFIRMED, MARKED, TENTATIVE
from tina_tui.plot import MARK_CONFIRMED, MARK_TENTATIVE
from tina_tui.view import described

if TYPE_CHECKING:
    from tina_core.analysis.transition import PhaseTransition
    from tina_core.report.runs import RunObject
    from tina_tui.view import RunRow


# A marked run's colour, beside its glyph (tina_tui.plot.MARK_GLYPHS): the 8-colour palette only.
MARK_STYLES = ("red", "green", "yellow", "blue", "magenta", "cyan")

STATE_STYLE = {"running": "bold green", "stopping": "yellow", "finished": "cyan", "stopped": "yellow",
               "failed": "bold red", "crashed": "bold red", "unreadable": "red", "queued": "blue",
               "cancelled": "dim"}
STATE_CELL_MAX = 28


def state_cell(run: RunRow) -> str:
    """The runs list's state: a sweep's run adds Slurm's reason while queued, its node while it
    runs, and what Slurm killed it by."""
    state = run["state"]
    q: Mapping[str, Any] = (run["queue"] if described(run) else None) or {}
    if q.get("engine") != "slurm":
        return state
    extra = q.get("reason") if state == "queued" else f"@{q['node']}" if runstate.is_live(state) and \
        q.get("node") else f"Slurm: {q['killed']}" if q.get("killed") else None
    text = f"{state} {extra}" if extra else state
    return text if len(text) <= STATE_CELL_MAX else text[:STATE_CELL_MAX - 1] + "…"


def amount(v: float | None) -> str:
    """Dollars without the sign; under a cent, in cents (a CPU box's run moves by fractions of one)."""
    if v is None:
        return "-"
    if 0 < abs(v) < 0.01:
        return f"{v * 100:.2f}¢"
    return f"{v:,.2f}" if v < 1000 else f"{v:,.0f}"


def usd(v: float | None) -> str:
    return "-" if v is None else amount(v) if 0 < abs(v) < 0.01 else "$" + amount(v)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def eta_text(seconds: float | None) -> str:
    """An ETA to the minute (to ten seconds in its last ten minutes, to the second in its last
    minute): seconds that tick every refresh say nothing an hour out, and redrawing them costs
    every refresh."""
    if seconds is None:
        return "-"
    if seconds >= 600:
        return duration(round(seconds / 60) * 60).replace("m00s", "m")
    if seconds >= 60:
        return duration(round(seconds / 10) * 10)
    return f"{max(0, round(seconds))}s"


def marker_text(phase: PhaseTransition | None) -> Text:
    status = (phase or {}).get("status") or "none"
    if phase and status == CONFIRMED:
        return Text(f"{MARK_CONFIRMED} {phase.get('step')}", style="bold magenta")
    if phase and status == TENTATIVE:
        return Text(f"{MARK_TENTATIVE} {phase.get('step')}?", style="magenta")
    return Text("-", style="dim")


def marker_words(phase: PhaseTransition | dict[str, Any] | None) -> str:
    """The marker in a few words for the charts: status, step, signal, direction, how sure, and
    the main why (length agrees or sits at the cap, a ramp, the total reward standing in); with no
    marker, what is watched and a length-only note."""
    from tina_core.analysis.signals import short

    p: dict[str, Any] = dict(phase or {})
    if p.get("status") not in MARKED:
        notes = [f"; length turned @ {n['step']}, format flat: not it" for n in p.get("notes") or []]
        watched = ", ".join(short(k) for k in (p.get("watch") or {}).get("signals") or [])
        return ("no phase transition" + ("" if p.get("ended") else " yet") + (f" (watching {watched})" if watched else "")
                + "".join(notes[:1]))
    why = []
    if p.get("shape") == "ramp":
        why.append(f"ramp to {p['ramp_end']}" if p.get("ramp_end") else "ramp")
    if COMPLETION_LENGTH in (p.get("signals") or []):
        why.append("length agrees")
    elif any("cap" in (i.get("why") or "") for i in p.get("ignored") or [] if i.get("signal") == COMPLETION_LENGTH):
        why.append("length at cap")
    if ((p.get("watch") or {}).get("signals") or [None])[0] == "reward" and p.get("signal") == "reward":
        why.append("total reward only")
    return (f"{p['status']} @ {p.get('step')} {short(p.get('signal') or '')} {p.get('direction') or ''} "
            f"({'; '.join([p.get('confidence') or '?', *why])})")


def looks(text: Text) -> tuple:
    """What a Text shows: equal for two that draw the same."""
    return text.plain, str(text.style), tuple(text.spans)


def cost_line(run: RunRow | None, checkpoints: list[dict[str, Any]]) -> Text:
    """The selected run's money in one line, most important first so a narrow terminal keeps it:
    spent so far (train / eval / total), the rate now, the projection to stop_at_step and the cost
    up to the recommended checkpoint (the paper's "$9" figure)."""
    if not run:
        return Text("no run selected: press n to start one", style="dim")
    d = run if described(run) else None  # a run not described yet shows its money as unknown
    cost: Mapping[str, Any] = d["cost_usd"] if d else {}
    per_hour = d["usd_per_hour_now"] if d else None
    if per_hour is None:
        live = runstate.is_live(run["state"])
        per_hour = ((d["gpu_count"] or 0) * (d["gpu_hour_usd"] or 0) if d else 0) if live else 0.0
    recommended = d["checkpoint_pick"]["recommended"] if d else None
    rec_cost = next((c.get("cost_usd_at") for c in checkpoints if c["step"] == recommended), None)
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"total {usd(cost.get('total'))}", style="bold")
    t.append(f" (train {amount(cost.get('train'))} eval {amount(cost.get('eval'))})")
    t.append(f"  {usd(per_hour)}/h")
    t.append(f"  at stop {usd(d['projected_cost_usd'] if d else None)}")
    t.append("  to rec: -" if recommended is None else f"  to rec {recommended}: {usd(rec_cost)}", style="green")
    t.append(f"  {duration(d['elapsed_s'] if d else None)} on {(d['device'] if d else None) or 'cpu'}", style="dim")
    return t


def policy_text(policy: Mapping[str, Any] | None) -> str:
    """``transition+5, budget $0.10``, or ``-`` for a run that stops at stop_at_step only."""
    policy = policy or {}
    parts = [] if policy.get("after_transition") is None else [f"transition+{policy['after_transition']}"]
    if policy.get("budget_usd") is not None:
        parts.append(f"budget {usd(policy['budget_usd'])}")
    return ", ".join(parts) or "-"


def _has_policy(run: RunObject) -> bool:
    """A stop policy beyond stop_at_step: after the transition, or a budget."""
    pol = run["stop_policy"]
    return pol["after_transition"] is not None or pol["budget_usd"] is not None


def countdown_cell(run: RunRow) -> Text:
    """The runs list's ``stop`` column: what is left before the policy stops a live run."""
    c = run["countdown"] if described(run) else None
    if not c or not (described(run) and _has_policy(run)):
        return Text("-", style="dim")
    if c["waiting"]:
        return Text("marker?", style="magenta")
    if c["by"] == "budget_usd" and c["usd_left"] is not None:
        return Text(usd(max(c["usd_left"], 0.0)), style="yellow")
    left = c["steps_left"]
    return Text("-" if left is None else f"{max(left, 0)} st", style="yellow" if c["by"] != "stop_at_step" else "")


def policy_line(run: RunRow | None) -> Text | None:
    """The money line's second line, for a run with a stop policy or stopped by one: the policy and
    its countdown, the stop and why, the dollars saved against stop_at_step, the pick beside the
    best evaluated checkpoint and the automatic evaluations. None when there is nothing to say."""
    if not run or not described(run):
        return None
    pol = run["stop_policy"]
    stopped = run["stopped_by"]
    by_policy = stopped is not None and stopped["by"] in POLICY_STOPS
    if not _has_policy(run) and not by_policy:
        return None
    t = Text(no_wrap=True, overflow="ellipsis")
    if stopped is not None and by_policy:
        what = (f"transition+{pol['after_transition']}" if stopped["by"] == "after_transition"
                else f"budget {usd(pol['budget_usd'])}")
        t.append(f"stopped at {run['step']} by {what}", style="bold yellow")
    else:
        t.append(f"stop {policy_text(pol)}", style="bold")
        c = run["countdown"]
        if c and c["waiting"]:
            t.append(": awaiting the marker" + ("" if c["steps_left"] is None else
                                                f" (at most {max(c['steps_left'], 0)} steps)"), style="magenta")
        elif c:
            what = (f"{usd(max(c['usd_left'], 0.0))} left" if c["by"] == "budget_usd" and c["usd_left"] is not None
                    else f"{max(c['steps_left'] or 0, 0)} steps left")
            t.append(f": {what}" + (f" (step {c['stop_step']})" if c["stop_step"] is not None else ""),
                     style="yellow")
    if run["saved_usd"] is not None:
        t.append(f"  saved {usd(run['saved_usd'])}" + ("" if by_policy else "?"), style="green")
        if run["saved_minutes"] is not None:
            t.append(f" {eta_text(60 * run['saved_minutes'])}", style="green")
    auto = [e for e in run["evaluations"] if e["why"] == "transition"]
    if auto:
        done = sum(1 for e in auto if e["state"] not in runstate.EVAL_ACTIVE_STATES)
        t.append(f"  evals {done}/{len(auto)}", style="cyan" if done < len(auto) else "")
    pick = run["checkpoint_pick"]["bracket"]
    if pick and (by_policy or auto):
        t.append(f": pick {pick['step']}" + ("" if pick["avg"] is None else f" {100 * pick['avg']:.1f}"),
                 style="bold green")
        best = pick["best_evaluated"]
        if best and best["step"] == pick["step"]:
            t.append(" (best)")
        elif best:
            t.append(f", best {best['step']} {100 * best['avg']:.1f}")
    return t


def recommendation_line(run: RunRow | None) -> Text:
    """What the checkpoint marks mean for this run: the recommended one (Tina's rule), the best
    evaluated one, and whether they disagree."""
    t = Text(no_wrap=True, overflow="ellipsis")
    if not run:
        return t
    pick = run["checkpoint_pick"] if described(run) else None
    recommended = pick and pick["recommended"]
    best = pick and pick["best_evaluated"]
    phase = (run["phase_transition"] if described(run) else None) or {}
    if recommended is not None:
        t.append(f"* {recommended} recommended", style="bold green")
        t.append(f" (latest at or before the transition @ {phase.get('step', '?')})", style="dim")
    else:
        t.append("* none recommended yet: " + ((pick and pick["reason"]) or "no phase transition yet").split(";")[0],
                 style="dim")
    if best is not None:
        t.append(f"   + {best} best evaluated", style="bold")
        if best != recommended and recommended is not None:
            t.append("  (they disagree: evaluate both)", style="yellow")
    return t


def meter(frac: float, width: int) -> str:
    frac = max(0.0, min(1.0, frac))
    n = int(round(frac * width))
    return "[" + "|" * n + " " * (width - n) + "]"


@functools.lru_cache(maxsize=64)
def style_of(spec: str) -> Style:
    return Style.parse(spec) if spec else Style()


