"""Forgetting and the stability gap, from the old corpus' held-out loss measured while training on the new.

Continual pretraining first *loses* old-domain performance sharply after the switch and then partly
recovers it (the "stability gap", De Lange et al., 2023); before/after numbers alone hide that dip.
The curve comes from the training engine's held-out probes (``components/training/probes.py``),
measured by the workers at step 0, every ``continual.probe_every`` steps and at the end, with the
same windows as every other held-out number, so the curve and its endpoints are comparable.
"""

from __future__ import annotations


def stability_gap(curve: list[list[float]]) -> float:
    """How far the old loss rose above both endpoints of ``curve`` ([[step, loss], ...], step 0 first).

    The transient dip that before/after numbers hide: 0 when the old loss only fell or only rose,
    positive when it rose while training and then partly recovered.
    """
    before, after = curve[0][1], curve[-1][1]
    peak = max(loss for _, loss in curve[1:])
    return max(0.0, peak - max(before, after))
