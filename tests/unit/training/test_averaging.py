"""Weight averaging arithmetic: EMA with bias correction, uniform and weighted means of the last K."""

import pytest
import torch

from components.training.averaging import WeightAveraging, ema_update, ema_weights, mean_weights


class _State:
    """The fields the averaging callback reads from a TrainState."""

    def __init__(self, module, step: int) -> None:
        self.module, self.step = module, step


def _w(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([value, 2 * value])}


def _run(callback: WeightAveraging, module: torch.nn.Linear, values, start: int = 1) -> None:
    """Set the weight to each value in turn (as if an optimizer step had) and call post_step."""
    for step, value in enumerate(values, start=start):
        with torch.no_grad():
            module.weight.fill_(value)
        callback.post_step(_State(module, step))


def test_bias_corrected_ema_is_the_geometric_mean_of_the_weights_seen():
    ema = {"w": torch.zeros(2)}
    for v in (1.0, 2.0, 3.0):
        ema_update(ema, _w(v), 0.5)
    # (0.125*1 + 0.25*2 + 0.5*3) / (1 - 0.5**3): the zero start leaks nothing in
    assert ema_weights(ema, 0.5, 3)["w"] == pytest.approx(torch.tensor([2.125 / 0.875, 4.25 / 0.875]))


def test_uniform_mean_of_snapshots():
    assert mean_weights([_w(1.0), _w(2.0), _w(6.0)], "uniform")["w"] == pytest.approx(torch.tensor([3.0, 6.0]))


def test_weighted_mean_counts_newer_snapshots_more():
    # weights 1, 2, 3: (1*1 + 2*2 + 3*6) / 6
    assert mean_weights([_w(1.0), _w(2.0), _w(6.0)], "weighted")["w"] == pytest.approx(torch.tensor([23 / 6, 46 / 6]))


def test_last_k_average_is_loaded_into_the_model_after_the_last_step():
    module = torch.nn.Linear(2, 1, bias=False)
    averaging = WeightAveraging("uniform", total_steps=10, every=2, last_k=3, ema_decay=0.9)
    _run(averaging, module, [float(s) for s in range(1, 11)])
    assert averaging.state_dict()["averaged_steps"] == [6, 8, 10]  # only the last K are retained
    assert module.weight.detach() == pytest.approx(torch.full((1, 2), 8.0))


def test_ema_is_loaded_into_the_model_after_the_last_step():
    module = torch.nn.Linear(2, 1, bias=False)
    averaging = WeightAveraging("ema", total_steps=3, every=1, last_k=1, ema_decay=0.5)
    _run(averaging, module, [1.0, 2.0, 3.0])
    assert module.weight.detach() == pytest.approx(torch.full((1, 2), 2.125 / 0.875))


def test_resuming_from_saved_files_averages_as_an_uninterrupted_run(tmp_path):
    values = [1.0, 4.0, 2.0, 8.0, 5.0, 7.0]
    whole = torch.nn.Linear(2, 1, bias=False)
    _run(WeightAveraging("weighted", total_steps=6, every=1, last_k=4, ema_decay=0.9), whole, values)

    first = WeightAveraging("weighted", total_steps=6, every=1, last_k=4, ema_decay=0.9)
    _run(first, torch.nn.Linear(2, 1, bias=False), values[:4])
    first.save_files(tmp_path)  # the checkpoint at step 4
    _run(first, torch.nn.Linear(2, 1, bias=False), [9.0])  # step 5 of the failed attempt, lost
    resumed = WeightAveraging("weighted", total_steps=6, every=1, last_k=4, ema_decay=0.9)
    resumed.load_files(tmp_path)
    again = torch.nn.Linear(2, 1, bias=False)
    _run(resumed, again, values[4:], start=5)
    assert torch.equal(again.weight, whole.weight)
