"""Plots more than one stage draws (matplotlib's Agg backend, PNG bytes: no display needed)."""

from __future__ import annotations

import io


def sweep_plot(rows: list[dict], baseline: float | None) -> bytes:
    """The low-bit study: bits vs held-out perplexity, a line per group size (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for group in sorted({r["group_size"] for r in rows}):
        points = sorted((r["bits"], r["perplexity"]) for r in rows if r["group_size"] == group)
        ax.plot(*zip(*points, strict=True), marker="o", label=f"group {group or 'per row'}")
    if baseline:
        ax.axhline(baseline, color="grey", linestyle="--", label="unquantized")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (round-to-nearest)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("Low-bit weight quantization")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
