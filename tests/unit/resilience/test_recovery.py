"""Pretraining survives worker crashes, node losses and corrupted pieces: real Ray Train on a real
multi-node Ray cluster (``ray.cluster_utils.Cluster`` on 127.0.0.1), faults injected from the config.

The cluster (``cluster.py``): a CPU-less head, two 1-CPU training nodes and a keeper-only node; a
lost node is replaced by adding one, as KubeRay restarts a pod. Each faulted run must end with
exactly the loss curve of the uninterrupted run (bitwise: two gloo ranks sum in a fixed order on CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.errors import ConfigError
from tests.unit.resilience.cluster import train_replacing_lost_nodes, train_spec, training_cluster

STEPS = 10


@pytest.fixture(scope="module")
def cluster():
    with training_cluster() as started:
        yield started


def _config(make_config, *overrides: str):
    return make_config(
        f"pretrain.steps={STEPS}",
        "pretrain.batch_size=4",
        "pretrain.warmup_steps=2",
        "pretrain.checkpoint_every=100",
        "pretrain.max_failures=3",
        "resilience.enabled=true",
        "resilience.snapshot_every=1",
        "resilience.persist_every=2",
        "resilience.keeper_memory_mb=64",
        *overrides,
    )


def _train(cfg, dataset: Path, out: Path) -> dict:
    from components.training.driver import run_training

    return run_training(train_spec(cfg, dataset, out))


def _train_replacing_lost_nodes(cluster, cfg, dataset: Path, out: Path) -> dict:
    return train_replacing_lost_nodes(cluster, lambda: _train(cfg, dataset, out))


def _recoveries(summary: dict) -> list[dict]:
    return summary["callbacks"]["ResilienceCallback"]["recoveries"]


@pytest.fixture(scope="module")
def clean_run(cluster, tiny_dataset, tmp_path_factory) -> dict:
    from components.common.config import load_config

    home = tmp_path_factory.mktemp("clean")
    cfg = _config(lambda *o: load_config("tiny", [f"run.home={home}", *o]))
    return _train(cfg, tiny_dataset, home)


def test_uninterrupted_run_commits_a_snapshot_every_step_and_recovers_nothing(clean_run):
    resilience = clean_run["callbacks"]["ResilienceCallback"]
    assert resilience["recoveries"] == []
    assert resilience["snapshots"]["snapshots"] == STEPS
    # the summary is written at the last step, while that step's snapshot may still be in flight
    assert resilience["commits"]["committed"] >= STEPS - 1 and resilience["commits"]["aborted"] == 0


def test_worker_crash_resumes_from_memory_with_the_same_loss_trajectory(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    cfg = _config(make_config, "resilience.faults=worker_crash@step=6")
    summary = _train(cfg, tiny_dataset, tmp_path)
    (recovery,) = _recoveries(summary)
    assert recovery["tier"] == "memory"
    # the crash strikes right after step 6: its snapshot, or its progress report, may not have landed
    assert recovery["version"] in (5, 6) and recovery["failed_at_step"] in (5, 6)
    assert recovery["steps_lost"] == recovery["failed_at_step"] - recovery["version"]
    assert summary["loss_curve"] == clean_run["loss_curve"]


def test_corrupted_piece_is_caught_by_its_checksum_and_decoded_around(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    cfg = _config(make_config, "resilience.faults=corrupt_piece@step=5;worker_crash@step=5")
    summary = _train(cfg, tiny_dataset, tmp_path)
    (recovery,) = _recoveries(summary)
    assert recovery["tier"] == "decode" and recovery["version"] == 5
    assert summary["loss_curve"] == clean_run["loss_curve"]


def test_node_loss_is_decoded_from_survivors_and_resumes_on_a_replacement_node(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    cfg = _config(make_config, "resilience.faults=node_loss@step=6,node=1")
    summary = _train_replacing_lost_nodes(cluster, cfg, tiny_dataset, tmp_path)
    (recovery,) = _recoveries(summary)
    assert recovery["tier"] == "decode"
    assert summary["replacement_nodes"] == 1  # the restarted group needed the new node's CPU
    assert summary["loss_curve"] == clean_run["loss_curve"]


def test_losing_more_nodes_than_parity_falls_back_to_the_persisted_snapshot(
    cluster, clean_run, make_config, tiny_dataset, tmp_path
):
    cfg = _config(make_config, "resilience.faults=node_loss@step=7,node=0;node_loss@step=7,node=1")
    summary = _train_replacing_lost_nodes(cluster, cfg, tiny_dataset, tmp_path)
    (recovery,) = _recoveries(summary)
    assert recovery["tier"] == "persistent"
    assert recovery["version"] == 6  # persisted every 2 snapshots: 2, 4, 6
    assert summary["loss_curve"] == clean_run["loss_curve"]


def test_more_parity_than_nodes_fails_before_training_naming_the_keys(cluster, make_config, tiny_dataset, tmp_path):
    cfg = _config(make_config, "resilience.scheme=rs", "resilience.k=4", "resilience.m=2")
    with pytest.raises(ConfigError, match=r"resilience.k \+ resilience.m = 4 \+ 2 = 6 needs at least 6 Ray nodes"):
        _train(cfg, tiny_dataset, tmp_path)


def test_keeper_budget_below_the_snapshot_fails_before_training(cluster, make_config, tiny_dataset, tmp_path):
    cfg = _config(make_config, "resilience.keeper_memory_mb=1")
    with pytest.raises(ConfigError, match="resilience.keeper_memory_mb=1 is too small"):
        _train(cfg, tiny_dataset, tmp_path)
