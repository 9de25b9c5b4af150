"""`tina report`: a Tina-style table over the workspace's runs, beside the paper's rows.

Per run: recipe, the phase transition, the recommended checkpoint (latest complete one at or before
the transition) and the best evaluated one, each as a step and a % of one epoch, their benchmark
scores and average, the base model's scores as an entry of its own with each checkpoint's gain over
it (Tina reports gains over the base model), and the dollars: train / eval / total, and training up
to the recommended checkpoint (the paper's "$9" is that figure for its best recipe, plus one
evaluation).

The ablation table (first in every format) is the same runs read as a study: the recipe keys that
differ between them (``tina_core.recipe.diff``) and, per run, the transition (step, % of an epoch),
the recommended checkpoint, the dollars to it, its evaluation average and gain over the base model,
beside the paper's figures where the recipe is one of Tina's. ``tina report RUN...`` (and the
cockpit's ``T``, on the marked runs) limits it to some runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tina_core.analysis import metric_keys
from tina_core.analysis.phase import explain
from tina_core.analysis.signals import short
from tina_core.recipe import diff
from tina_core.recipe import paper
from tina_core.report.runs import describe
from tina_core.runstate import is_live
from tina_core.rundir import RunDir, RunInfo, TinaError, find_run, list_run_dirs
from tina_core.terminal import markdown_cell, shown

if TYPE_CHECKING:  # the cockpit imports this module at start-up; duckdb is imported where it is used
    from tina_core.store.index import Store


def _recipe_info(rd: RunDir) -> tuple[str | None, float | None]:
    """(recipe file stem, optimizer steps per epoch) from the run's recipe snapshot."""
    info = RunInfo.read(rd)
    stem = Path(info.recipe).stem if info.recipe else None
    if not rd.recipe.exists():
        return stem, None
    try:
        from tina_core.recipe.loader import load_recipe

        recipe = load_recipe(rd.recipe)
        rows = info.dataset_size or recipe.dataset_size
        per_step = recipe.prompts_per_step
    except Exception:  # an unreadable snapshot only costs the epoch percentages
        return stem, None
    return stem, (rows / per_step if rows and per_step else None)


def _pct(step: int | None, per_epoch: float | None) -> float | None:
    return round(100 * step / per_epoch, 1) if step is not None and per_epoch else None


def _avg(scores: dict[str, float]) -> float | None:
    return sum(scores.values()) / len(scores) if scores else None


def gain_over_base(scores: dict[str, float], base: dict[str, float]) -> float | None:
    """Mean gain over the base model on the tasks both were evaluated on (None when none are)."""
    common = [t for t in scores if t in base]
    return round(sum(scores[t] - base[t] for t in common) / len(common), 4) if common else None


def run_row(store: Store, rd: RunDir) -> dict[str, Any]:
    info = RunInfo.read(rd)
    stem, per_epoch = _recipe_info(rd)
    run = describe(store.home, rd, store)  # the dollars, as `tina ls` and the cockpit count them
    ph = run["phase_transition"]
    rec = store.recommendation(rd.run_id)
    cks = {c["step"]: c for c in store.checkpoints(rd.run_id)}
    base = store.base_evals(rd.run_id)
    to_rec = next((c["cost_usd_at"] for c in run["checkpoints"] if c["step"] == rec["recommended"]), None)

    def ck(step: int | None) -> dict | None:
        if step is None:
            return None
        c: Mapping[str, Any] = cks.get(step) or {"evals": {}, "avg": None}
        return {"step": step, "pct_epoch": _pct(step, per_epoch), "scores": c["evals"], "avg": c["avg"],
                "vs_base": gain_over_base(c["evals"], base)}

    return {
        "run_id": rd.run_id, "name": info.name, "recipe": info.recipe,
        "recipe_stem": stem, "imported": info.imported,
        "last_step": store.last_step(rd.run_id), "steps_per_epoch": per_epoch, "state": run["state"],
        "phase_transition": ph, "phase_pct_epoch": _pct(ph.get("step") if ph else None, per_epoch),
        "base": {"scores": base, "avg": _avg(base)} if base else None,
        "recommended": ck(rec["recommended"]), "best_evaluated": ck(rec["best_evaluated"]),
        "disagree": rec["disagree"], "reason": rec["reason"],
        "cost_usd": run["cost_usd"], "train_usd_to_recommended": to_rec,
        "cost_source": "GPU-seconds x $/GPU-hour from the run's events",
        "cost_usd_machine_hour": _per_machine_hour(run["cost_usd"], info.gpu_count),
        "paper": paper.rows_for(stem),
    }


def _per_machine_hour(cost_usd: Mapping[str, Any], gpus: Any) -> dict | None:
    """The run's dollars if its price bought an hour of the whole GPU machine rather than of one GPU:
    how Tina's "14 h / $14" on 2 GPUs reads. None for a CPU run."""
    n = int(gpus or 0)
    return {k: v / n for k, v in cost_usd.items()} if n > 0 else None


def build_report(home: Path, refs: Sequence[str] = (), store: Store | None = None) -> dict[str, Any]:
    """The report over every run, or over the runs ``refs`` names (ids, prefixes or names)."""
    dirs = [find_run(home, r) for r in refs] if refs else list_run_dirs(home)
    dirs = list({rd.run_id: rd for rd in dirs}.values())  # a run named twice counts once
    if store is None:
        from tina_core.store.index import Store

        store = Store(home)
    with store.session():
        store.ingest([rd.run_id for rd in dirs] if refs else None)
        runs = [run_row(store, rd) for rd in dirs]
    return {"runs": runs, "ablation": ablation(runs, dirs),
            "paper": {"benchmarks": list(paper.BENCHMARKS), "main_results": paper.MAIN_RESULTS,
                      "ablations": paper.ABLATIONS, "costs": paper.COSTS}}


def ablation(runs: list[dict[str, Any]], dirs: list[RunDir]) -> dict[str, Any]:
    """``{"axis": [recipe keys that differ], "rows": [one per run]}``. A row's ``settings`` holds its
    values of the axis keys (a key it does not set is left out); ``avg`` and ``vs_base`` are its
    recommended checkpoint's (fractions, as every score here), ``paper`` the paper's row for its
    recipe (``avg_pct`` in percent, as the paper prints it) or None."""
    sides: dict[str, diff.Side] = {}
    for rd in dirs:
        try:
            sides[rd.run_id] = diff.run_side(rd)
        except TinaError:  # an imported run has no recipe: no settings, still a row
            pass
    axis = diff.differing([s.recipe for s in sides.values()]) if len(sides) > 1 else []
    without = len(dirs) - len(sides)
    settings: dict[str, dict[str, Any]] = {rid: {} for rid in sides}
    for d in axis:
        for rid, v in zip(sides, d.values):
            if v is not diff.ABSENT:
                settings[rid][d.key] = v
    rows = []
    for r in runs:
        ph = r["phase_transition"] or {}
        found = ph.get("status") in ("tentative", "confirmed")
        rec = r["recommended"] or {}
        theirs = r["paper"]["main"] or r["paper"]["ablation"]
        rows.append({
            "run_id": r["run_id"], "name": r["name"], "recipe_stem": r["recipe_stem"],
            "settings": settings.get(r["run_id"], {}),
            "transition_step": ph.get("step") if found else None,
            "transition_status": ph.get("status") or "none",
            "transition_pct_epoch": r["phase_pct_epoch"] if found else None,
            "recommended_step": rec.get("step"), "recommended_pct_epoch": rec.get("pct_epoch"),
            "usd_to_recommended": r["train_usd_to_recommended"],
            "avg": rec.get("avg"), "vs_base": rec.get("vs_base"),
            "paper": None if theirs is None else {
                "row": theirs.get("model") or theirs.get("configuration"),
                "best_pct_epoch": theirs.get("best_pct_epoch"), "avg_pct": theirs.get("avg")},
        })
    return {"axis": [d.key for d in axis], "rows": rows, "without_recipe": without}


# a step, and in brackets its share of an epoch where the run's dataset says how long one is
ABLATION_HEAD = ["transition step (% ep)", "rec step (% ep)", "$ to rec", "avg", "vs base", "paper best %",
                 "paper avg"]


def ablation_cells(abl: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The ablation table as text cells (the report's text/Markdown and the cockpit's ``T``):
    ``run, <axis keys>, transition, recommended, $ to it, avg, vs base, the paper's best % and avg``."""
    head = ["run", *abl["axis"], *ABLATION_HEAD]
    rows = []
    for r in abl["rows"]:
        p = r["paper"] or {}
        tr = "-" if r["transition_step"] is None else (
            f"{r['transition_step']}{'' if r['transition_status'] == 'confirmed' else '?'}"
            + (f" ({r['transition_pct_epoch']:.0f}%)" if r["transition_pct_epoch"] is not None else ""))
        rec = "-" if r["recommended_step"] is None else f"{r['recommended_step']}" + (
            f" ({r['recommended_pct_epoch']:.0f}%)" if r["recommended_pct_epoch"] is not None else "")
        rows.append([
            r["name"] or r["run_id"],
            *[diff.show_value(r["settings"].get(k, diff.ABSENT)) if r["settings"] else "-" for k in abl["axis"]],
            tr, rec, _f(r["usd_to_recommended"], "${:.2f}"),
            _f(r["avg"] if r["avg"] is None else 100 * r["avg"], "{:.1f}"),
            _f(r["vs_base"] if r["vs_base"] is None else 100 * r["vs_base"], "{:+.1f}"),
            _f(p.get("best_pct_epoch"), "{}%"), _f(p.get("avg_pct"), "{:.2f}"),
        ])
    return head, rows


# --- rendering ---------------------------------------------------------------------------------
def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "-"
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _ck(c: dict | None) -> str:
    if not c:
        return "-"
    return f"{c['step']}" + (f" ({c['pct_epoch']:.0f}%)" if c.get("pct_epoch") is not None else "")


def _tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    ours = []
    for r in report["runs"]:
        ph = r["phase_transition"]
        best = r["best_evaluated"] or r["recommended"]
        ours.append([
            r["name"] or r["run_id"], r["recipe_stem"] or "-",
            "-" if not ph or ph["status"] == "none" else
            f"{ph['step']} {ph['status']}" + (f", {ph['confidence']} ({short(ph['signal'])})" if ph.get("confidence") else ""),
            _ck(r["recommended"]), _ck(r["best_evaluated"]),
            _f(best and best["avg"], "{:.4f}"),
            _f(r["cost_usd"]["train"]), _f(r["cost_usd"]["eval"]), _f(r["cost_usd"]["total"]),
            _f(r["train_usd_to_recommended"]), _f((r["cost_usd_machine_hour"] or {}).get("train")),
        ])
    main = [[m["model"], m["recipe"], f"{m['best_pct_epoch']}%", _f(m["aime24"]), _f(m["avg"]),
             _f(m["full_sota_avg"])] for m in report["paper"]["main_results"]]
    costs = [[c["experiment"], _f(c["train"], "${}"), _f(c["eval"], "${}"), _f(c["total"], "${}")]
             for c in report["paper"]["costs"]]
    tasks = _tasks(report)
    scored = [[r["name"] or r["run_id"], label, *[_f(e["scores"].get(t), "{:.4f}") for t in tasks],
               _f(e["avg"], "{:.4f}"), _f(e.get("vs_base"), "{:+.4f}")]
              for r in report["runs"] for label, e in _entries(r)]
    evals = [("Our evaluations (vs base: mean gain over the base model on the same tasks)",
              ["run", "model", *tasks, "avg", "vs base"], scored)] if scored else []
    abl_head, abl_rows = ablation_cells(report["ablation"])
    axis = ", ".join(report["ablation"]["axis"]) or _no_axis(report)
    return [
        (f"Ablation (what differs: {axis}; avg and vs base in points, of the recommended checkpoint)",
         abl_head, abl_rows),
        ("Our runs", ["run", "recipe", "transition", "recommended (% epoch)", "best evaluated (% epoch)",
                      "avg", "train $", "eval $", "total $", "train $ to rec.", "train $ (machine-h)"], ours),
        *evals,
        ("Paper: main results", ["model", "recipe", "best %", "AIME24", "avg", "full-param SOTA avg"], main),
        ("Paper: cost (2x L40S at ~$1; as GPU-hours, or half if the dollar bought a machine-hour)",
         ["experiment", "train", "eval", "total"], costs),
    ]


def _no_axis(report: dict) -> str:
    """Why the ablation has no axis: the recipes agree, or there are not two to compare."""
    runs, without = len(report["runs"]), report["ablation"].get("without_recipe", 0)
    if runs - without >= 2:
        return "nothing: the recipes are the same"
    if without:
        return (f"nothing to compare: {without} of {runs} run{'s' if runs != 1 else ''} "
                f"{'have' if without != 1 else 'has'} no recipe (imported)")
    return "nothing to compare: one run"


def _entries(r: dict) -> list[tuple[str, dict]]:
    """A run's evaluated entries: its base model, recommended and (when another) best checkpoint."""
    out = [("base", r["base"])] if r.get("base") else []
    rec, best = r["recommended"], r["best_evaluated"]
    if rec and rec["scores"]:
        out.append((f"checkpoint-{rec['step']} (recommended)", rec))
    if best and best["scores"] and (not rec or best["step"] != rec["step"]):
        out.append((f"checkpoint-{best['step']} (best evaluated)", best))
    return out


def _tasks(report: dict) -> list[str]:
    """Every task scored in the report: the paper's benchmarks in its order, then the others."""
    seen = {t for r in report["runs"] for _, e in _entries(r) for t in e["scores"]}
    return [t for t in paper.BENCHMARKS if t in seen] + sorted(seen - set(paper.BENCHMARKS))


def render_text(report: dict, markdown: bool) -> str:
    """The tables and notes as text, or Markdown. Names, keys and reasons from the runs' files are
    written out (``terminal.shown``), and a Markdown cell keeps its ``|`` to itself."""
    report = shown(report)
    out = []
    for title, head, rows in _tables(report):
        if markdown:
            def line(cells: list[str]) -> str:
                return "| " + " | ".join(map(markdown_cell, cells)) + " |"
            out += [f"### {title}", "", line(head), "|" + "---|" * len(head)]
            out += [line(r) for r in rows] or [line(["-"] * len(head))]
        else:
            widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
            out += [title, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
            out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows] or ["(no runs)"]
        out.append("")
    notes = [f"{r['name']}: {r['reason']}" for r in report["runs"]]
    # why each marker stands (or none does): what is watched, the reasons, what was ignored
    notes += [f"{r['name']}: {line.strip()}" for r in report["runs"]
              for line in explain(r["phase_transition"], ended=not is_live(r.get("state")))]
    notes += sorted({f"cost: {r['cost_source']}" for r in report["runs"]})
    if any(r["cost_usd_machine_hour"] for r in report["runs"]):
        notes.append("train $ (machine-h): the same time priced per hour of the run's whole GPU machine, as "
                     "the paper's \"14 h / $14\" on 2 GPUs reads (train $ is per GPU-hour, as its cost table reads)")
    out += ["### Notes", "", *(f"- {n}" for n in notes)] if markdown else ["Notes", *notes]
    return "\n".join(out).rstrip() + "\n"


ABLATION_CSV = ("run_id", "transition_pct_epoch", "recommended_avg", "recommended_vs_base", "paper_best_pct_epoch",
                "paper_avg_pct")


def _csv_value(v: Any) -> Any:
    return None if v is diff.ABSENT else diff.show_value(v) if isinstance(v, (list, dict, bool)) else v


def render_csv(report: dict) -> str:
    """The runs, their base models and the paper's rows as one CSV table; text from the runs' files
    written out (``terminal.shown``): a CSV is read on terminals too."""
    report = shown(report)
    buf = io.StringIO()
    w = csv.writer(buf)
    bench = report["paper"]["benchmarks"]
    axis = report["ablation"]["axis"]
    ablation_rows = {a["run_id"]: a for a in report["ablation"]["rows"]}
    pad = [None] * (len(ABLATION_CSV) + len(axis))
    extra = [t for t in _tasks(report) if t not in bench]  # tasks of our own (arith), after the rest
    w.writerow(["source", "name", "recipe", "transition_step", "transition_status", "recommended_step",
                "recommended_pct_epoch", "best_step", "best_pct_epoch", *bench, "avg", "train_usd",
                "eval_usd", "total_usd", "train_usd_to_recommended", "vs_base", *extra,
                # the ablation table's: the recommended checkpoint's avg and gain, the paper's row,
                # and the run's value of every recipe key that differs between the runs
                *ABLATION_CSV, *[f"recipe:{k}" for k in axis],
                # how sure the marker is, and the signal it comes from (added last: columns stay put)
                "transition_confidence", "transition_signal"])
    for r in report["runs"]:
        a = ablation_rows[r["run_id"]]
        ph = r["phase_transition"] or {}
        best = r["best_evaluated"] or r["recommended"] or {}
        rec = r["recommended"] or {}
        scores = best.get("scores") or {}
        w.writerow(["ours", r["name"], r["recipe_stem"], ph.get("step"), ph.get("status"), rec.get("step"),
                    rec.get("pct_epoch"), (r["best_evaluated"] or {}).get("step"),
                    (r["best_evaluated"] or {}).get("pct_epoch"), *[scores.get(b) for b in bench],
                    best.get("avg"), r["cost_usd"]["train"], r["cost_usd"]["eval"], r["cost_usd"]["total"],
                    r["train_usd_to_recommended"], best.get("vs_base"), *[scores.get(t) for t in extra],
                    r["run_id"], a["transition_pct_epoch"], a["avg"], a["vs_base"],
                    (a["paper"] or {}).get("best_pct_epoch"), (a["paper"] or {}).get("avg_pct"),
                    *[_csv_value(a["settings"].get(k, diff.ABSENT)) for k in axis],
                    ph.get("confidence"), ph.get("signal")])
        if r.get("base"):  # the base model, its own row: the gains above are over it
            b = r["base"]["scores"]
            w.writerow(["base", r["name"], r["recipe_stem"], *[None] * 6, *[b.get(t) for t in bench],
                        r["base"]["avg"], *[None] * 5, *[b.get(t) for t in extra], r["run_id"], *pad[1:], None, None])
    costs = {c.get("recipe"): c for c in report["paper"]["costs"] if c.get("recipe")}
    for m in report["paper"]["main_results"]:
        c = costs.get(m["recipe"], {})
        w.writerow(["paper", m["model"], m["recipe"], None, None, None, None, None, m["best_pct_epoch"],
                    m["aime24"], *[None] * (len(bench) - 1), m["avg"], c.get("train"), c.get("eval"),
                    c.get("total"), None, None, *[None] * len(extra), *pad, None, None])
    return buf.getvalue()


def write_plots(report: dict, store: Store, folder: Path) -> list[Path]:
    """One PNG per run: format reward(s) and completion length, with the transition marker and the
    checkpoints (the recommended one highlighted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for r in report["runs"]:
        keys = set(store.metric_keys(r["run_id"]))
        watched = ((r["phase_transition"] or {}).get("watch") or {}).get("signals") or []
        panels = [[k for k in dict.fromkeys([metric_keys.FORMAT_REWARD, metric_keys.TAG_COUNT_REWARD, *watched])
                   if k in keys and k != metric_keys.COMPLETION_LENGTH],
                  [metric_keys.COMPLETION_LENGTH] if metric_keys.COMPLETION_LENGTH in keys else []]
        panels = [p for p in panels if p]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
        ph = r["phase_transition"]
        rec = r["recommended"] and r["recommended"]["step"]
        cks = [c["step"] for c in store.checkpoints(r["run_id"])]
        for ax, panel in zip(axes[:, 0], panels):
            for key in panel:
                pts = store.metric_series(r["run_id"], key, max_points=None)
                ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1, label=key)
            for s in cks:
                ax.axvline(s, color="grey", lw=0.6, alpha=0.5, ymax=0.08)
            if rec is not None:
                ax.axvline(rec, color="tab:green", lw=1.2, label=f"recommended checkpoint-{rec}")
            if ph and ph.get("step") is not None:
                ax.axvline(ph["step"], color="tab:red", lw=1.2, ls="-" if ph["status"] == "confirmed" else "--",
                           label=f"{ph['status']} transition @ {ph['step']}")
            ax.legend(fontsize=7, loc="best")
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(f"{r['name']} ({r['recipe_stem'] or 'imported'})", fontsize=10)
        fig.tight_layout()
        path = folder / f"{r['run_id']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
