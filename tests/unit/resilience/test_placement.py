"""EC group placement and the payload framing: pure functions every rank must compute alike."""

from __future__ import annotations

import logging

import pytest

from components.common.errors import ConfigError, RecoveryError
from components.resilience import placement as placement_module
from components.resilience.payload import frame, unframe
from components.resilience.placement import Placement, eligible_nodes
from components.training.rayjob import HOST_LABEL, ROLE_LABEL
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


def _node(node_id: str, host: str | None = None, role: str | None = None, alive: bool = True) -> dict:
    """One record as ``ray.nodes()`` returns it (the fields placement reads)."""
    labels = {"ray.io/node-id": node_id}
    if host is not None:
        labels[HOST_LABEL] = host
    if role is not None:
        labels[ROLE_LABEL] = role
    return {"NodeID": node_id, "Alive": alive, "Labels": labels}


def test_two_ray_nodes_on_one_host_never_hold_two_pieces_of_a_group():
    hosts = {"a1": "h1", "a2": "h1", "b1": "h2", "b2": "h2", "c1": "h3", "d1": "h4"}
    ranks = ["a1", "a2", "b1", "b2"]  # two ranks per host, as with two pods (or GPUs) per machine
    placement = Placement.build(ranks, hosts, k=2, m=1)
    assert not placement.short and placement.hosts == 4
    for rank, nodes in enumerate(placement.groups):
        assert nodes[0] == ranks[rank]  # piece 0 stays on the rank's own node
        assert len({hosts[n] for n in nodes}) == 3, nodes
    # the pieces a host receives are spread over its nodes, not piled on the first one
    assert {n for nodes in placement.groups for n in nodes[1:] if hosts[n] == "h2"} == {"b1", "b2"}


def test_too_few_hosts_are_refused_even_with_enough_ray_nodes():
    hosts = {"a1": "h1", "a2": "h1", "b1": "h2"}
    with pytest.raises(ConfigError, match=r"needs at least 3 Ray nodes on distinct hosts .* has 2"):
        Placement.build(["a1", "b1"], hosts, k=2, m=1)


def test_a_restart_with_fewer_hosts_than_k_plus_m_places_anyway_and_says_so():
    placement = Placement.build(["a", "b"], ["a", "b"], k=2, m=1, allow_fewer=True)
    assert placement.short and placement.hosts == 2
    assert all(len(nodes) == 3 and nodes[0] == rank for rank, nodes in zip("ab", placement.groups, strict=True))
    assert placement.pieces_per_node() == 3
    assert Placement.from_dict(placement.to_dict()) == placement


def test_nodes_with_another_role_get_no_pieces_and_unlabelled_roles_take_part():
    nodes = [
        _node("head", "h0", role="head"),
        _node("cpu1", "h5", role="cpu"),
        _node("t1", "h1", role="train"),
        _node("t2", "h2", role="train"),
        _node("k1", "h3", role="keeper"),
        _node("u1", "h4"),
        _node("dead", "h6", role="train", alive=False),
    ]
    hosts = eligible_nodes(nodes)
    assert hosts == {"t1": "h1", "t2": "h2", "k1": "h3", "u1": "h4"}
    placement = Placement.build(["t1", "t2"], hosts, k=2, m=1)
    assert {n for nodes in placement.groups for n in nodes} <= set(hosts)


def test_a_rank_on_a_node_that_holds_no_pieces_is_refused_naming_the_label():
    hosts = eligible_nodes([_node("head", "h0", role="head"), _node("t1", "h1"), _node("t2", "h2"), _node("t3", "h3")])
    with pytest.raises(ConfigError, match=ROLE_LABEL):
        Placement.build(["head", "t1"], hosts, k=2, m=1)


def test_nodes_without_a_host_label_are_their_own_host_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(placement_module, "_warned_unlabeled", set())
    nodes = [_node("n1"), _node("n2"), _node("n3", "h3")]
    with caplog.at_level(logging.WARNING, logger=placement_module.log.name):
        assert eligible_nodes(nodes) == {"n1": "n1", "n2": "n2", "n3": "h3"}
        assert eligible_nodes(nodes) == {"n1": "n1", "n2": "n2", "n3": "h3"}
    warnings = [r.getMessage() for r in caplog.records if HOST_LABEL in r.getMessage()]
    assert len(warnings) == 1 and "n1" in warnings[0] and "n2" in warnings[0] and "n3" not in warnings[0]


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
