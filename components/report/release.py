"""The report's release sections: the summary a reader sees first, quantization, evaluation, registration.

The summary answers what a release engineer asks before anything else: what was registered, under
which alias (``champion``, ``challenger``, or ``stale``: it passed against a champion that moved on
before it could take over, see :mod:`components.register.run`), and why: the promotion gate's
verdict (:mod:`components.evaluate.gate`), each rule with this model's number beside the champion's
and the noise margin that decided it.

The evaluation section shows every score with its standard error. Its stability part is generic over
the evaluate summary's ``stability`` key (see :func:`stability_blocks`), so it appears exactly when
the evaluation measured stability across checkpoints.
"""

from __future__ import annotations

import re
from typing import Any

from components.common.plots import sweep_plot
from components.report.blocks import Details, Est, Figure, Section, Table, Text, facts, number_text
from components.report.metrics import (
    CORPUS_LABELS,
    Metrics,
    metric_label,
    seconds_text,
    stderr_key,
    task_label,
    task_metric_label,
)

GUARD = re.compile(r"^(?P<metric>\S+) (?P<op>drop<=|<=|>=) (?P<value>\S+)$")
OUTCOME_TEXT = {
    "champion": "it is the **champion** now (`models:/{name}@champion`)",
    "challenger": "it is the **challenger**; the champion stays",
    "stale": (
        "it is the **challenger (stale verdict)**: it passed the gate, but the champion moved on before it "
        "could take over, so judge it against the new champion"
    ),
}


def rule_text(rule: dict, tasks: tuple[str, ...]) -> str:
    """A gate rule for people: ``primary: held-out perplexity ...`` or ``quantization: Δ perplexity % ≤ 5``."""
    text = rule.get("rule", "")
    if text.startswith("primary "):
        return f"**primary**: {metric_label(rule['metric'], tasks)}, must improve beyond noise"
    m = GUARD.match(text)
    if m is None:
        return text
    label, value = metric_label(m["metric"], tasks), m["value"]
    if m["op"] == "drop<=":
        return f"{label}: may be worse than the champion's by at most {value}"
    return f"{label} {'≤' if m['op'] == '<=' else '≥'} {value}"


def summary_section(summaries: dict[str, dict]) -> Section | None:
    """What was registered and the gate's verdict with the deciding numbers (None: neither stage ran)."""
    reg = summaries.get("register") or {}
    evaluation = summaries.get("evaluate") or {}
    verdict = evaluation.get("verdict")
    if not reg and not verdict:
        return None
    blocks: list = []
    if reg:
        name, version = reg.get("model_name", "?"), number_text(reg.get("metrics", {}).get("version", "?"))
        outcome = reg.get("outcome") or reg.get("alias", "?")
        how = OUTCOME_TEXT.get(outcome, f"it is aliased **{outcome}**").format(name=name)
        champion_now = reg.get("metrics", {}).get("champion_version")
        tail = f" (v{number_text(champion_now)})" if outcome != "champion" and champion_now else ""
        blocks.append(Text(f"Registered **{name} v{version}** (`{reg.get('registry_uri', '')}`): {how}{tail}."))
    if verdict:
        champ = verdict.get("champion_version")
        source = {"re-evaluated": "re-evaluated in this run", "stored": "its stored numbers, same evaluation digest"}
        against = f"champion v{champ} ({source.get(verdict.get('champion_source'), verdict.get('champion_source'))})"
        blocks.append(
            Text(
                f"Promotion gate: **{'PASS' if verdict['promote'] else 'FAIL'}**: {verdict['reason']}. "
                f"Compared with {against if champ else 'no champion (first model)'}; a difference counts only "
                f"beyond the noise margin z·√(se_new² + se_champion²), z = {number_text(verdict.get('z', 1.96))}."
            )
        )
        tasks = tuple(evaluation.get("tasks") or ())
        rows = [
            (
                rule_text(r, tasks),
                r["new"],
                r["champion"],
                r["margin"],
                "pass" if r["passed"] else "**FAIL**",
                r["note"],
            )
            for r in verdict.get("rules", [])
        ]
        head = ("rule", "this model", f"champion v{champ}" if champ else "champion", "noise margin", "result", "why")
        blocks.append(Table(head, rows))
    return Section("summary", "Summary", blocks)


def quantize_section(s: dict) -> Section:
    """The method against the unquantized model (size, memory, perplexity, speed) and the low-bit sweep."""
    m = Metrics(s.get("metrics"))
    method = s.get("method", "?")
    quantized, layers = m.get("quantized_linear_layers"), m.get("linear_layers")
    kept = ", ".join(f"`{n}`" for n in s.get("unquantized_linears") or [])
    text = f"Method **{method}** (`quantize.method`)"
    if quantized is not None and layers is not None:
        text += f": {number_text(quantized)} of {number_text(layers)} linear layers hold quantized weights"
        text += f"; left in full precision: {kept}." if kept else "."
    blocks: list = [Text(text)]
    delta = m.get("perplexity_delta_pct")
    ratio = m.get("size_ratio")
    rows = [
        (
            "unquantized",
            m.get("size_mb_before"),
            m.get("peak_memory_mb_before"),
            32,
            m.get("perplexity_before"),
            None,
            m.get("tokens_per_s_before"),
        ),
        (
            method,
            f"{number_text(m.get('size_mb_after'))} (×{number_text(ratio)})" if ratio else m.get("size_mb_after"),
            m.get("peak_memory_mb_after"),
            m.get("weight_bits"),
            m.get("perplexity_after"),
            None if delta is None else f"{delta:+.2f}%",
            m.get("tokens_per_s_after"),
        ),
    ]
    head = [
        "model",
        "weights (MB)",
        "peak memory (MB)",
        "bits/weight",
        "held-out perplexity",
        "Δ perplexity",
        "generation tokens/s",
    ]
    if m.get("peak_memory_mb_before") is None and m.get("peak_memory_mb_after") is None:
        head.pop(2)  # not reported by this quantize stage: no empty column
        rows = [r[:2] + r[3:] for r in rows]
    blocks.append(Table(tuple(head), rows))
    m.mark("perplexity_delta", "heldout_loss_before", "heldout_loss_after")
    outliers = m.get("llm_int8_outlier_columns")
    if outliers is not None:
        blocks.append(
            Text(
                f"LLM.int8(): {number_text(outliers)} input columns crossed the outlier threshold and went through "
                f"the 16-bit path while perplexity was measured, in {len(s.get('llm_int8_outliers') or {})} layers."
            )
        )
    sweep = s.get("sweep") or []
    if sweep:
        m.matching(r"sweep_perplexity_.*")
        rows = [
            (
                r["bits"],
                r["group_size"] or "per row",
                r.get("weight_bits"),
                r["perplexity"],
                f"{r['perplexity_delta_pct']:+.2f}%",
            )
            for r in sweep
        ]
        sweep_blocks = [
            Text("Round-to-nearest weight-only quantization at each bit width and group size (`quantize.sweep_bits`)."),
            Table(("bits", "group size", "effective bits/weight", "held-out perplexity", "Δ perplexity"), rows),
            Figure(
                "quantize_sweep.png", sweep_plot(sweep, m.get("perplexity_before")), "low-bit sweep: bits vs perplexity"
            ),
        ]
        blocks.append(Section("quantize-sweep", "Low-bit sweep", sweep_blocks, 3))
    rest = m.rest()
    return Section("quantize", "Quantization", blocks + ([rest] if rest else []))


def _task_rows(s: dict, m: Metrics) -> list[tuple]:
    rows = []
    for task, row in (s.get("tasks") or {}).items():
        scores = row.get("metrics", {})
        for name, value in scores.items():
            if "_stderr" in name or name == "stderr":
                continue
            se = stderr_key(name, scores)
            rows.append(
                (
                    task_label(task),
                    task_metric_label(name),
                    Est(value, scores[se] if se else None),
                    row.get("samples"),
                    "chat template" if row.get("chat_template") else "plain text",
                )
            )
        m.matching(re.escape(task) + r"_.*")
    pref = m.est("preference_acc")
    if pref is not None:
        rows.append(("preference (held-out pairs)", "prefers the chosen response", pref, None, "chat template"))
    return rows


def _tau(r: dict | None) -> str | None:
    """``0.67 (p 0.17)``; an undefined tau (a score constant over the checkpoints has no ranking)."""
    if not r:
        return None
    if r.get("tau") is None:
        return "undefined (constant score)"
    p = r.get("p_value")
    return f"{r['tau']:+.2f}" + (f" (p {p:.2g})" if p is not None else "")


def stability_blocks(stability: dict, tasks: tuple[str, ...] = ()) -> list:
    """The evaluate summary's ``stability`` key (components/evaluate/stability.py; docs/report.md):
    Kendall's tau of each score's ranking of the pretraining checkpoints against held-out perplexity's
    and against training order, between a task's two scorings, and every checkpoint's numbers."""
    blocks: list = []
    steps = stability.get("steps") or stability.get("checkpoints") or []
    if steps:
        blocks.append(
            Text(
                f"{len(steps)} pretraining checkpoints (steps {', '.join(number_text(x) for x in steps)}), each "
                "measured as the release model is, then ranked by every score. Kendall's τ compares a score's "
                "ranking with held-out perplexity's and with training order: +1 the same order, 0 unrelated."
            )
        )
    vs_ppl, vs_step = stability.get("tau_vs_perplexity") or {}, stability.get("tau_vs_step") or {}
    names = list(dict.fromkeys([*vs_ppl, *vs_step]))
    if names:
        rows = [(metric_label(n, tasks), _tau(vs_ppl.get(n)), _tau(vs_step.get(n))) for n in names]
        blocks.append(Table(("score", "τ vs held-out perplexity", "τ vs training order"), rows))
    methods = stability.get("tau_methods") or {}
    if methods:
        rows = [(task_label(t), _tau(r)) for t, r in methods.items()]
        blocks.append(Table(("task", "τ between log-likelihood and blank-perplexity accuracy"), rows))
    rows = stability.get("rows") or []
    if rows:
        cols = [c for c in dict.fromkeys(k for r in rows for k in r) if "_stderr" not in c]
        table_rows = []
        for r in rows:
            cells = []
            for c in cols:
                se = stderr_key(c, r)
                cells.append(Est(r[c], r[se]) if se and isinstance(r.get(c), (int, float)) else r.get(c))
            table_rows.append(tuple(cells))
        head = tuple(c if c == "step" else metric_label(c, tasks) for c in cols)
        blocks.append(Details(f"Every checkpoint's numbers ({len(rows)})", [Table(head, table_rows)]))
    if stability.get("plot_png"):
        blocks.append(Figure("evaluate_stability.png", stability["plot_png"], "Kendall tau across checkpoints"))
    return blocks


def evaluate_section(s: dict) -> Section:
    """Per-corpus perplexity and the per-task table, every score with its standard error."""
    m = Metrics(s.get("metrics"))
    blocks: list = []
    corpora = [k.removeprefix("perplexity_") for k in m.values if k.startswith("perplexity_") and "_stderr" not in k]
    if corpora:
        rows = [(CORPUS_LABELS.get(c, c), m.est(f"perplexity_{c}")) for c in corpora]
        blocks.append(Table(("held-out perplexity on", "perplexity ± standard error"), rows))
    m.mark("heldout_perplexity", "heldout_perplexity_stderr", "gate_promote")
    rows = _task_rows(s, m)
    if rows:
        blocks.append(Table(("task", "metric", "score ± standard error", "examples", "prompted as"), rows))
    if s.get("stability"):
        stability = stability_blocks(s["stability"], tuple(s.get("tasks") or ()))
        blocks.append(Section("evaluate-stability", "Stability across checkpoints", stability, 3))
        m.matching(r"stability_.*")  # the flat copies of the taus above
    detail = []
    if s.get("eval_digest"):
        detail.append(f"evaluation digest `{s['eval_digest']}`")
    if m.get("stage_seconds") is not None:
        detail.append(f"took {seconds_text(m.get('stage_seconds'))}")
    if detail:
        blocks.append(Text("; ".join(detail).capitalize() + "."))
    # The upstream numbers (quantize_*, continual_*) are the gate's copies of the sections above.
    rest = m.rest(ignore_prefixes=("quantize_", "continual_"))
    return Section("evaluate", "Evaluation", blocks + ([rest] if rest else []))


def register_section(s: dict) -> Section:
    m = Metrics(s.get("metrics"))
    champion = m.get("champion_version")
    m.mark("version", "promoted")
    rows = [
        ("registered model", f"`{s.get('registry_uri', '?')}`"),
        ("alias", s.get("alias")),
        ("outcome", s.get("outcome")),
        ("champion now", f"v{number_text(champion)}" if champion else "none"),
        ("why", s.get("reason")),
        ("weights", f"`{s['source']}`" if s.get("source") else None),
    ]
    rest = m.rest()
    return Section("register", "Registration", [facts(rows)] + ([rest] if rest else []))


def run_section(context: dict[str, Any]) -> Section:
    """Where the run's pieces are: profile, run ids, links into the MLflow and Kubeflow UIs."""
    rows = []
    for label, value in context.items():
        if not value:
            continue
        text = str(value)
        rows.append((label, f"[{text}]({text})" if text.startswith(("http://", "https://")) else f"`{text}`"))
    return Section("run", "Run details", [facts(rows)])
