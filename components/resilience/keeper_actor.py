"""One snapshot keeper per node, as a detached, named Ray actor pinned to that node.

Why these Ray options:
- ``lifetime="detached"``: the keeper must outlive the training worker group (and the driver that
  started it); Ray Train restarts workers, not keepers.
- ``name``/``namespace`` per run (``lmforge-keeper-<run>-<node_id[:8]>`` in ``lmforge-<run>``):
  ``start_keepers`` is idempotent, so a restarted worker group finds the same keepers by name.
- ``NodeAffinitySchedulingStrategy(node_id, soft=False)``: a keeper holds its node's share of the
  snapshot; one that drifted to another node would turn one node loss into two.
- ``num_cpus=0``: keepers mostly sit on memory, they must not take a training slot.
- ``max_concurrency``: a recovering reader need not wait behind a writer's argument transfer; the
  keeper's own lock keeps state changes atomic.

Pieces reach a keeper as ordinary call arguments. Ray copies a ``bytes`` argument into the keeper's
own heap when it deserializes it, so the keeper owns its copy; the trainer never ``ray.put``s snapshot
bytes nor keeps an ObjectRef to them (Ray objects die with their owner, the crashed worker).
"""

from __future__ import annotations

import time

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from components.common.config import LifecycleConfig
from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.resilience.keeper import MemoryKeeper, check_keeper_budget

log = get_logger(__name__)

#: concurrent calls a keeper actor serves (puts from the node's ranks, reads during recovery)
KEEPER_CONCURRENCY = 4
#: seconds to wait for a freshly placed keeper to answer
START_TIMEOUT_S = 120.0
#: attempts to replace a keeper that was killed just before start_keepers asked for it
NAME_RELEASE_TRIES = 5


def keeper_namespace(run_name: str) -> str:
    return f"lmforge-{run_name}"


def keeper_name(run_name: str, node_id: str) -> str:
    return f"lmforge-keeper-{run_name}-{node_id[:8]}"


class NodeKeeper(MemoryKeeper):
    """The keeper as it runs inside its actor: a memory keeper that can tell which node it is on."""

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def start_keepers(run_name: str, cfg: LifecycleConfig, *, expected_version_bytes: int) -> dict[str, ActorHandle]:
    """Start (or find) one keeper per alive node; returns ``{node_id: keeper handle}``.

    ``expected_version_bytes`` is the most one keeper stores per snapshot version (its node's data
    pieces plus the parity it holds); the budget check runs here first, so a bad setting fails in
    the driver before any actor exists. Keepers already running keep the budget they started with.
    """
    check_keeper_budget(cfg.resilience.keeper_memory_mb, expected_version_bytes)
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    keepers = {node_id: _keeper_on(node_id, run_name, cfg, expected_version_bytes) for node_id in nodes}
    for attempt in range(NAME_RELEASE_TRIES):
        placed, dead = {}, []
        for node_id, keeper in keepers.items():
            try:
                placed[node_id] = ray.get(keeper.node_id.remote(), timeout=START_TIMEOUT_S)
            except RayActorError:
                dead.append(node_id)
        if not dead:
            break
        # A keeper killed moments ago holds its name until the GCS releases it: ask again. A node
        # that died meanwhile gets no keeper.
        time.sleep(0.5 * (attempt + 1))
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        for node_id in dead:
            keepers.pop(node_id)
            if node_id in alive:
                keepers[node_id] = _keeper_on(node_id, run_name, cfg, expected_version_bytes)
    else:
        raise RecoveryError(f"run {run_name!r}: keepers on nodes {[n[:8] for n in dead]} keep dying at start")
    misplaced = {want[:8]: got[:8] for want, got in placed.items() if want != got}
    if misplaced:
        raise RecoveryError(f"run {run_name!r}: keepers landed on other nodes than asked ({misplaced})")
    log.info("run %r: %d snapshot keepers ready, one per node", run_name, len(keepers))
    return keepers


def _keeper_on(node_id: str, run_name: str, cfg: LifecycleConfig, expected_version_bytes: int) -> ActorHandle:
    """The run's keeper on ``node_id``: the existing named actor, or a new one pinned there."""
    return (
        ray.remote(NodeKeeper)
        .options(
            name=keeper_name(run_name, node_id),
            namespace=keeper_namespace(run_name),
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=KEEPER_CONCURRENCY,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(cfg.resilience.keeper_memory_mb, expected_version_bytes)
    )


def stop_keepers(run_name: str) -> int:
    """Kill every keeper of ``run_name`` (freeing its snapshot memory); returns how many were killed."""
    namespace, prefix = keeper_namespace(run_name), keeper_name(run_name, "")
    stopped = 0
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] != namespace or not actor["name"].startswith(prefix):
            continue
        try:
            handle = ray.get_actor(actor["name"], namespace=namespace)
        except ValueError:
            continue  # it died between the listing and the lookup: already stopped
        ray.kill(handle, no_restart=True)
        stopped += 1
    log.info("run %r: stopped %d snapshot keepers", run_name, stopped)
    return stopped
