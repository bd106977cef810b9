"""The LR schedule: linear warmup to the peak, cosine decay to min_lr_ratio * peak."""

import pytest
import torch

from components.training.schedule import lr_multiplier, warmup_cosine


def _lrs(steps: int, warmup: int, min_ratio: float, peak: float = 2.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup, total_steps=steps, min_lr_ratio=min_ratio)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_rises_linearly_to_the_peak():
    lrs = _lrs(steps=50, warmup=10, min_ratio=0.1)
    assert lrs[:10] == pytest.approx([2.0 * (i + 1) / 10 for i in range(10)])
    assert max(lrs) == pytest.approx(2.0)


def test_cosine_decays_monotonically_to_the_floor():
    lrs = _lrs(steps=50, warmup=10, min_ratio=0.1)
    decay = lrs[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[-1] > 0.2 and decay[-1] == pytest.approx(0.2, abs=0.01)
    assert lr_multiplier(50, warmup_steps=10, total_steps=50, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_never_goes_below_the_floor_after_the_last_step():
    assert lr_multiplier(500, warmup_steps=10, total_steps=50, min_lr_ratio=0.25) == pytest.approx(0.25)


def test_no_warmup_starts_at_the_peak():
    assert _lrs(steps=20, warmup=0, min_ratio=0.0)[0] == pytest.approx(2.0)
