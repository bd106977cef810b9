"""The content-keyed held-out split shared by alignment and evaluation."""

from __future__ import annotations

import pytest

from components.common.splits import heldout_score, is_heldout


def test_membership_depends_on_content_only():
    assert is_heldout("the same record", 0.3) == is_heldout("the same record", 0.3)
    assert heldout_score("a") != heldout_score("b")


def test_heldout_share_is_close_to_the_fraction():
    held = sum(is_heldout(f"record {i}", 0.2) for i in range(20_000))
    assert 0.19 < held / 20_000 < 0.21


def test_raising_the_fraction_only_moves_records_to_heldout():
    for i in range(2_000):
        if is_heldout(f"r{i}", 0.1):
            assert is_heldout(f"r{i}", 0.4)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_the_open_unit_interval_is_refused(fraction):
    with pytest.raises(ValueError, match="held-out fraction"):
        is_heldout("x", fraction)
