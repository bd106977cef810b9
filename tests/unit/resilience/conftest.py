"""One real multi-node Ray cluster for the whole resilience package, and the session's clean runs.

``ray.cluster_utils.Cluster`` starts a raylet per "node" as separate processes on this machine: each
gets its own node id, so node affinity, detached actors and node removal behave as on a real cluster.
Starting one costs ~20 s on 2 cores, so it is started once for the package (``shared_cluster``:
``cluster.training_cluster``'s shape, a CPU-less head, two 1-CPU training nodes and a keeper-only node)
and torn down after its last module, so other packages can start their own Ray. Keeper, commit and
training-under-faults modules all use it: every module starts from that shape (``cluster``,
``ray_cluster``: tests that lose nodes leave replacements behind, possibly on a host already in use).

``clean_runs`` is session-wide: the uninterrupted run every faulted run is compared with depends only on
the settings that shape the loss curve, not on the cluster, so modules with the same settings train it
once (``cluster.clean_run_once``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.resilience.cluster import restore_shape, training_cluster


@pytest.fixture(scope="package")
def shared_cluster() -> Iterator:
    """The package's cluster: a CPU-less head, two 1-CPU training nodes, one keeper-only node (4 nodes)."""
    with training_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster(shared_cluster):
    """The shared cluster in its initial shape for this module (nodes lost earlier replaced)."""
    restore_shape(shared_cluster)
    return shared_cluster


@pytest.fixture(scope="module")
def ray_cluster(cluster):
    """The same cluster, for keeper and commit-protocol tests: four nodes, one keeper each."""
    return cluster


@pytest.fixture(scope="session")
def clean_runs() -> dict:
    """Summaries of uninterrupted training runs by the settings that shape their loss curve (see
    ``cluster.clean_run_once``), shared by every module of the session."""
    return {}
