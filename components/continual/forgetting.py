"""Forgetting, adaptation and the stability gap, from held-out curves measured while training.

Continual pretraining first *loses* old-domain performance sharply after the switch and then partly
recovers it (the "stability gap", De Lange et al., 2023; Guo et al., 2024, "Efficient Continual
Pre-training by Mitigating the Stability Gap"); before/after numbers alone hide that dip, and a
handful of probes can miss it. So the workers measure the held-out loss of every old corpus and of
the new one at step 0 and at :func:`probe_steps` (>= 20 per run by default, denser while the LR
re-warms, where the dip opens), with the same windows as every other held-out number
(``components/training/probes.py``), and this module turns the curves into numbers.

Metric names, per corpus (its :func:`corpus_label`), which the evaluation gate reads:

- ``forgetting/<old corpus>``: held-out loss after minus before (positive = forgot);
- ``adaptation/<new corpus>``: held-out loss before minus after (positive = learned);
- ``stability_gap/<old corpus>``: the largest rise of the held-out loss over its value at step 0;
- ``recovery_steps/<old corpus>``: steps from the switch until the loss is back at or below its
  step-0 value after the peak (0 without a rise, -1 if it never came back within the run);
- ``heldout_loss_before/<corpus>``, ``heldout_loss_after/<corpus>``.

The unsuffixed ``forgetting``, ``stability_gap`` (worst over the old corpora) and ``adaptation``
keep the names earlier runs logged.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

Curve = list[list[float]]  # [[step, loss], ...], step 0 (before training) first


def probe_steps(steps: int, *, probes: int, every: int, warmup_steps: int, density: int) -> tuple[int, ...]:
    """The 1-based steps after which a continual run probes every corpus (the last step always).

    ``probes`` evenly spaced points (or one every ``every`` steps when ``every`` > 0), and ``density``
    times as many during re-warming and as many steps again after it: the stability gap opens while
    the LR climbs and peaks shortly after, so that is where a coarse grid would miss it.
    """
    spacing = every if every > 0 else max(1, steps // probes)
    points = set(range(spacing, steps + 1, spacing))
    dense = max(1, spacing // density)
    points |= set(range(dense, min(steps, 2 * warmup_steps) + 1, dense))
    return tuple(sorted(points | {steps}))


def corpus_label(source: str, uri: str) -> str:
    """A short, metric-safe name of a curated corpus: its source's file stem, else its store directory.

    ``quickstart/wikitext2.txt`` → ``wikitext2``; ``s3://raw/web/`` → ``web``.
    """
    name = PurePosixPath(source.rstrip("/")).name if source else ""
    for suffix in (".gz", ".jsonl", ".txt", ".json"):
        name = name.removesuffix(suffix)
    if not name:
        name = PurePosixPath(uri.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:48] or "corpus"


def unique_labels(labels: list[str]) -> list[str]:
    """The labels with repeats numbered (``web``, ``web-2``), so no two corpora share a metric name."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def stability_gap(curve: Curve) -> float:
    """The largest rise of the held-out loss over its value at step 0 (0 when it never rose)."""
    before = curve[0][1]
    return max(0.0, max(loss for _, loss in curve[1:]) - before)


def recovery_steps(curve: Curve) -> int:
    """Steps until the loss is back at or below its step-0 value after its peak; 0 without a rise, -1 if never."""
    before = curve[0][1]
    peak = max(range(1, len(curve)), key=lambda i: curve[i][1])
    if curve[peak][1] <= before:
        return 0
    for step, loss in curve[peak + 1 :]:
        if loss <= before:
            return int(step)
    return -1


def corpus_metrics(curves: dict[str, Curve], *, old: list[str], new: str) -> dict[str, float]:
    """The metrics above from the probes' ``curves`` (keyed by corpus label)."""
    metrics: dict[str, float] = {}
    for label, curve in curves.items():
        metrics[f"heldout_loss_before/{label}"] = curve[0][1]
        metrics[f"heldout_loss_after/{label}"] = curve[-1][1]
    for label in old:
        curve = curves[label]
        metrics[f"forgetting/{label}"] = curve[-1][1] - curve[0][1]
        metrics[f"stability_gap/{label}"] = stability_gap(curve)
        metrics[f"recovery_steps/{label}"] = recovery_steps(curve)
    metrics[f"adaptation/{new}"] = curves[new][0][1] - curves[new][-1][1]
    metrics["forgetting"] = max(metrics[f"forgetting/{label}"] for label in old)
    metrics["stability_gap"] = max(metrics[f"stability_gap/{label}"] for label in old)
    metrics["adaptation"] = metrics[f"adaptation/{new}"]
    return metrics
