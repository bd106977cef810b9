"""Loss-curve images for the run report, as PNG bytes (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import io


def curve_png(curves: dict[str, list], title: str, ylabel: str = "loss") -> bytes:
    """One PNG with a line per named curve; each curve is ``[[step, value], ...]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for name, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
