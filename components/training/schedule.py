"""Learning-rate schedule: linear warmup to the peak, then cosine decay to a floor.

The schedule is a multiplier on the optimizer's peak LR, so one function serves pretraining and
continual pretraining (whose "warmup" is a re-warming from 0 to a new peak). The floor
``min_lr_ratio * peak`` keeps the model learning at the end instead of freezing it, and is the usual
starting point from which a later continual run re-warms (Ibrahim et al., 2024).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR of optimizer step ``step`` (0-based) as a fraction of the peak LR."""
    if step < warmup_steps:
        # (step + 1): the very first update already moves the weights a little.
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_multiplier` to every parameter group's peak LR."""
    return LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio),
    )
