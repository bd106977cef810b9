"""A block's peak resident memory, read from the kernel's high-water mark after resetting it."""

from __future__ import annotations

import sys

import pytest

from components.common import memory
from components.common.memory import MB, counter_slack_mb, peak_memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the high-water mark is reset through /proc")

# Well above what the kernel's counters may lag by (counter_slack_mb grows with the CPU count).
N_MB = max(64, round(8 * counter_slack_mb()))


def _touch(n_mb: int) -> bytes:
    # Written byte by byte (not calloc'ed zero pages, which stay unmapped until touched).
    return b"\x01" * (n_mb * MB)


@linux
def test_allocating_n_mb_raises_the_peak_by_at_least_n_mb_even_when_freed_inside_the_block():
    with peak_memory() as m:
        block = _touch(N_MB)
        del block
    assert not m.unsupported
    # The kernel's per-CPU counters fold in batches: each reading may lag by that much.
    assert m.increase_mb >= N_MB - counter_slack_mb()


@linux
def test_a_block_that_allocates_nothing_measures_less_than_one_that_allocates():
    with peak_memory() as allocating:
        block = _touch(N_MB)
        del block
    with peak_memory() as idle:
        pass
    assert 0 <= idle.increase_mb < allocating.increase_mb
    assert idle.increase_mb < N_MB


@linux
def test_an_earlier_peak_is_not_charged_to_a_later_block():
    block = _touch(N_MB)
    del block
    with peak_memory() as later:
        pass
    assert later.increase_mb < N_MB


def test_without_a_resettable_mark_nothing_is_measured_and_the_reason_is_given(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "STATUS", tmp_path / "no-status")
    with peak_memory() as m:
        _touch(1)
    assert m.peak_mb is None and m.increase_mb is None
    assert "no-status" in m.unsupported
