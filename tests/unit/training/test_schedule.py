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


def _m(step: int, schedule: str, **kw) -> float:
    args = {"warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1, "decay_steps": 20, **kw}
    return lr_multiplier(step, schedule=schedule, **args)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant", "inverse_sqrt"])
def test_every_schedule_warms_up_linearly_to_the_peak(schedule):
    assert [_m(s, schedule) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_wsd_holds_the_peak_until_the_decay_tail():
    assert [_m(s, "wsd") for s in (10, 50, 89)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("shape", "halfway"),
    [("linear", 0.1 + 0.9 * 0.5), ("sqrt", 0.1 + 0.9 * (1 - 0.5**0.5)), ("cosine", 0.1 + 0.9 * 0.5)],
)
def test_wsd_tail_follows_its_shape_to_the_floor(shape, halfway):
    # the tail is steps 90..109; step 100 is halfway, step 110 (after the last) sits on the floor
    assert _m(90, "wsd", decay_shape=shape) == pytest.approx(1.0)
    assert _m(100, "wsd", decay_shape=shape) == pytest.approx(halfway)
    assert _m(110, "wsd", decay_shape=shape) == pytest.approx(0.1)


def test_wsd_quarter_of_the_tail_separates_the_shapes():
    # a quarter into the tail: sqrt has dropped most (1 - 0.5), linear 0.25, cosine least
    quarter = {shape: _m(95, "wsd", decay_shape=shape) for shape in ("linear", "sqrt", "cosine")}
    assert quarter["sqrt"] == pytest.approx(0.1 + 0.9 * 0.5)
    assert quarter["linear"] == pytest.approx(0.1 + 0.9 * 0.75)
    assert quarter["cosine"] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0.5**0.5))


def test_constant_stays_at_the_peak_to_the_end():
    assert [_m(s, "constant") for s in (10, 60, 109, 500)] == [1.0, 1.0, 1.0, 1.0]


def test_inverse_sqrt_halves_after_four_warmups_and_stops_at_the_floor():
    assert _m(10, "inverse_sqrt") == pytest.approx(1.0)
    assert _m(40, "inverse_sqrt") == pytest.approx(0.5)  # sqrt(10 / 40)
    assert _m(10**6, "inverse_sqrt") == pytest.approx(0.1)


def test_the_scheduler_applies_the_chosen_schedule_to_the_optimizer():
    from components.training.schedule import lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = lr_scheduler(
        optimizer, warmup_steps=2, total_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_steps=4, decay_shape="linear"
    )
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5])


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_multiplier(20, warmup_steps=10, total_steps=50, min_lr_ratio=0.1, schedule="step")
