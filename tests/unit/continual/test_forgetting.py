"""The stability-gap number computed from the old corpus' held-out curve."""

import pytest

from components.continual.forgetting import stability_gap


def test_dip_then_recovery_is_a_positive_gap():
    assert stability_gap([[0, 2.0], [10, 3.0], [20, 2.6], [30, 2.4]]) == pytest.approx(0.6)


def test_steadily_falling_old_loss_has_no_gap():
    assert stability_gap([[0, 6.2], [4, 6.0], [8, 5.8]]) == 0.0


def test_steady_forgetting_without_recovery_has_no_gap():
    assert stability_gap([[0, 2.0], [4, 2.2], [8, 2.5]]) == 0.0
