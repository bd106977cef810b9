"""Forgetting and the stability gap: the old corpus' held-out loss, measured while training on the new.

Continual pretraining first *loses* old-domain performance sharply after the switch and then partly
recovers it (the "stability gap", De Lange et al., 2023); before/after numbers alone hide that dip.
:class:`OldHeldoutProbe` is a loop callback that, on rank 0, measures the old held-out loss with the
same :func:`~components.training.heldout.heldout_loss` (same windows) as the before/after
numbers, a handful of times per run, so the curve and the endpoints are comparable. The other
ranks simply wait at the next all-reduce; the cost is a few forward passes over the held-out split.
"""

from __future__ import annotations

from components.training.callbacks import Callback, TrainState


class OldHeldoutProbe(Callback):
    """Every ``every`` steps, rank 0 records ``[step, old held-out loss]`` (kept in checkpoints)."""

    name = "old_heldout"

    def __init__(self, old_dataset_dir: str, *, every: int, seq_len: int, max_tokens: int, batch_size: int) -> None:
        self.old_dataset_dir, self.every = old_dataset_dir, max(1, every)
        self.seq_len, self.max_tokens, self.batch_size = seq_len, max_tokens, batch_size
        self.curve: list[list[float]] = []

    def post_step(self, state: TrainState) -> None:
        from components.training.heldout import heldout_loss

        if state.rank != 0 or state.step % self.every:
            return
        loss = heldout_loss(
            state.module,
            self.old_dataset_dir,
            seq_len=self.seq_len,
            max_tokens=self.max_tokens,
            batch_size=self.batch_size,
        )
        self.curve.append([state.step, loss])

    def state_dict(self) -> dict:
        return {"curve": self.curve}

    def load_state_dict(self, state: dict) -> None:
        self.curve = [list(point) for point in state.get("curve", [])]


def stability_gap(curve: list[list[float]]) -> float:
    """How far the old loss rose above both endpoints of ``curve`` ([[step, loss], ...], step 0 first).

    The transient dip that before/after numbers hide: 0 when the old loss only fell or only rose,
    positive when it rose while training and then partly recovered.
    """
    before, after = curve[0][1], curve[-1][1]
    peak = max(loss for _, loss in curve[1:])
    return max(0.0, peak - max(before, after))
