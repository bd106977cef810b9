"""A real multi-node Ray cluster for training under faults (tests and benchmarks share it).

``training_cluster`` starts, on 127.0.0.1, by default a head with no CPUs (training never lands there, so
losing a training node never kills the GCS), two 1-CPU nodes for the two training workers and
one keeper-only node. Every node is its own host (Ray node label ``lmforge.io/host``: ``host-0``,
``host-1``, ...); a CPU-less head is labelled ``lmforge.io/role=head``, as the RayJob labels its head,
so it holds no snapshot pieces: three nodes hold pieces. ``train_replacing_lost_nodes`` plays KubeRay's
part after a ``node_loss``: every node that dies is replaced by a fresh 1-CPU node, on a new host
unless told which.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from components.training.rayjob import HOST_LABEL, ROLE_LABEL


@contextlib.contextmanager
def training_cluster(
    worker_cpus: tuple[int, ...] = (1, 1, 0), head_cpus: int = 0, object_store_mb: int | None = None
) -> Iterator[Any]:
    """Head with ``head_cpus`` plus one node per entry of ``worker_cpus``, connected; torn down on exit.

    ``object_store_mb`` per node: ``Cluster`` gives each node 150 MiB by default, enough for tests; a
    benchmark moving pieces of tens of MB would spill them to disk, which no real node's store does.
    """
    store = {} if object_store_mb is None else {"object_store_memory": object_store_mb << 20}
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="lmr", dir="/tmp")  # short: AF_UNIX socket paths are limited
    os.makedirs(os.path.join(temp_dir, "ray"))
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "node_ip_address": "127.0.0.1",
            "temp_dir": temp_dir,
            "include_dashboard": False,
            **store,
            # a head without CPUs is a control node only, as on KubeRay: it holds no snapshot pieces
            "labels": {HOST_LABEL: "host-head", **({ROLE_LABEL: "head"} if head_cpus == 0 else {})},
            # a killed node is declared dead after a few seconds instead of ~30
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    try:
        for i, cpus in enumerate(worker_cpus):
            cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", labels={HOST_LABEL: f"host-{i}"}, **store)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        with contextlib.suppress(Exception):  # nodes killed by node_loss are already gone
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)


def restore_shape(cluster: Any) -> None:
    """Bring a cluster started by :func:`training_cluster` (default shape) back to that shape.

    Tests that lose nodes leave their replacements behind, maybe on a host already in use (fewer
    failure domains, where a fresh start is rightly refused). Dead nodes are dropped from the cluster's
    books, a 1-CPU node on a host another node already has is removed, and fresh 1-CPU nodes on new
    hosts are added until two train; the head and the keeper-only node are never touched.
    """
    handles = {node.node_id: node for node in cluster.worker_nodes}
    alive = forget_dead_nodes(cluster)
    hosts: dict[str, int] = {}
    for n in sorted(alive.values(), key=lambda n: n["Resources"].get("CPU", 0)):  # CPU-less nodes keep their host
        host = n["Labels"].get(HOST_LABEL, n["NodeID"])
        hosts[host] = hosts.get(host, 0) + 1
        if hosts[host] > 1 and n["NodeID"] in handles:
            cluster.remove_node(handles[n["NodeID"]])
            del alive[n["NodeID"]]
    training = sum(1 for n in alive.values() if n["Resources"].get("CPU", 0) >= 1)
    for _ in range(2 - training):
        _RESTORED[0] += 1
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", labels={HOST_LABEL: f"host-restored-{_RESTORED[0]}"})


def forget_dead_nodes(cluster: Any) -> dict[str, dict]:
    """Drop the nodes a ``node_loss`` killed from the books of ``cluster`` (``Cluster.wait_for_nodes`` waits for
    every node it has books for, dead ones included); returns the alive nodes' ``ray.nodes()`` records by id."""
    import ray

    alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    for node in list(cluster.worker_nodes):
        if node.node_id not in alive:
            with contextlib.suppress(Exception):  # its raylet was killed: only the bookkeeping is left
                cluster.remove_node(node, allow_graceful=False)
    return alive


#: how many nodes :func:`restore_shape` added in this process (their host labels stay unique)
_RESTORED = [0]


def train_replacing_lost_nodes(
    cluster: Any, train: Callable[[], dict], host: str | None = None, hosts: tuple[str | None, ...] = ()
) -> dict:
    """Run ``train()`` while every node that dies is replaced by a fresh 1-CPU node, on a new host, or
    on ``host`` (a pod rescheduled onto a machine that already runs one: fewer failure domains);
    ``hosts`` names the host of each replacement in turn (None: a new one), ``host`` those beyond it.

    Training runs on a thread and the watcher on the main thread, because ``Cluster.add_node``
    installs signal handlers, which Python allows only there. Returns the summary plus
    ``replacement_nodes`` (how many joined) and ``replacements``: for each, ``time.time()`` when the lost
    node was seen dead and when its replacement had joined (a benchmark splits a recovery by them).
    """
    import time

    import ray

    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = train()
        except BaseException as e:  # re-raised on the main thread below
            result["error"] = e

    seen = {n["NodeID"] for n in ray.nodes() if not n["Alive"]}  # lost before this run
    joined, replacements = 0, []
    trainer = threading.Thread(target=run, daemon=True)
    trainer.start()
    while trainer.is_alive():
        dead = {n["NodeID"] for n in ray.nodes() if not n["Alive"]} - seen
        dead_at = time.time()  # of every node this look found dead: they are replaced one after the other
        for node in dead:
            seen.add(node)
            joined += 1
            on = hosts[joined - 1] if joined <= len(hosts) else host
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", labels={HOST_LABEL: on or f"host-new-{joined}"})
            replacements.append((dead_at, time.time()))
        trainer.join(timeout=0.2)
    if "error" in result:
        raise result["error"]
    return {**result["summary"], "replacement_nodes": joined, "replacements": replacements}


#: the settings every faulted training test shares; each module adds its steps, restarts and intervals
RESILIENT_TRAINING = (
    "pretrain.batch_size=4",
    "pretrain.warmup_steps=2",
    "resilience.enabled=true",
    "resilience.snapshot_every=1",
    "resilience.keeper_memory_mb=64",
)


#: steps of the faulted DDP runs of test_recovery and test_fault_variety: one length, so one clean run serves both
FAULTED_STEPS = 12


def clean_run_once(cache: dict, cfg: Any, dataset: Any, out: Any) -> dict:
    """The uninterrupted run of ``cfg``, trained at most once per session (``cache``: the ``clean_runs`` fixture).

    Keyed by the settings that change the loss curve (the config's versioned fields, the world size and
    the parallelism); snapshot, checkpoint, persist and fault settings do not, so modules that differ only
    in those share it. The summary of the first run is returned, with ``home`` its output directory.
    """
    import json

    from components.common.config import versioned_dict

    p = cfg.pretrain
    key = json.dumps([versioned_dict(cfg), p.num_workers, p.parallelism], sort_keys=True, default=str)
    if key not in cache:
        cache[key] = train_on_cluster(cfg, dataset, out) | {"home": str(out)}
    return cache[key]


def train_on_cluster(cfg: Any, dataset: Any, out: Any) -> dict:
    """Run the training engine on ``dataset`` as ``pretrain`` would (:func:`train_spec`); its summary."""
    from components.training.driver import run_training

    return run_training(train_spec(cfg, dataset, out))


def train_spec(cfg: Any, dataset: Any, out: Any) -> Any:
    """The TrainSpec ``pretrain`` would build for ``cfg`` on ``dataset`` (local dirs), writing under ``out``."""
    from pathlib import Path

    from components import resilience
    from components.training.spec import TrainSpec

    p, out = cfg.pretrain, Path(out)
    return TrainSpec(
        cfg=cfg,
        stage="pretrain",
        dataset_uri=Path(dataset).as_uri(),
        output_uri=(out / "out").as_uri(),
        checkpoint_uri=(out / "ckpt").as_uri(),
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        warmup_steps=p.warmup_steps,
        min_lr_ratio=p.min_lr_ratio,
        plugins=(resilience.PLUGIN,),
    )
