"""Learning-rate schedules, as a multiplier on the optimizer's peak LR (one function per step).

Every schedule starts with a linear warmup from 0 to the peak (for continual pretraining this is the
*re-warming* from the base checkpoint, with the continual run's own warmup and peak: Gupta et al.,
2023, "Continual Pre-Training of LLMs: How to (re)warm your model?"), then:

- ``cosine``: cosine decay to ``min_lr_ratio * peak`` at the last step. The floor keeps the model
  learning at the end and is the usual starting point from which a later run re-warms (Ibrahim et
  al., 2024).
- ``wsd``: warmup-stable-decay. The LR stays at the peak until the last ``decay_steps`` steps, then
  decays to the floor with the shape ``decay_shape``: ``linear``, ``sqrt`` (``1 - sqrt(progress)``,
  the "1-sqrt" cooldown Hägele et al., 2024 found to match cosine) or ``cosine``. Because the stable
  phase does not depend on the run's length, any stable-phase step can branch a short decay to get an
  evaluation model while the stable run goes on ("river valley" view, Wen et al., 2024).
- ``constant``: the peak after warmup, until the end (no decay; what checkpoint averaging replaces
  the decay with, and the "constant LR" arm of the re-warming experiments).
- ``inverse_sqrt``: ``sqrt(w / (w + step - warmup))`` after warmup (``w = max(1, warmup_steps)``, so it
  is 1 right after warmup), never below the floor: the classic Transformer schedule, no fixed end.

The multiplier is a pure function of the step, so a resumed run (whose ``LambdaLR`` state is just the
step count) and a branch started from a stable-phase checkpoint follow exactly the same LRs.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from components.common.config import DECAY_SHAPES, SCHEDULES

__all__ = ["DECAY_SHAPES", "SCHEDULES", "decay_curve", "lr_multiplier", "lr_scheduler", "schedule_fields"]


def decay_curve(progress: float, shape: str) -> float:
    """Fraction of the way from the floor to the peak after ``progress`` (0..1) of a decay of ``shape``."""
    progress = min(1.0, max(0.0, progress))
    if shape == "linear":
        return 1.0 - progress
    if shape == "sqrt":
        return 1.0 - math.sqrt(progress)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown decay shape {shape!r}; expected one of {', '.join(DECAY_SHAPES)}")


def lr_multiplier(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    schedule: str = "cosine",
    decay_steps: int = 0,
    decay_shape: str = "sqrt",
) -> float:
    """LR of optimizer step ``step`` (0-based) as a fraction of the peak LR.

    ``decay_steps`` and ``decay_shape`` apply to ``wsd`` only (the tail that decays to the floor).
    """
    if step < warmup_steps:
        # (step + 1): the very first update already moves the weights a little.
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        w = max(1, warmup_steps)
        return max(min_lr_ratio, math.sqrt(w / (w + step - warmup_steps)))
    if schedule == "cosine":
        start, length, shape = warmup_steps, max(1, total_steps - warmup_steps), "cosine"
    elif schedule == "wsd":
        start, length, shape = total_steps - decay_steps, max(1, decay_steps), decay_shape
        if step < start:
            return 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay_curve((step - start) / length, shape)


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float,
    schedule: str = "cosine",
    decay_steps: int = 0,
    decay_shape: str = "sqrt",
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_multiplier` to every parameter group's peak LR."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            min_lr_ratio=min_lr_ratio,
            schedule=schedule,
            decay_steps=decay_steps,
            decay_shape=decay_shape,
        ),
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """Warmup then cosine decay (:func:`lr_scheduler` with ``schedule="cosine"``)."""
    return lr_scheduler(optimizer, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)


def schedule_fields(section) -> dict:
    """The schedule of a ``pretrain`` or ``continual`` config section as :class:`TrainSpec` fields.

    A WSD tail is ``decay_fraction`` of the steps, at least one (the config checks that it fits).
    """
    wsd = section.schedule == "wsd"
    return {
        "warmup_steps": section.warmup_steps,
        "min_lr_ratio": section.min_lr_ratio,
        "schedule": section.schedule,
        "decay_steps": max(1, round(section.steps * section.decay_fraction)) if wsd else 0,
        "decay_shape": section.decay_shape,
    }
