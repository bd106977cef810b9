"""The scale model's arithmetic (components/resilience/scale_model.py): pure Python, no cluster."""

from __future__ import annotations

import dataclasses

import pytest

from components.resilience.scale_model import ClusterFigures, HostFigures, Scheme, markdown_table, project

HOST = HostFigures(
    memcpy_gbps=10.0,
    encode_gbps={"xor": 5.0, "rs": 2.0},
    decode_gbps={"xor": 4.0, "rs": 1.5},
    ray_call_seconds=0.001,
    link_call_seconds=0.0001,
    bytes_per_param=12.0,
)
CLUSTER = ClusterFigures()
XOR = Scheme("xor", 4, 1)


def test_recovery_time_does_not_grow_with_world_size():
    times = [project("70B", 70e9, gpus, HOST, CLUSTER, XOR).recovery_s for gpus in (1024, 2048, 4096, 8192, 16384)]
    assert all(later <= earlier for earlier, later in zip(times, times[1:], strict=False))


def test_recovery_time_is_the_same_at_any_world_size_for_the_same_bytes_per_rank():
    small = project("m", 12e9, 1024, HOST, CLUSTER, XOR)
    large = project("m", 16 * 12e9, 16 * 1024, HOST, CLUSTER, XOR)
    assert small.bytes_per_rank == large.bytes_per_rank
    assert small.recovery_s == pytest.approx(large.recovery_s)


def test_snapshot_time_beyond_the_fixed_calls_scales_with_bytes_per_rank():
    one = project("m", 7e9, 1024, HOST, CLUSTER, XOR)
    two = project("m", 14e9, 1024, HOST, CLUSTER, XOR)
    assert two.bytes_per_rank == pytest.approx(2 * one.bytes_per_rank)
    assert two.snapshot_s - two.fixed_s == pytest.approx(2 * (one.snapshot_s - one.fixed_s))
    assert two.fixed_s == one.fixed_s


def test_spread_carries_all_pieces_but_the_one_kept_at_home_through_the_node_nic():
    p = project("m", 70e9, 1024, HOST, CLUSTER, Scheme("rs", 4, 2))
    sent_per_node = CLUSTER.gpus_per_node * p.bytes_per_rank * (4 + 2 - 1) / 4
    assert p.spread_s == pytest.approx(sent_per_node / CLUSTER.nic_bytes_per_second)


def test_keeper_memory_per_node_holds_the_buffers_and_two_coded_versions():
    p = project("m", 70e9, 1024, HOST, CLUSTER, XOR)
    expected = CLUSTER.gpus_per_node * p.bytes_per_rank * (1 + 2 * 5 / 4)
    assert p.keeper_gb_per_node * 1e9 == pytest.approx(expected)
    assert p.keeper_share_of_host == pytest.approx(expected / (CLUSTER.host_memory_gb * 1e9))


def test_remote_checkpoint_does_not_shrink_with_world_size():
    expected = 175e9 * 12 / (CLUSTER.storage_gbps * 1e9)
    for gpus in (1024, 16384):
        assert project("m", 175e9, gpus, HOST, CLUSTER, XOR).remote_save_s == pytest.approx(expected)


def test_faster_nic_shortens_spread_and_recovery():
    slow = project("m", 405e9, 1024, HOST, CLUSTER, XOR)
    fast = project("m", 405e9, 1024, HOST, dataclasses.replace(CLUSTER, nic_gbit=800), XOR)
    assert fast.spread_s == pytest.approx(slow.spread_s / 2)
    assert fast.recovery_s < slow.recovery_s


def test_rejects_a_world_too_small_for_one_group_per_node():
    with pytest.raises(ValueError, match="needs at least 5 nodes"):
        project("m", 7e9, 32, HOST, CLUSTER, XOR)


def test_rejects_xor_with_more_than_one_parity_piece():
    with pytest.raises(ValueError, match="use rs for m >= 2"):
        Scheme("xor", 4, 2)


def test_markdown_table_has_one_row_per_projection():
    rows = [project("7B", 7e9, g, HOST, CLUSTER, XOR) for g in (1024, 2048)]
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| 7B | 1,024 |")


def test_fully_sharded_state_needs_no_broadcast_after_restore():
    assert project("m", 70e9, 1024, HOST, CLUSTER, XOR).broadcast_s == 0


def test_replicated_state_adds_the_owners_broadcast_bounded_by_one_shard():
    fsdp = project("m", 70e9, 4096, HOST, CLUSTER, XOR)
    hsdp = project("m", 70e9, 4096, HOST, CLUSTER, XOR, shard_group=512)
    shard = 70e9 * HOST.bytes_per_param / 512
    assert 0 < hsdp.broadcast_s < CLUSTER.gpus_per_node * shard / (CLUSTER.fabric_gbit / 8 * 1e9)
    assert hsdp.recovery_s == pytest.approx(fsdp.recovery_s + hsdp.broadcast_s)
