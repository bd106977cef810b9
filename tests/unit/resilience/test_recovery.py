"""Pretraining survives worker crashes, node losses and corrupted pieces: real Ray Train on a real
multi-node Ray cluster (``ray.cluster_utils.Cluster`` on 127.0.0.1), faults injected from the config.

The cluster (``cluster.py``): a CPU-less head (role ``head``: no pieces), two 1-CPU training nodes and
a keeper-only node, each its own host; a lost node is replaced by adding one, as KubeRay restarts a
pod. Each faulted run must end with exactly the loss curve of the uninterrupted run (bitwise: two
gloo ranks sum in a fixed order on CPU); that run is shared with ``test_fault_variety.py`` (same length,
``clean_runs``), whose run of four faults also covers a plain worker crash resumed from memory (pieces
fetched per rank, steps lost, hosts). The cluster is the package's (``conftest.py``); a worker group
start costs ~15 s on 2 cores, so the decode, persistent and fewer-hosts recoveries share one run.

Group-local recovery without Ray first: each rank fetches its own group from persisted pieces (its
``k`` pieces whatever the world size), and the owners' broadcast over a gloo group makes every
replica bitwise the snapshotted state.
"""

from __future__ import annotations

import pytest
import torch

from components.common.errors import ConfigError, RecoveryError
from components.common.storage import open_store
from components.resilience.codec import make_codec
from components.resilience.persist import VersionShape, write_manifest, write_pieces
from components.resilience.recovery import check_group, group_from_store
from tests.unit.resilience.cluster import (
    FAULTED_STEPS,
    RESILIENT_TRAINING,
    clean_run_once,
    train_on_cluster,
    train_replacing_lost_nodes,
)
from tests.unit.resilience.replicas import full_state, persist_snapshot, restore_rank, small_state, train
from tests.unit.resilience.tiny_training import make_state, run_steps

STEPS = FAULTED_STEPS
VERSION = 3  # the snapshot step of the group-local tests


# ---------------------------------------------------------------------- group-local recovery (no Ray)


def _persist_snapshot(root: str, world_size: int, codec) -> None:
    """Every rank's share of the tiny Llama after ``VERSION`` steps, persisted as the keepers would."""
    state = make_state(seed=0)
    run_steps(state, VERSION)
    persist_snapshot(state, root, VERSION, world_size, codec)


@pytest.mark.parametrize("scheme,k,m", [("xor", 2, 1), ("rs", 3, 2)])
def test_each_rank_fetches_k_pieces_of_its_own_group_whatever_the_world_size(tmp_path, scheme, k, m):
    codec = make_codec(scheme, k, m)
    fetched_per_world = {}
    for world_size in (1, 2, 4, 8):
        root = f"file://{tmp_path}/w{world_size}"
        _persist_snapshot(root, world_size, codec)
        fetched, fresh = [], make_state(seed=1, world_size=world_size)
        for rank in range(world_size):
            got = group_from_store(open_store(root), root, VERSION, rank, codec)
            fresh.rank = rank
            check_group(got.payload, rank, fresh)  # it is that rank's share of this model
            fetched.append((got.pieces, got.nbytes))
        fetched_per_world[world_size] = fetched
        assert {pieces for pieces, _ in fetched} == {k}, (world_size, fetched)
    # and the bytes a rank moves shrink with the world size (its share of the state), never grow
    largest = {w: max(nbytes for _, nbytes in f) for w, f in fetched_per_world.items()}
    assert largest[1] > largest[2] > largest[4] > largest[8], largest


def test_a_group_snapshotted_at_another_world_size_is_refused_naming_the_key(tmp_path):
    codec = make_codec("xor", 2, 1)
    root = f"file://{tmp_path}/w2"
    _persist_snapshot(root, 2, codec)
    got = group_from_store(open_store(root), root, VERSION, 0, codec)
    with pytest.raises(RecoveryError, match="pretrain.num_workers"):
        check_group(got.payload, 0, make_state(seed=1, world_size=4, rank=0))


def test_owners_broadcast_makes_every_replica_bitwise_the_snapshotted_state(tmp_path):
    world_size = 3  # three owners, one of them with an uneven share
    root = f"file://{tmp_path}/snapshots"
    reference = small_state(seed=0)
    train(reference, VERSION)
    persist_snapshot(reference, root, VERSION, world_size, make_codec("xor", 2, 1))
    torch.save(full_state(reference), tmp_path / "expected.pt")
    torch.multiprocessing.spawn(
        restore_rank,
        args=(world_size, root, VERSION, str(tmp_path / "pg-init"), str(tmp_path / "expected.pt")),
        nprocs=world_size,
    )


# ---------------------------------------------------------------------- pretraining under faults (Ray)


def _config(make_config, *overrides: str):
    return make_config(
        *RESILIENT_TRAINING,
        f"pretrain.steps={STEPS}",
        "pretrain.checkpoint_every=100",
        "pretrain.max_failures=3",
        "resilience.persist_every=2",
        *overrides,
    )


def _recoveries(summary: dict) -> list[dict]:
    return summary["callbacks"]["ResilienceCallback"]["recoveries"]


@pytest.fixture(scope="module")
def clean_run(cluster, clean_runs, tiny_dataset, tmp_path_factory) -> dict:
    from components.common.config import load_config

    home = tmp_path_factory.mktemp("clean")
    cfg = _config(lambda *o: load_config("tiny", [f"run.home={home}", *o]))
    return clean_run_once(clean_runs, cfg, tiny_dataset, home)


def test_uninterrupted_run_commits_a_snapshot_every_step_and_recovers_nothing(clean_run):
    resilience = clean_run["callbacks"]["ResilienceCallback"]
    assert resilience["recoveries"] == []
    assert resilience["snapshots"]["snapshots"] == STEPS
    # the summary is written at the last step, while that step's snapshot may still be in flight
    assert resilience["commits"]["committed"] >= STEPS - 1 and resilience["commits"]["aborted"] == 0


def test_cluster_nodes_carry_host_labels_and_the_head_holds_no_pieces(cluster):
    import ray

    from components.resilience.placement import cluster_nodes

    hosts = cluster_nodes()
    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("lmforge.io/role") == "head")
    assert head not in hosts and len(hosts) >= 3
    assert all(host.startswith("host-") for host in hosts.values())


def test_more_parity_than_nodes_fails_before_training_naming_the_keys(cluster, make_config, tiny_dataset, tmp_path):
    cfg = _config(make_config, "resilience.scheme=rs", "resilience.k=4", "resilience.m=2")
    with pytest.raises(ConfigError, match=r"resilience.k \+ resilience.m = 4 \+ 2 = 6 needs at least 6 Ray nodes"):
        train_on_cluster(cfg, tiny_dataset, tmp_path)


def test_a_retried_step_with_snapshots_left_starts_on_fewer_hosts_than_k_plus_m(cluster, make_config, tmp_path):
    from components.common.storage import join
    from components.resilience.driver import release_keepers, resilience_callbacks
    from components.resilience.faults import local_marker_uri

    cfg = _config(make_config, "resilience.scheme=rs", "resilience.k=4", "resilience.m=2")
    checkpoint_uri = (tmp_path / "ckpt").as_uri()
    with pytest.raises(ConfigError, match="needs at least 6 Ray nodes"):  # a fresh start: a config error
        resilience_callbacks(cfg, checkpoint_uri=checkpoint_uri, stage="pretrain", vocab_size=512)
    # an earlier attempt of the step persisted a snapshot before it lost its nodes
    root = join(local_marker_uri(checkpoint_uri), "pretrain", "snapshots")
    pieces = make_codec("rs", 4, 2).encode(4, 0, b"state" * 100)
    write_pieces(open_store(root), root, pieces)
    write_manifest(open_store(root), root, 4, pieces, VersionShape(1, 6, 4), "k1")  # what makes it count
    try:
        callback, *_ = resilience_callbacks(cfg, checkpoint_uri=checkpoint_uri, stage="pretrain", vocab_size=512)
        assert callback.target.snapshots_uri == root
    finally:
        release_keepers(cfg, checkpoint_uri=checkpoint_uri, stage="pretrain")


def test_a_restarted_group_plans_its_recovery_without_an_up_front_budget_estimate(cluster, make_config, tmp_path):
    """A restart is checked on the measured layout after its first commit (``Coordinator.check_memory``),
    not refused by an estimate before recovering: on fewer hosts each keeper holds more pieces, yet
    memory and decode need no new snapshot. A budget no snapshot of this model fits: the plan is made."""
    from components.resilience.callback import ResilienceCallback, ResilienceTarget
    from components.resilience.keeper_actor import stop_keepers
    from components.resilience.placement import cluster_nodes

    cfg = _config(make_config, "resilience.keeper_memory_mb=1")
    target = ResilienceTarget("plan-budget", (tmp_path / "snapshots").as_uri(), (tmp_path / "faults").as_uri())
    state = make_state()  # 0.6 MiB of parameters, 1.9 MiB with AdamW: two versions of a piece exceed 1 MiB
    try:
        plan = ResilienceCallback(cfg, target)._plan(state, [next(iter(cluster_nodes()))])
    finally:
        stop_keepers("plan-budget")
    assert plan["version"] is None and plan["generation"] == 1  # nothing held: a fresh group on fresh keepers


def test_keeper_budget_below_the_snapshot_fails_before_training(cluster, make_config, tiny_dataset, tmp_path):
    cfg = _config(make_config, "resilience.keeper_memory_mb=1")
    with pytest.raises(ConfigError, match="resilience.keeper_memory_mb=1 is too small"):
        train_on_cluster(cfg, tiny_dataset, tmp_path)


def test_corrupted_piece_then_more_node_losses_than_parity_then_a_node_on_a_host_in_use_each_recovered(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    """One run, three recoveries, each asserted (one run instead of three: a worker group start costs
    ~15 s on 2 cores). A worker crash at step 2 finds a piece of snapshot 2 corrupted (its checksum
    catches it) and decodes around it; losing both training nodes at step 5, more than parity, falls
    back to the persisted snapshot; a node lost at step 8 is replaced on the keeper-only node's machine,
    so the group decodes and trains on two hosts, less protected.

    Last in the module on purpose: it leaves the shared cluster with two hosts, where a fresh start
    (the tests above) would rightly be refused (the next module's ``cluster`` restores the shape)."""
    import ray

    faults = "corrupt_piece@step=2;worker_crash@step=2;node_loss@step=5,node=0;node_loss@step=5,node=1"
    cfg = _config(make_config, f"resilience.faults={faults};node_loss@step=8,node=1", "pretrain.max_failures=4")
    keeper_only = next(
        n
        for n in ray.nodes()
        if n["Alive"] and n["Resources"].get("CPU", 0) == 0 and "lmforge.io/role" not in n["Labels"]
    )
    # the two nodes lost together come back on new hosts; the third replacement pod lands on the
    # keeper-only node's machine: two hosts left for k + m = 3 pieces
    summary = train_replacing_lost_nodes(
        cluster,
        lambda: train_on_cluster(cfg, tiny_dataset, tmp_path),
        hosts=(None, None, keeper_only["Labels"]["lmforge.io/host"]),
    )
    corrupted, persisted, lost = _recoveries(summary)
    assert corrupted["tier"] == "decode" and corrupted["version"] == 2
    assert corrupted["pieces_fetched"] == [2, 2]  # rank 0: piece 1 and the parity for its damaged piece 0
    assert corrupted["hosts"] == 3 and not corrupted["less_protected"]
    assert persisted["tier"] == "persistent" and persisted["version"] == 4  # persisted every 2 snapshots: 2, 4
    assert lost["tier"] == "decode"
    assert lost["hosts"] == 2 and lost["less_protected"]
    assert summary["replacement_nodes"] == 3  # each restarted group needed the new nodes' CPUs
    resilience = summary["callbacks"]["ResilienceCallback"]
    assert resilience["commits"]["committed"] >= STEPS - 9  # snapshots go on after the recovery at step 8
    assert summary["loss_curve"] == clean_run["loss_curve"]
