"""The run report: one self-contained HTML page (and a Markdown twin) for a lifecycle run.

The Kubeflow UI renders HTML and Markdown output artifacts inline, so the images are embedded as
base64 data URIs: the page needs no access to the object store to display. The same page is logged
to the MLflow parent run. Input is the completion summaries of every stage, keyed by stage name.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from components.common.plots import sweep_plot
from components.report.plots import curve_png

PLOT_TITLES = {"pretrain": "pretraining", "continual": "continual pretraining", "align": "supervised fine-tuning"}
STAGE_ORDER = ["curate", "curate_continual", "pretrain", "continual", "align", "quantize", "evaluate", "register"]


HEADLINE = {
    "curate": "Curation: pretraining corpus",
    "curate_continual": "Curation: continual corpus",
    "pretrain": "Pretraining",
    "align": "Alignment (SFT)",
    "evaluate": "Evaluation",
    "quantize": "Quantization (size and quality deltas)",
    "continual": "Continual pretraining (forgetting)",
    "register": "Registry",
}


def stage_title(stage: str) -> str:
    """The heading a stage's numbers have in the report (and in ``lmforge show``)."""
    return HEADLINE.get(stage, stage)


def number_text(v: float) -> str:
    """A number as the report prints it (MLflow returns every metric as a float; whole ones print as integers)."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else _fmt(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _md(v: Any) -> str:
    """A value inside a Markdown table cell (no HTML escaping; a pipe would end the cell)."""
    return (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|")


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("metric", "value")) -> tuple[str, str]:
    h = "<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
    # number_text, as `lmforge show` prints them: a whole float (262500.0) reads 262500, not 2.625e+05
    h += "".join(f"<tr><td>{html.escape(k)}</td><td>{number_text(v)}</td></tr>" for k, v in rows) + "</table>"
    md = f"| {head[0]} | {head[1]} |\n|---|---|\n" + "".join(f"| {k} | {number_text(v)} |\n" for k, v in rows)
    return h, md


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _curve(summary: dict, key: str = "loss_curve") -> list:
    return summary.get(key) or []


def _heldout_curves(summary: dict) -> dict[str, list]:
    """Continual's held-out probe curves, one per corpus (runs before per-corpus probes: the old one)."""
    if not summary.get("heldout_curves"):
        return {"held-out loss (old corpus)": _curve(summary, "old_heldout_curve")}
    corpora = summary.get("corpora", {})
    role = {label: "old" for label in corpora.get("old", [])} | {corpora.get("new", ""): "new"}
    return {
        f"held-out loss ({label}, {role.get(label, 'corpus')})": curve
        for label, curve in summary["heldout_curves"].items()
    }


GATE_HEAD = ("rule", "new", "champion", "noise margin", "result", "why")


def _summary(summaries: dict[str, dict]) -> tuple[str, str]:
    """What a reader wants first: what was registered, the gate's verdict and the deciding numbers."""
    reg = summaries.get("register", {})
    verdict = summaries.get("evaluate", {}).get("verdict")
    if not reg and not verdict:
        return "", ""
    lines = []
    if reg:
        lines.append(f"Registered {reg.get('registry_uri', '?')} as <b>{html.escape(str(reg.get('alias', '?')))}</b>.")
    if verdict:
        lines.append(
            f"Promotion gate: <b>{'pass' if verdict['promote'] else 'fail'}</b>: {html.escape(verdict['reason'])}."
        )
    h = "<h2>Summary</h2><p>" + " ".join(lines) + "</p>"
    md = "\n## Summary\n\n" + " ".join(lines).replace("<b>", "**").replace("</b>", "**") + "\n"
    if verdict:
        rows = [
            (r["rule"], r["new"], r["champion"], r["margin"], "pass" if r["passed"] else "FAIL", r["note"])
            for r in verdict["rules"]
        ]
        h += "<table><tr>" + "".join(f"<th>{c}</th>" for c in GATE_HEAD) + "</tr>"
        h += "".join(
            "<tr>" + "".join(f"<td>{'—' if v is None else _fmt(v)}</td>" for v in row) + "</tr>" for row in rows
        )
        h += "</table>"
        md += "\n| " + " | ".join(GATE_HEAD) + " |\n|" + "---|" * len(GATE_HEAD) + "\n"
        md += "".join("| " + " | ".join("—" if v is None else _md(v) for v in row) + " |\n" for row in rows) + "\n"
    return h, md


def build_report(summaries: dict[str, dict], context: dict[str, str]) -> tuple[str, str, dict[str, bytes]]:
    """Returns (html, markdown, images by file name) for the stage ``summaries`` of one run."""
    images: dict[str, bytes] = {}
    title = f"lmforge {context.get('pipeline', 'lifecycle')} run"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    md = [f"# {title}\n"]

    s_html, s_md = _summary(summaries)
    parts.append(s_html)
    md.append(s_md)

    t_html, t_md = _table(sorted(context.items()), ("", ""))
    parts.append(t_html)
    md.append(t_md)

    cont = summaries.get("continual", {})
    plots = {
        "pretrain": {"train loss": _curve(summaries.get("pretrain", {}))},
        # The old corpus' held-out loss beside the new training loss shows forgetting and the
        # stability gap (a rise early in re-warming that later partly recovers).
        "continual": {
            "train loss (new corpus)": _curve(cont),
            **_heldout_curves(cont),
        },
        "align": {"SFT loss (answer tokens)": _curve(summaries.get("align", {}))},
    }
    parts.append("<h2>Training loss</h2>")
    md.append("\n## Training loss\n")
    for name, curves in plots.items():
        curves = {k: v for k, v in curves.items() if v}
        if curves:
            fname = f"loss_{name}.png"
            images[fname] = curve_png(curves, PLOT_TITLES[name])
            parts.append(_img(images[fname], f"{name} loss curves"))
            md.append(f"![{name} loss]({fname})\n")

    for stage in STAGE_ORDER:
        summary = summaries.get(stage)
        if not summary:
            continue
        metrics = {k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, (int, float))}
        title = stage_title(stage)
        t_html, t_md = _table(sorted(metrics.items()))
        parts.append(f"<h2>{html.escape(title)}</h2>{t_html}")
        md.append(f"\n## {title}\n\n{t_md}")
        if stage == "quantize" and summary.get("sweep"):
            images["quantize_sweep.png"] = sweep_plot(summary["sweep"], summary["metrics"].get("perplexity_before"))
            parts.append(_img(images["quantize_sweep.png"], "low-bit sweep: bits vs perplexity"))
            md.append("\n![low-bit sweep](quantize_sweep.png)\n")
        if stage == "align" and summary.get("samples"):
            parts.append("<h3>Samples</h3>")
            for s in summary["samples"][:3]:
                parts.append(f"<pre>{html.escape(str(s))}</pre>")

    style = (
        "<style>body{font-family:sans-serif;max-width:900px;margin:1em auto}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}</style>"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>lmforge run</title>{style}</head><body>{''.join(parts)}</body></html>"
    return page, "".join(md), images
