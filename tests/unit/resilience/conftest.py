"""A real multi-node Ray cluster on 127.0.0.1 for the keeper and commit-protocol tests.

``ray.cluster_utils.Cluster`` starts a raylet per "node" as separate processes on this machine: each
gets its own node id, so node affinity, detached actors and node removal behave as on a real cluster.
Module-scoped (a 4-node start costs ~20 s on 2 cores), torn down at the end of the module so other
modules can start their own Ray.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

CLUSTER_NODES = 4


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator:
    import ray
    from ray.cluster_utils import Cluster

    # A short root: Ray's socket paths must stay under the 107-byte AF_UNIX limit. RAY_TMPDIR also
    # moves Cluster's "current cluster" address file off the machine-wide /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="lmk", dir="/tmp")
    os.makedirs(os.path.join(temp_dir, "ray"))
    saved_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "temp_dir": temp_dir,
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(CLUSTER_NODES - 1):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved_tmpdir
        shutil.rmtree(temp_dir, ignore_errors=True)
