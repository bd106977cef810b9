"""EC group placement and the payload framing: pure functions every rank must compute alike."""

from __future__ import annotations

import pytest

from components.common.errors import ConfigError, RecoveryError
from components.resilience.payload import frame, unframe
from components.resilience.placement import Placement
from tests.unit.resilience.tiny_training import make_state, run_steps


def test_each_group_spans_k_plus_m_distinct_nodes_starting_at_its_ranks_node():
    placement = Placement.build(["b", "a"], ["a", "b", "c", "d"], k=2, m=1)
    assert placement.ring == ("b", "a", "c", "d")
    assert placement.groups == (("b", "a", "c"), ("a", "c", "d"))
    assert all(len(set(nodes)) == 3 for nodes in placement.groups)


def test_expected_pieces_name_every_node_including_those_holding_none():
    placement = Placement.build(["a", "b"], ["a", "b", "c", "d"], k=2, m=1)
    expected = placement.expected(7)
    assert set(expected) == {"a", "b", "c", "d"}
    assert sum(len(ids) for ids in expected.values()) == 6
    assert placement.pieces_per_node() == 2


def test_more_pieces_per_group_than_nodes_is_refused_naming_the_keys():
    with pytest.raises(ConfigError, match=r"resilience.k \+ resilience.m = 4 \+ 2 = 6 needs at least 6 Ray nodes"):
        Placement.build(["a", "b"], ["a", "b", "c"], k=4, m=2)


def test_payload_round_trips_layout_and_buffer():
    from components.resilience.layout import SnapshotLayout
    from components.resilience.ownership import parameter_sizes

    state = make_state()
    run_steps(state, 1)
    layout = SnapshotLayout.build(state.module, state.optimizer, [n for n, _ in parameter_sizes(state.module)])
    buffer = bytes(range(256)) * (layout.total_bytes // 256 + 1)
    restored, view = unframe(frame(layout, buffer[: layout.total_bytes]))
    assert restored == layout and bytes(view) == buffer[: layout.total_bytes]


def test_unframing_bytes_that_are_no_snapshot_raises_recovery_error():
    with pytest.raises(RecoveryError, match="bad magic"):
        unframe(b"not a snapshot at all", where="group 3")
