"""The data card: one self-contained HTML page describing a curated dataset, for people to trust it.

Rendered from the curation report (``curation_report.json``, built by the curate run; its keys are
listed in :data:`REQUIRED` and :data:`OPTIONAL`). The Kubeflow UI shows an HTML artifact inline
without access to the object store, so the images are PNGs (matplotlib, no display needed) embedded
as base64 data URIs and the styles are inline. Every piece of document text or input name is
HTML-escaped: dropped documents are exactly the ones that may hold markup or script.

Sections: summary, counts at every step (with per-rule drops), languages, lengths, duplicate
clusters, examples of dropped documents per rule, inputs (digests, quarantine), shard lineage
(shard → input files) and the curate config. An optional key that is absent is shown as
"not reported"; a required key that is absent is an error naming it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from components.common.errors import DataError

CARD = "data_card.html"
REQUIRED = ("source", "inputs", "steps", "tokens")
OPTIONAL = (
    "examples",
    "languages",
    "lengths",
    "dedup_clusters",
    "synthetic",
    "selection",
    "quarantined",
    "shards",
    "config",
)
STEP_KEYS = ("name", "input", "kept", "dropped")
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}tr.rule td{color:#555;font-size:90%}"
    "pre{white-space:pre-wrap;background:#f6f6f6;padding:6px;max-height:20em;overflow:auto}.na{color:#888}"
)


def render_data_card(report: dict, out_dir: Path) -> Path:
    """Write ``out_dir/data_card.html`` for ``report``; returns its path.

    Raises :class:`DataError` naming the key when a required key (or a step's field) is missing.
    """
    _check(report)
    parts = [f"<h1>Data card: {_e(report['source'])}</h1>", _summary(report), _steps(report["steps"])]
    parts += [_languages(report), _lengths(report), _dedup(report), _examples(report)]
    parts += [_inputs(report["inputs"]), _shards(report), _config(report)]
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Data card: {_e(report["source"])}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = Path(out_dir) / CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def log_data_card(path: Path, run_id: str, artifact_path: str = "data_card") -> None:
    """Attach the card to an MLflow run (after ``lineage.setup`` pointed MLflow at the tracking store)."""
    import mlflow

    mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path=artifact_path)


def _check(report: dict) -> None:
    for key in REQUIRED:
        if key not in report:
            raise DataError(f"curation report: missing required key {key!r} (required: {', '.join(REQUIRED)})")
    for n, step in enumerate(report["steps"]):
        for key in STEP_KEYS:
            if key not in step:
                raise DataError(f"curation report: steps[{n}] ({step.get('name', '?')!r}) misses key {key!r}")
    for key in ("train", "heldout"):
        if key not in report["tokens"]:
            raise DataError(f"curation report: tokens misses key {key!r}")


def _summary(report: dict) -> str:
    steps, tokens = report["steps"], report["tokens"]
    total = tokens["train"] + tokens["heldout"]
    rows: list[tuple[str, Any]] = [
        ("input files", len(report["inputs"])),
        ("documents read", steps[0]["input"] if steps else "–"),
        ("documents kept", steps[-1]["kept"] if steps else "–"),
        ("train tokens", tokens["train"]),
        ("held-out tokens", tokens["heldout"]),
    ]
    if "quarantined" in report:
        rows.append(("quarantined records", report["quarantined"]))
    if (syn := report.get("synthetic")) is not None:
        share = syn.get("tokens", 0) / total if total else 0.0
        rows += [
            ("synthetic documents", syn.get("documents", 0)),
            ("synthetic tokens", f"{syn.get('tokens', 0):,} ({share:.1%} of all tokens)"),
            ("rephrasing style", syn.get("style") or "off"),
        ]
    if sel := report.get("selection"):
        coverage = f", facility-location coverage {sel['coverage']:.1%}" if sel.get("coverage") is not None else ""
        rows.append(
            (
                "informative subset",
                f"{sel['selected']:,} of {sel['candidates']:,} training documents "
                f"({sel['fraction']:.0%}, {sel['method']}{coverage})",
            )
        )
    if q := report.get("quality"):
        low, mid, high = q["quantiles"] or ("–", "–", "–")
        rows.append(
            (
                "quality score",
                f"{q['documents']:,} training documents scored, mean {q['mean']}, "
                f"p10 / p50 / p90 {low} / {mid} / {high} ({q['rule']})",
            )
        )
    return "<h2>Summary</h2>" + _table(("", ""), rows)


def _steps(steps: list[dict]) -> str:
    head = "<tr><th>step</th><th>input</th><th>kept</th><th>dropped</th><th>dropped %</th></tr>"
    rows = []
    for s in steps:
        pct = f"{s['dropped'] / s['input']:.2%}" if s["input"] else "–"
        cells = [s["input"], s["kept"], s["dropped"], pct]
        rows.append(f"<tr><td>{_e(s['name'])}</td>" + "".join(f'<td class="n">{_e(c)}</td>' for c in cells) + "</tr>")
        for rule, n in sorted((s.get("rules") or {}).items(), key=lambda kv: -kv[1]):
            rows.append(
                f'<tr class="rule"><td>&nbsp;&nbsp;↳ {_e(rule)}</td><td></td><td></td><td class="n">{_e(n)}</td><td></td></tr>'
            )
    return f"<h2>Counts at every step</h2><table>{head}{''.join(rows)}</table>"


def _languages(report: dict) -> str:
    langs = report.get("languages")
    if langs is None:
        return _absent("Languages", "languages")
    ranked = sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))
    img = _img(
        _bar_png([k for k, _ in ranked[:30]], [v for _, v in ranked[:30]], "kept documents per language"), "languages"
    )
    return "<h2>Languages</h2>" + img + _table(("language", "kept documents"), ranked)


def _lengths(report: dict) -> str:
    lengths = report.get("lengths")
    if lengths is None:
        return _absent("Document lengths", "lengths")
    if not lengths:
        return '<h2>Document lengths</h2><p class="na">no documents</p>'
    import numpy as np

    a = np.asarray(lengths)
    stats = [
        (k, int(v)) for k, v in zip(("min", "median", "p90", "max"), np.percentile(a, [0, 50, 90, 100]), strict=True)
    ]
    return (
        "<h2>Document lengths (characters)</h2>"
        + _img(_hist_png(a), "length histogram")
        + _table(("", ""), [("documents", len(a)), *stats])
    )


def _dedup(report: dict) -> str:
    clusters = report.get("dedup_clusters")
    if clusters is None:
        return _absent("Duplicate clusters", "dedup_clusters")
    ranked = sorted(((int(size), n) for size, n in clusters.items()))
    removed = sum((size - 1) * n for size, n in ranked)
    return (
        "<h2>Duplicate clusters</h2>"
        f"<p>{removed} documents removed as duplicates (one kept per cluster).</p>"
        + _table(("cluster size", "clusters"), ranked)
    )


def _examples(report: dict) -> str:
    examples = report.get("examples")
    if examples is None:
        return _absent("Examples of dropped documents", "examples")
    blocks = [
        f"<details><summary>{_e(rule)} ({len(texts)} shown)</summary>"
        + "".join(f"<pre>{_e(t)}</pre>" for t in texts)
        + "</details>"
        for rule, texts in sorted(examples.items())
    ]
    return "<h2>Examples of dropped documents</h2>" + ("".join(blocks) or '<p class="na">none dropped</p>')


def _inputs(inputs: list[dict]) -> str:
    head = "<tr><th>input</th><th>sha256</th><th>records</th><th>quarantined</th><th>error</th></tr>"
    rows = [
        f'<tr><td>{_e(i.get("uri"))}</td><td title="{_e(i.get("sha256"))}"><code>{_e(str(i.get("sha256"))[:16])}</code></td>'
        f'<td class="n">{_e(i.get("records"))}</td><td class="n">{_e(i.get("quarantined"))}</td>'
        f"<td>{_e(i.get('error') or '')}</td></tr>"
        for i in inputs
    ]
    return f"<h2>Inputs</h2><table>{head}{''.join(rows)}</table>"


def _shards(report: dict) -> str:
    shards = report.get("shards")
    if shards is None:
        return _absent("Shard lineage", "shards")
    head = "<tr><th>shard</th><th>split</th><th>tokens</th><th>input files</th></tr>"
    rows = [
        f'<tr><td>{_e(s.get("path"))}</td><td>{_e(s.get("split"))}</td><td class="n">{_e(s.get("tokens"))}</td>'
        f"<td>{'<br>'.join(_e(u) for u in s.get('inputs', []))}</td></tr>"
        for s in shards
    ]
    return f"<h2>Shard lineage</h2><table>{head}{''.join(rows)}</table>"


def _config(report: dict) -> str:
    if "config" not in report:
        return _absent("Filter configuration", "config")
    text = json.dumps(report["config"], indent=2, sort_keys=True, default=str)
    return f"<h2>Filter configuration</h2><pre>{_e(text)}</pre>"


def _bar_png(labels: list[str], values: list[int], title: str) -> bytes:
    fig, ax = _figure()
    ax.bar(range(len(values)), values, color="#4c72b0")
    if values and max(values) > 50 * max(min(values), 1):  # keep the rare languages visible
        ax.set_yscale("log")
    ax.set_xticks(
        range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center"
    )
    ax.set_title(title)
    return _png(fig)


def _hist_png(lengths) -> bytes:
    import numpy as np

    fig, ax = _figure()
    low, high = max(int(lengths.min()), 1), max(int(lengths.max()), 2)
    if high / low > 100:  # web text spans orders of magnitude: log bins show the whole range
        ax.hist(lengths, bins=np.geomspace(low, high, 40), color="#55a868")
        ax.set_xscale("log")
    else:
        ax.hist(lengths, bins=40, color="#55a868")
    ax.set_xlabel("characters")
    ax.set_ylabel("documents")
    ax.set_title("kept document lengths")
    return _png(fig)


def _figure():
    # The object-oriented API needs no pyplot global state and no display; PNGs are drawn by Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    return fig, fig.subplots()


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def _table(head: tuple[str, str], rows: list[tuple[Any, Any]]) -> str:
    body = "".join(f'<tr><td>{_e(k)}</td><td class="n">{_e(v)}</td></tr>' for k, v in rows)
    top = f"<tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>" if any(head) else ""
    return f"<table>{top}{body}</table>"


def _absent(title: str, key: str) -> str:
    return f'<h2>{title}</h2><p class="na">not reported (the curation report has no {_e(repr(key))} key)</p>'


def _e(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"  # 114,000 reads faster than 114000
    return html.escape(str(value), quote=True)
