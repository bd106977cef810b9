"""A real multi-node Ray cluster on 127.0.0.1 for the keeper and commit-protocol tests.

``ray.cluster_utils.Cluster`` starts a raylet per "node" as separate processes on this machine: each
gets its own node id, so node affinity, detached actors and node removal behave as on a real cluster.
Module-scoped (a 4-node start costs ~20 s on 2 cores), torn down at the end of the module so other
modules can start their own Ray.

``clean_runs`` is session-wide: the uninterrupted run every faulted run is compared with depends only on
the settings that shape the loss curve, not on the cluster, so modules with the same settings train it
once (``cluster.clean_run_once``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.resilience.cluster import training_cluster

CLUSTER_NODES = 4


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator:
    """Four 1-CPU nodes (the head included), for keeper and commit-protocol tests."""
    with training_cluster(worker_cpus=(1,) * (CLUSTER_NODES - 1), head_cpus=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def clean_runs() -> dict:
    """Summaries of uninterrupted training runs by the settings that shape their loss curve (see
    ``cluster.clean_run_once``), shared by every module of the session."""
    return {}
