"""Stability across checkpoints (BOSE): do the evaluation scores rank a run's checkpoints consistently?

BOSE (Luan et al., ACL Findings 2025) measures how stable an evaluation is during pretraining with
Kendall's rank correlation: evaluate K checkpoints of one run, rank them by a score, and compare
rankings. An evaluation whose ranking agrees with a trusted one (here held-out perplexity on the
pretraining corpus, the quantity pretraining minimises) and with the order of training can guide a
pretraining decision; one whose ranking is noise cannot, whatever its final value.

The checkpoints are the ones pretraining keeps for this purpose (``pretrain.eval_checkpoints``,
:mod:`components.training.eval_checkpoints`); the evaluate stage measures each one exactly as it
measures the release model (:func:`components.evaluate.run.measure`) and hands the numbers here.
This module is arithmetic only (no model): :func:`summarize` turns ``{step: metrics}`` into

- ``tau_vs_perplexity[m]``: Kendall's tau between the ranking by score ``m`` and the ranking by
  held-out perplexity, oriented so that +1 means "ranks the checkpoints as perplexity does" (a
  higher-is-better score is compared with *minus* perplexity);
- ``tau_vs_step[m]``: the same against training order (+1: the score improves monotonically);
- ``tau_methods[task]``: between a multiple-choice task's two scorings, log-likelihood ``acc`` and
  blank perplexity ``blank_acc`` (:mod:`components.evaluate.blank`): +1, the two agree;

each with scipy's two-sided p-value (``scipy.stats.kendalltau``, variant b: ties are allowed and
common with accuracies on few items). A score that is constant over the checkpoints has no ranking:
its tau is ``None`` (scipy's NaN), reported as "undefined", never as 0.
"""

from __future__ import annotations

import math
from typing import Any

#: The reference ranking: held-out perplexity on the pretraining corpus (lower is better).
REFERENCE = "heldout_perplexity"


def kendall(x: list[float], y: list[float]) -> dict[str, float | None]:
    """Kendall's tau-b of two equally long score lists and its p-value (``None`` where undefined)."""
    from scipy.stats import kendalltau

    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"Kendall's tau needs two equally long lists of >= 2 scores, got {len(x)} and {len(y)}")
    res = kendalltau(x, y)
    tau, p = float(res.statistic), float(res.pvalue)
    return {"tau": None if math.isnan(tau) else tau, "p_value": None if math.isnan(p) else p}


def score_metrics(metrics: dict[str, float], directions: dict[str, bool]) -> dict[str, bool]:
    """The scores to rank by: every task metric with a known direction (no stderrs), name → higher is better.

    A standard error is ``<metric>_stderr``, or for a filtered lm-eval metric ``<task>_<m>_stderr_<filter>``
    (lm-eval's ``"<m>_stderr,<filter>"`` flattened), which carries a direction too.
    """
    return {
        m: better
        for m, better in directions.items()
        if m in metrics and not m.endswith("_stderr") and "_stderr_" not in m
    }


def summarize(
    by_step: dict[int, dict[str, float]], directions: dict[str, bool], blank_tasks: list[str] = ()
) -> dict[str, Any]:
    """Rank the checkpoints by every score and compare the rankings (see the module docstring).

    Args:
        by_step: checkpoint step → its flat metrics (``heldout_perplexity`` and ``<task>_<metric>``).
        directions: flat metric name → higher is better (from lm-eval's ``higher_is_better``).
        blank_tasks: multiple-choice tasks scored both ways (``<task>_acc`` and ``<task>_blank_acc``).

    Returns:
        ``{"steps", "rows", "scores", "tau_vs_perplexity", "tau_vs_step", "tau_methods"}``, JSON-ready.
    """
    steps = sorted(by_step)
    if len(steps) < 2:
        raise ValueError(f"stability needs at least 2 checkpoints, got {len(steps)}")
    first = by_step[steps[0]]
    scores = {
        m: better for m, better in score_metrics(first, directions).items() if all(m in by_step[s] for s in steps)
    }

    def oriented(metric: str, higher_is_better: bool) -> list[float]:
        return [by_step[s][metric] if higher_is_better else -by_step[s][metric] for s in steps]

    minus_ppl = [-by_step[s][REFERENCE] for s in steps]
    out: dict[str, Any] = {
        "steps": steps,
        "reference": REFERENCE,
        "rows": [
            {"step": s, **{k: v for k, v in by_step[s].items() if k == REFERENCE or k.split("_stderr")[0] in scores}}
            for s in steps
        ],
        "scores": scores,
        "tau_vs_perplexity": {},
        "tau_vs_step": {"heldout_perplexity": kendall(minus_ppl, [float(s) for s in steps])},
        "tau_methods": {},
    }
    for metric, better in scores.items():
        values = oriented(metric, better)
        out["tau_vs_perplexity"][metric] = kendall(values, minus_ppl)
        out["tau_vs_step"][metric] = kendall(values, [float(s) for s in steps])
    for task in blank_tasks:
        acc, blank = f"{task}_acc", f"{task}_blank_acc"
        if acc in scores and blank in scores:
            out["tau_methods"][task] = {"between": [acc, blank], **kendall(oriented(acc, True), oriented(blank, True))}
    return out


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The taus as flat metrics (MLflow, KFP, the gate): ``stability_tau_ppl_<m>``, ``stability_tau_step_<m>``,
    ``stability_tau_methods_<task>``, and ``stability_checkpoints``; undefined taus are left out."""
    out = {"stability_checkpoints": float(len(summary["steps"]))}
    for prefix, table in (("stability_tau_ppl_", "tau_vs_perplexity"), ("stability_tau_step_", "tau_vs_step")):
        for metric, r in summary[table].items():
            if r["tau"] is not None:
                out[prefix + metric] = r["tau"]
    for task, r in summary["tau_methods"].items():
        if r["tau"] is not None:
            out["stability_tau_methods_" + task] = r["tau"]
    return out


def _fmt(r: dict) -> str:
    return "undefined (constant)" if r["tau"] is None else f"{r['tau']:+.3f} (p={r['p_value']:.3g})"


def markdown(summary: dict[str, Any]) -> str:
    """Two tables: each checkpoint's numbers, then each score's taus."""
    scores = list(summary["scores"])
    head = ["step", REFERENCE, *scores]
    lines = ["## Stability across checkpoints", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["rows"]:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if c != "step" else str(row[c]) for c in head) + " |")
    lines += [
        "",
        f"Kendall's tau over {len(summary['steps'])} checkpoints (+1: the same ranking; a score is oriented so "
        "that better is higher, perplexity so that lower is better):",
        "",
        "| score | vs held-out perplexity | vs training step |",
        "|---|---|---|",
    ]
    lines.append(f"| {REFERENCE} | — | {_fmt(summary['tau_vs_step'][REFERENCE])} |")
    for m in scores:
        lines.append(f"| {m} | {_fmt(summary['tau_vs_perplexity'][m])} | {_fmt(summary['tau_vs_step'][m])} |")
    if summary["tau_methods"]:
        lines += ["", "| task | acc vs blank_acc |", "|---|---|"]
        lines += [f"| {t} | {_fmt(r)} |" for t, r in summary["tau_methods"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any]) -> bytes:
    """Accuracy-like scores (left axis, 0-1) and held-out perplexity (right axis, log) against the checkpoint
    step, PNG bytes; each score's tau vs perplexity in its legend entry."""
    from components.common.plots import new_axes, png_bytes

    fig, ax = new_axes()
    steps = summary["steps"]
    rows = {r["step"]: r for r in summary["rows"]}
    # accuracies share one 0-1 axis; a score on another scale (blank_ppl) would flatten them: table only
    shares_axis = [m for m in summary["scores"] if all(0.0 <= rows[s][m] <= 1.0 for s in steps)]
    for m in shares_axis:
        tau = summary["tau_vs_perplexity"][m]["tau"]
        label = f"{m} (τ={tau:+.2f})" if tau is not None else f"{m} (τ undefined)"
        ax.plot(steps, [rows[s][m] for s in steps], marker="o", label=label)
    ax.set_xlabel("pretraining step (checkpoint)")
    ax.set_ylabel("task score (accuracy)")
    ax.grid(alpha=0.3)
    ppl = ax.twinx()
    ppl.plot(steps, [rows[s][REFERENCE] for s in steps], color="black", linestyle="--", marker="s", label=REFERENCE)
    ppl.set_yscale("log")
    ppl.set_ylabel("held-out perplexity")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ppl.get_legend_handles_labels()
    # Below the axes, not inside: with six curves on a small plot any spot inside covers some of them.
    # The figure grows by the legend's rows so the axes keep the report's height.
    columns = 2
    rows_of_legend = -(-len(labels + l2) // columns)
    fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + 0.15 + 0.18 * rows_of_legend)
    ax.legend(
        handles + h2,
        labels + l2,
        fontsize=7,
        ncol=columns,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        frameon=False,
    )
    ax.set_title("Stability across checkpoints: Kendall's τ vs held-out perplexity")
    return png_bytes(fig)
