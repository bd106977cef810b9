"""Benchmark: recovery time per tier and work lost, on 2 Ray Train workers of a 4-node Ray cluster.

One faulted run per tier (tiny preset, a snapshot every step, persisted every 5):

- memory: ``worker_crash``;
- decode: ``node_loss`` of rank 1's node, resumed on a replacement node;
- persistent: ``node_loss`` of both training nodes (more than m = 1 in a group).

Printed per tier: recovery time (the failed group's last progress report → first step after
resume, which includes Ray Train noticing the failure and starting new workers), restore time
(inside the new workers: plan, fetch, decode, load), and steps lost, next to what a persistent
checkpoint every 100 steps would lose for the same failure step.
"""

from __future__ import annotations

import pytest

from tests.unit.resilience.cluster import train_replacing_lost_nodes, train_spec, training_cluster

FAULT_STEP = 23
CHECKPOINT_EVERY = 100
TIERS = {
    "memory": f"worker_crash@step={FAULT_STEP}",
    "decode": f"node_loss@step={FAULT_STEP},node=1",
    "persistent": f"node_loss@step={FAULT_STEP},node=0;node_loss@step={FAULT_STEP},node=1",
}


@pytest.fixture(scope="module")
def cluster():
    with training_cluster() as started:
        yield started


@pytest.mark.parametrize("tier", list(TIERS))
def test_recovery_time_and_work_lost_per_tier(cluster, make_config, tiny_dataset, tmp_path, tier):
    from components.training.driver import run_training

    cfg = make_config(
        "pretrain.steps=30",
        "pretrain.batch_size=8",
        "pretrain.warmup_steps=2",
        "pretrain.checkpoint_every=1000",
        "pretrain.max_failures=3",
        "resilience.enabled=true",
        "resilience.snapshot_every=1",
        "resilience.persist_every=5",
        f"resilience.faults={TIERS[tier]}",
    )
    spec = train_spec(cfg, tiny_dataset, tmp_path)
    summary = train_replacing_lost_nodes(cluster, lambda: run_training(spec))
    (recovery,) = summary["callbacks"]["ResilienceCallback"]["recoveries"]
    assert recovery["tier"] == tier
    failed_at = recovery["failed_at_step"]
    print(
        f"\n[bench] recovery tier {tier}: {recovery['recovery_seconds']:.1f} s from the last progress report to "
        f"the first step after resume (restore inside the workers {recovery['restore_seconds']:.2f} s); "
        f"resumed at step {recovery['version']} after a failure at step {failed_at}: {recovery['steps_lost']} "
        f"step(s) lost vs {failed_at % CHECKPOINT_EVERY} with a persistent checkpoint every {CHECKPOINT_EVERY} steps "
        f"(on average {(CHECKPOINT_EVERY - 1) / 2:.1f} for a failure at a random step)"
    )
