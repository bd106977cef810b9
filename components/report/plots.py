"""Loss-curve images for the run report, as PNG bytes (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from components.common.plots import new_axes, png_bytes


def curve_png(curves: dict[str, list], title: str, ylabel: str = "loss") -> bytes:
    """One PNG with a line per named curve; each curve is ``[[step, value], ...]``."""
    fig, ax = new_axes()
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
    return png_bytes(fig)
