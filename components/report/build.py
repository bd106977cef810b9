"""The run report: one self-contained HTML page (and a Markdown twin) that reads like a release report.

Order, as a reader wants it: a summary first (what was registered, under which alias, and the
promotion gate's verdict with the deciding numbers beside the champion's), then one section per stage
in pipeline order (curation with links to the data cards, pretraining, continual pretraining,
alignment, quantization, evaluation, registration), then where the run's pieces live. A stage that did
not run has no section at all (the continual pipeline starts from a champion: no pretraining).

The Kubeflow UI renders HTML and Markdown output artifacts inline, so the images are embedded as
base64 data URIs: the page needs no access to the object store to display. The same page is logged
to the MLflow parent run. Input is the completion summaries of every stage, keyed by stage name
(:data:`STAGE_ORDER`), and the store URI of each stage's output (for links such as the data card).
"""

from __future__ import annotations

import html

from components.report.blocks import Section, Text, inline_html, number_text, to_html, to_markdown
from components.report.release import evaluate_section, quantize_section, register_section, run_section, summary_section
from components.report.training import align_section, continual_section, curate_section, pretrain_section

__all__ = ["STAGE_ORDER", "build_report", "number_text", "stage_title"]

#: Stage summaries in pipeline order (``prefer`` is the preference step after SFT).
STAGE_ORDER = [
    "curate",
    "curate_continual",
    "pretrain",
    "continual",
    "align",
    "prefer",
    "quantize",
    "evaluate",
    "register",
]

HEADLINE = {
    "curate": "Curation: pretraining corpus",
    "curate_continual": "Curation: continual corpus",
    "pretrain": "Pretraining",
    "continual": "Continual pretraining",
    "align": "Alignment: supervised fine-tuning",
    "prefer": "Alignment: preference step",
    "quantize": "Quantization",
    "evaluate": "Evaluation",
    "register": "Registration",
}

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}"
    "h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
    "nav{color:#555;margin:.5em 0 1em}"
    "#summary{background:#f7f9fc;border-left:4px solid #888;padding:.2em 1em .6em}"
    "#summary.pass{border-left-color:#2a7a2a}#summary.fail{border-left-color:#b03030}"
    "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;"
    "vertical-align:top}th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "table.facts td:first-child{color:#555}table.facts td.n{text-align:left}td{overflow-wrap:anywhere}"
    "table.text{table-layout:fixed;width:100%}code{font-size:90%;word-break:break-all}"
    "figure{margin:.6em 0}img{max-width:100%}details{margin:.5em 0;color:#444}summary{cursor:pointer}"
    "pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}"
)


def stage_title(stage: str) -> str:
    """The heading a stage's numbers have in the report (and in ``lmforge show``)."""
    return HEADLINE.get(stage, stage)


def stage_sections(summaries: dict[str, dict], uris: dict[str, str]) -> list[Section]:
    """One section per stage that ran, in pipeline order (SFT and the preference step share one)."""
    sections = []
    for key in ("curate", "curate_continual"):
        if summaries.get(key):
            sections.append(curate_section(key, stage_title(key), summaries[key], uris.get(key, "")))
    if summaries.get("pretrain"):
        sections.append(pretrain_section(summaries["pretrain"]))
    if summaries.get("continual"):
        sections.append(continual_section(summaries["continual"]))
    if summaries.get("align") or summaries.get("prefer"):
        sections.append(align_section(summaries.get("align"), summaries.get("prefer")))
    for key, make in (("quantize", quantize_section), ("evaluate", evaluate_section), ("register", register_section)):
        if summaries.get(key):
            sections.append(make(summaries[key]))
    return sections


def build_report(
    summaries: dict[str, dict], context: dict[str, str], uris: dict[str, str] | None = None
) -> tuple[str, str, dict[str, bytes]]:
    """Returns (html, markdown, images by file name) for the stage ``summaries`` of one run.

    ``context``: labelled facts about the run (profile, run ids, UI links; ``pipeline`` names it).
    ``uris``: stage → store URI of its output, for links into the store (the data cards).
    """
    title = f"lmforge {context.get('pipeline', 'lifecycle')} run"
    summary = summary_section(summaries)
    sections = stage_sections(summaries, uris or {})
    details = {k: v for k, v in context.items() if k != "pipeline"}
    if details:
        sections.append(run_section(details))
    nav = Text(" · ".join(f"[{s.title}](#{s.key})" for s in sections))

    images: dict[str, bytes] = {}
    verdict = (summaries.get("evaluate") or {}).get("verdict")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    md = [f"# {title}\n\n"]
    if summary is not None:
        summary_html = to_html(summary, images)
        if verdict:  # the verdict colours the summary's edge: a reader sees pass or fail at a glance
            state = "pass" if verdict.get("promote") else "fail"
            summary_html = summary_html.replace('<section id="summary">', f'<section id="summary" class="{state}">', 1)
        parts.append(summary_html)
        md.append(to_markdown(summary))
    parts.append(f"<nav>{inline_html(nav.text)}</nav>")
    md.append(to_markdown(nav))
    for section in sections:
        parts.append(to_html(section, images))
        md.append(to_markdown(section))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    return page, "".join(md), images
