"""Plots more than one stage draws, and the figure set-up every plot shares (matplotlib's Agg backend,
PNG bytes: no display needed)."""

from __future__ import annotations

import io


def new_axes():
    """``(figure, axes)`` of the report's size (6.4 x 3.2 in at 100 dpi) on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 3.2), dpi=100)


def png_bytes(fig) -> bytes:
    """``fig`` laid out and rendered as PNG; the figure is closed (pyplot keeps every open one alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def sweep_plot(rows: list[dict], baseline: float | None) -> bytes:
    """The low-bit study: bits vs held-out perplexity, a line per group size (log scale)."""
    fig, ax = new_axes()
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
    return png_bytes(fig)
