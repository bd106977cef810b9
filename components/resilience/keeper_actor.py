"""One snapshot keeper per node, as a detached, named Ray actor pinned to that node.

Why these Ray options:
- ``lifetime="detached"``: the keeper must outlive the training worker group (and the driver that
  started it); Ray Train restarts workers, not keepers.
- ``name``/``namespace`` per run (``lmforge-keeper-<run>-<node_id[:8]>`` in ``lmforge-<run>``):
  ``start_keepers`` is idempotent, so a restarted worker group finds the same keepers by name.
- ``NodeAffinitySchedulingStrategy(node_id, soft=False)``: a keeper holds its node's share of the
  snapshot; one that drifted to another node would turn one node loss into two.
- ``num_cpus=0``: keepers mostly sit on memory, they must not take a training slot.
- ``concurrency_groups`` (:data:`KEEPER_CONCURRENCY`, :data:`CALL_GROUPS`): a keeper's threads are
  split by kind of call. ``data`` calls move bulk bytes (a rank's hand-off, piece and blob transfers)
  and may take long; ``control`` calls (commit, status, inventory, new generation, node id) only
  read or switch state under the lock, so they get threads of their own and never queue behind
  transfers: with 8 ranks per node handing off at once, rank 0's commit is still answered at once.
  ``waits`` serves the calls that block by design (``wait_for_pieces``), so they cannot take the
  control threads either. Back-pressure holds no thread at all: a busy keeper answers "retry"
  (``keeper.py``, ``BusyError``) and the rank's hand-off backs off (``sink.py``). The keeper's own
  lock keeps state changes atomic across groups. Why data calls must never park in the keeper: a
  call that finds every thread of its group busy stops Ray's dispatch of *all* further calls to the
  actor, control calls included, until a thread of that group frees up; so the ``data`` group is
  sized above the node's concurrent transfers, and no data call waits on another one.
- ``runtime_env`` with :data:`~components.resilience.codec.MALLOC_REUSE_ENV`: keepers encode every
  snapshot; glibc must keep freed piece memory warm instead of unmapping it each time. And with
  :data:`~components.training.spares.NO_PRELOAD_ENV`: rank 0 starts keepers while planning a recovery,
  and with ``pretrain.spare_workers`` its setup hook (import torch, transformers) would pass to them.
  A keeper only moves bytes: its modules import no torch (``test_keeper_imports.py``).

A trainer hands its snapshot to its node's keeper as a descriptor of its shared buffer
(``handoff.py``), not as bytes. Pieces for other nodes reach their keeper as call arguments: numpy
views, which Ray copies once into the object store and hands to the keeper as read-only views of it;
``put`` copies a view into the keeper's own memory (``Piece.owned``), because a Ray object dies with
its owner. The trainer never ``ray.put``s snapshot bytes nor keeps an ObjectRef to them.
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
from collections.abc import Callable

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from components.common.config import LifecycleConfig
from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.resilience.codec import MALLOC_REUSE_ENV
from components.resilience.faults import NodeKiller
from components.resilience.keeper import MemoryKeeper, check_keeper_budget
from components.resilience.persist import PersistingKeeper
from components.resilience.spread import SnapshotSpreader
from components.training.spares import NO_PRELOAD_ENV

log = get_logger(__name__)

#: threads per concurrency group of a keeper actor: ``data`` serves the node's ranks' hand-offs and
#: reads during recovery (8 ranks per node plus readers), ``control`` the quick state calls,
#: ``waits`` the calls that block by design
KEEPER_CONCURRENCY = {"data": 32, "control": 4, "waits": 4}
#: the concurrency group of every public keeper call (a test checks that none is left out: an
#: unlisted call would run on the actor's single default thread)
CALL_GROUPS = {
    "data": ("store_snapshot", "store_snapshot_by_node", "put", "get", "put_blob", "get_blob"),
    "control": (
        "commit", "pieces", "held", "status", "newest_committed", "busy_with", "start_generation", "drop",
        "memory_used", "memory_need", "node_id", "persist", "list_blobs", "drop_blobs", "inject_corruption",
        "inject_blob_corruption", "kill_node", "release_buffers", "data_address", "imported",
    ),
    "waits": ("wait_for_pieces", "wait_persisted", "prepare"),
}  # fmt: skip
#: seconds to wait for a freshly placed keeper to answer
START_TIMEOUT_S = 120.0
#: attempts to replace a keeper that was killed just before start_keepers asked for it
NAME_RELEASE_TRIES = 5


def keeper_namespace(run_name: str) -> str:
    return f"lmforge-{run_name}"


def keeper_name(run_name: str, node_id: str) -> str:
    return f"lmforge-keeper-{run_name}-{node_id[:8]}"


def _in_concurrency_groups(cls: type) -> type:
    """``cls`` with every call of :data:`CALL_GROUPS` assigned to its Ray concurrency group.

    The calls are defined in plain-Python mixins (``keeper.py``, ``persist.py``, ...) that know
    nothing of Ray, so the assignment happens here, on thin overrides, instead of on their code.
    """
    for group, names in CALL_GROUPS.items():
        for name in names:
            setattr(cls, name, _grouped(getattr(cls, name), group))
    return cls


def _grouped(method: Callable, group: str) -> Callable:
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return method(self, *args, **kwargs)

    # Ray reads the group off inspect.unwrap(method): without __wrapped__ it stops at this override.
    del call.__wrapped__
    call.__signature__ = inspect.signature(method)  # what Ray checks the arguments of a call against
    return ray.method(concurrency_group=group)(call)


def keeper_actor_class():
    """NodeKeeper as a Ray actor class, with its concurrency groups (:data:`KEEPER_CONCURRENCY`)."""
    return ray.remote(concurrency_groups=dict(KEEPER_CONCURRENCY))(NodeKeeper)


@_in_concurrency_groups
class NodeKeeper(SnapshotSpreader, PersistingKeeper, NodeKiller, MemoryKeeper):
    """The keeper as it runs inside its actor: a memory keeper that knows its node, encodes and spreads
    its node's snapshots (``spread.py``), persists committed versions (``persist.py``) and can take its
    node down on an injected ``node_loss`` (``faults.py``)."""

    def node_id(self) -> str:
        return self._node_here()

    def imported(self, module: str) -> bool:
        """Whether this keeper's process has imported ``module``: keepers must stay free of torch, whose
        import costs every keeper start about a second of CPU and hundreds of MB (``test_keeper_imports.py``)."""
        return module in sys.modules

    # ------------------------------------------------------------------ named blobs (dcp_storage.py)
    # Besides snapshot pieces a keeper holds named, checksummed blobs: the bytes of
    # torch.distributed.checkpoint saves that target memory (``KeeperStorageWriter``). They share the
    # keeper's budget and lock with the pieces, since both are this node's host memory. (The imports
    # are local to keep this addition to the class itself while keeper.py is being edited.)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # whatever the keeper's constructor takes; blobs add no setting
        self._blobs: dict[str, tuple[bytes, str]] = {}  # key -> (data, checksum)

    def put_blob(self, key: str, data: bytes, checksum: str) -> None:
        """Store (or replace) blob ``key``; refused if damaged in transit or above the memory budget."""
        from components.common.errors import ConfigError, DataError
        from components.resilience.keeper import MIB
        from components.resilience.piece import checksum as checksum_of

        if checksum_of(data) != checksum:  # hashed outside the lock, as Keeper.put does
            raise DataError(f"keeper refused blob {key!r}: its bytes do not match its checksum")
        with self._lock:
            replaced = len(self._blobs[key][0]) if key in self._blobs else 0
            if self._used - replaced + len(data) > self.budget_bytes:
                raise ConfigError(
                    f"keeper memory budget exceeded storing blob {key!r} ({len(data) / MIB:.1f} MiB): "
                    f"{self._used / MIB:.1f} of resilience.keeper_memory_mb={self.budget_bytes // MIB} in use. "
                    f"Raise resilience.keeper_memory_mb, or drop checkpoints no longer needed"
                )
            self._blobs[key] = (data, checksum)
            self._used += len(data) - replaced

    def get_blob(self, key: str) -> tuple[bytes, str]:
        """``(data, checksum)`` of blob ``key`` as stored; the reader verifies it (after the transfer)."""
        from components.resilience.keeper import MissingPieceError

        with self._lock:
            if key not in self._blobs:
                raise MissingPieceError(f"blob {key!r} is not held by this keeper")
            return self._blobs[key]

    def list_blobs(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(key for key in self._blobs if key.startswith(prefix))

    def drop_blobs(self, prefix: str) -> int:
        """Forget every blob whose key starts with ``prefix``; returns how many were dropped."""
        with self._lock:
            keys = [key for key in self._blobs if key.startswith(prefix)]
            for key in keys:
                self._used -= len(self._blobs.pop(key)[0])
            return len(keys)

    def inject_blob_corruption(self, key: str) -> None:
        """Flip one byte of a stored blob, keeping its old checksum (fault injection, as for pieces)."""
        from components.resilience.keeper import MissingPieceError

        with self._lock:
            if key not in self._blobs:
                raise MissingPieceError(f"cannot corrupt blob {key!r}: not held by this keeper")
            data, stored_checksum = self._blobs[key]
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0xFF
            self._blobs[key] = (bytes(damaged), stored_checksum)


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
            except GetTimeoutError as e:
                raise RecoveryError(
                    f"run {run_name!r}: the snapshot keeper placed on node {node_id[:8]} did not answer node_id "
                    f"within {START_TIMEOUT_S:.0f} s of its start (is the node short of memory, or is its "
                    "raylet hung?)"
                ) from e
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
        keeper_actor_class()
        .options(
            name=keeper_name(run_name, node_id),
            namespace=keeper_namespace(run_name),
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=1,  # the default group: every keeper call has a group of its own (CALL_GROUPS)
            # With max_concurrency=1 Ray would start a caller's calls in submission order, across
            # groups: a commit would then queue behind the same caller's waiting puts after all.
            allow_out_of_order_execution=True,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            runtime_env={"env_vars": {**MALLOC_REUSE_ENV, **NO_PRELOAD_ENV}},
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
