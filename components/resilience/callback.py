"""In-memory fault tolerance as one training-loop callback: recover on start, snapshot every N steps.

Per worker group (a fresh start, or Ray Train's restart after a failure), in ``pre_train``:

1. every rank reports its node; rank 0 places the EC groups (``placement.py``), starts or finds the
   per-node keepers (``keeper_actor.py``), settles a half-done commit (``commit.py``) and writes the
   recovery plan: the newest committed version in memory, which keeper holds which piece, the
   persisted versions, a new generation number. The plan is broadcast, so all ranks agree;
2. the ranks try the tiers of ``recovery.py`` in order (memory/decode → persistent → the Ray Train
   checkpoint the loop already loaded); a tier counts only if it worked on every rank;
3. rank 0 fences the keepers to the new generation, keeping only the version restored from memory.

Then every ``snapshot_every`` steps ``post_step`` begins an asynchronous snapshot (``snapshot.py``)
whose hand-off goes to the node's keeper and, on rank 0, through the commit (``sink.py``);
``pre_optimizer_step`` fences it. Every keeper notes the newest snapshot step it received a piece
of and when, so a recovery knows how many steps were lost and since when (to within one snapshot
interval: a per-step note would cost a Ray call every step). Rank 0 executes the ``node_loss`` and
``corrupt_piece`` faults, which act on keepers (``faults.py``).

What a recovery did (tier, version, seconds, steps lost) is logged, sent to MLflow when a run id is
given, and kept in ``state_dict()["recoveries"]`` for the training summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from components.common.errors import ConfigError, RecoveryError
from components.common.log import get_logger
from components.common.storage import open_store
from components.resilience.codec import make_codec
from components.resilience.commit import newest_common_committed
from components.resilience.faults import Fault, fire_once
from components.resilience.keeper_actor import keeper_name, keeper_namespace, start_keepers
from components.resilience.persist import persisted_versions
from components.resilience.piece import PieceId
from components.resilience.placement import Placement
from components.resilience.recovery import (
    RecoveryRecord,
    check_groups,
    group_from_keepers,
    group_from_store,
    inventory,
    restore_groups,
)
from components.resilience.sink import Coordinator, KeeperSink, PersistTarget
from components.resilience.snapshot import SnapshotEngine
from components.resilience.snapshot_callback import SnapshotCallback
from components.training.callbacks import TrainState
from components.training.parallel import is_sharded

log = get_logger(__name__)


@dataclass(frozen=True)
class ResilienceTarget:
    """Where one training run's resilience state lives; plain values, pickled to every worker."""

    run_name: str  # names the run's keeper actors (one per node)
    snapshots_uri: str  # persisted snapshots: <checkpoint_uri>/<stage>/snapshots
    markers_uri: str  # fired faults: <checkpoint_uri>/<stage>/faults
    store_options: dict = field(default_factory=dict)
    mlflow: tuple[str, str] | None = None  # (tracking URI, run id) to report recoveries to


class ResilienceCallback(SnapshotCallback):
    """Recover the newest intact state on start; snapshot to the keepers every ``snapshot_every`` steps.

    A :class:`SnapshotCallback` (fence before the optimizer step, snapshot in ``post_step``, close the
    engine without hiding the loop's own error) whose engine hands each snapshot to the keepers.
    """

    def __init__(self, cfg: Any, target: ResilienceTarget, faults: tuple[Fault, ...] = ()) -> None:
        super().__init__(every=cfg.resilience.snapshot_every, max_in_flight=cfg.resilience.max_in_flight)
        self.cfg, self.target = cfg, target
        self.r = cfg.resilience
        self.faults = tuple(f for f in faults if f.kind in ("node_loss", "corrupt_piece"))
        # enough curve points to bridge the gap back to the last persistent checkpoint
        self.curve_tail = cfg.pretrain.checkpoint_every + self.r.snapshot_every
        self.recoveries: list[dict] = []
        self.coordinator: Coordinator | None = None
        self._pending: RecoveryRecord | None = None
        self._failed_at_time: float | None = None

    # ------------------------------------------------------------------ loop events

    def pre_train(self, state: TrainState) -> None:
        import ray

        started = time.perf_counter()
        self.codec = make_codec(self.r.scheme, self.r.k, self.r.m)
        rank_nodes = _all_gather(ray.get_runtime_context().get_node_id(), state.world_size)
        plan = _broadcast(self._plan(state, rank_nodes) if state.rank == 0 else None, state.world_size)
        self.placement = Placement(tuple(plan["ring"]), tuple(tuple(g) for g in plan["groups"]))
        namespace = keeper_namespace(self.target.run_name)
        self.keepers = {
            node: ray.get_actor(keeper_name(self.target.run_name, node), namespace=namespace)
            for node in self.placement.ring
        }
        record = self._recover(state, plan)
        record.restore_seconds = time.perf_counter() - started
        if state.rank == 0:
            keep = record.version if record.tier in ("memory", "decode") else None
            ray.get([k.start_generation.remote(plan["generation"], keep) for k in self.keepers.values()])
        _barrier(state.world_size)
        if plan["failed_at"] is not None or record.tier not in ("none", "checkpoint") or state.step > 0:
            failed_step, self._failed_at_time = plan["failed_at"] or (None, None)
            record.failed_at_step = failed_step
            if failed_step is not None and record.version is not None:
                record.steps_lost = max(0, failed_step - record.version)
            self._pending = record
            log.warning(
                "rank %d recovered from tier %r at step %s in %.2fs (steps lost: %s; tiers that failed: %s)",
                state.rank, record.tier, record.version, record.restore_seconds, record.steps_lost,
                record.fallbacks or "none",
            )  # fmt: skip
        if state.rank == 0:
            persist = PersistTarget(
                self.target.snapshots_uri, self.r.snapshot_every * self.r.persist_every, self.target.store_options
            )
            self.coordinator = Coordinator(self.keepers, self.placement, persist)
        sink = KeeperSink(
            rank=state.rank,
            keepers=self.keepers,
            placement=self.placement,
            codec=(self.r.scheme, self.r.k, self.r.m),
            generation=plan["generation"],
            coordinator=self.coordinator,
        )
        # No whole-buffer checksum: the keeper checksums every piece it makes.
        self.engine = SnapshotEngine(self.r.max_in_flight, sink, curve_tail=self.curve_tail, whole_checksum=False)

    def post_step(self, state: TrainState) -> None:
        if state.rank == 0 and self._pending is not None:
            self._report_recovery(time.time())
        super().post_step(state)  # begins the snapshot of every `snapshot_every`-th step
        if state.rank == 0:
            self._inject(state)

    def state_dict(self) -> dict:
        out: dict[str, Any] = {"recoveries": self.recoveries}
        if self.engine is not None:
            out["snapshots"] = self.engine.stats.summary()
        if self.coordinator is not None:
            c = self.coordinator
            out["commits"] = {"committed": c.committed, "aborted": c.aborted, "persisted": c.persisted}
        return out

    def load_state_dict(self, state: dict) -> None:
        self.recoveries = list(state.get("recoveries", []))

    # ------------------------------------------------------------------ recovery

    def _plan(self, state: TrainState, rank_nodes: list[str]) -> dict:
        """Rank 0: place the groups, find the keepers, and decide what memory and the store offer."""
        import ray

        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        placement = Placement.build(rank_nodes, alive, self.r.k, self.r.m)
        state_bytes = sum(p.numel() * p.element_size() for p in state.module.parameters()) * 3  # + AdamW moments
        per_piece = -(-state_bytes // (state.world_size * self.r.k))
        keepers = start_keepers(
            self.target.run_name, self.cfg, expected_version_bytes=placement.pieces_per_node() * per_piece
        )
        missing = [n[:8] for n in placement.ring if n not in keepers]
        if missing:
            raise RecoveryError(f"nodes {missing} of the placement ring have no snapshot keeper")
        keepers = {n: keepers[n] for n in placement.ring}
        statuses = dict(zip(keepers, ray.get([k.status.remote() for k in keepers.values()]), strict=True))
        held = any(s.committed is not None or s.writing is not None for s in statuses.values())
        version = newest_common_committed(keepers) if held else None
        progress = [(s.progress_step, s.progress_time) for s in statuses.values() if s.progress_step is not None]
        store = open_store(self.target.snapshots_uri, **self.target.store_options)
        return {
            "ring": placement.ring,
            "groups": placement.groups,
            "generation": max(s.generation for s in statuses.values()) + 1,
            "version": version,
            "inventory": inventory(keepers, version) if version is not None else {},
            "persisted": [v for v in persisted_versions(store, self.target.snapshots_uri) if v > state.step],
            "failed_at": max(progress) if progress else None,
        }

    def _recover(self, state: TrainState, plan: dict) -> RecoveryRecord:
        attempts = []
        if plan["version"] is not None and plan["version"] > state.step:
            attempts.append(("memory", plan["version"]))
        attempts += [("persistent", v) for v in plan["persisted"]]
        fallbacks = []
        store = open_store(self.target.snapshots_uri, **self.target.store_options) if plan["persisted"] else None
        # FSDP: a group holds its rank's own shards, which no other rank needs: restore it alone, no broadcast
        own_only = is_sharded(state.module)
        groups = [state.rank] if own_only else list(range(state.world_size))
        for tier, version in attempts:
            error, framed, decoded = "", None, False
            try:
                fetched = [self._fetch(tier, version, group, plan, store) for group in groups]
                framed = check_groups([payload for payload, _ in fetched], state)
                decoded = any(d for _, d in fetched)
            except Exception as e:  # any failure of a tier means: try the next one (and say why)
                error = f"{type(e).__name__}: {e}"
                log.warning("rank %d: restoring %s version %d failed: %s", state.rank, tier, version, error)
            if _all_ranks(not error, state.world_size):
                restore_groups(framed, 0 if own_only else state.rank, state)
                state.start_step = state.step
                if tier == "memory" and _any_rank(decoded, state.world_size):
                    tier = "decode"
                return RecoveryRecord(tier, version, 0.0, fallbacks=fallbacks)
            fallbacks.append(f"{tier}@{version}: {error or 'failed on another rank'}")
        tier = "checkpoint" if state.step > 0 else "none"
        return RecoveryRecord(tier, state.step if state.step > 0 else None, 0.0, fallbacks=fallbacks)

    def _fetch(self, tier: str, version: int, group: int, plan: dict, store: Any) -> tuple[bytes, bool]:
        if tier == "memory":
            return group_from_keepers(self.keepers, plan["inventory"], version, group, self.codec)
        return group_from_store(store, self.target.snapshots_uri, version, group, self.codec)

    def _report_recovery(self, now: float) -> None:
        record, self._pending = self._pending, None
        if self._failed_at_time is not None:
            record.recovery_seconds = now - self._failed_at_time
        self.recoveries.append(record.to_dict())
        log.warning("recovery: %s", json.dumps(record.to_dict()))
        if self.target.mlflow:
            from mlflow.tracking import MlflowClient

            uri, run_id = self.target.mlflow
            client, n = MlflowClient(uri), len(self.recoveries)
            client.set_tag(run_id, f"lmforge.recovery.{n}", json.dumps(record.to_dict()))
            step = record.version or 0
            for key in ("restore_seconds", "recovery_seconds", "steps_lost"):
                value = getattr(record, key)
                if value is not None:
                    client.log_metric(run_id, f"recovery_{key}", float(value), step=step)

    # ------------------------------------------------------------------ faults acting on keepers

    def _inject(self, state: TrainState) -> None:
        due = [f for f in self.faults if f.step == state.step]
        for fault in (f for f in due if f.kind == "corrupt_piece"):
            if fire_once(self.target.markers_uri, fault, f"step {state.step}", self.target.store_options):
                self._corrupt_newest()
        losses = [f for f in due if f.kind == "node_loss"]
        doomed = []
        for fault in losses:
            rank = state.world_size - 1 if fault.node is None else fault.node
            if not 0 <= rank < state.world_size:
                raise ConfigError(f"resilience.faults: {fault} names rank {rank}; ranks are 0..{state.world_size - 1}")
            if fire_once(self.target.markers_uri, fault, f"step {state.step}", self.target.store_options):
                doomed.append(self.placement.groups[rank][0])  # the node that runs that rank
        # other nodes first: if rank 0's own node is doomed, this process dies with it
        own = self.placement.groups[0][0]
        for node in sorted(set(doomed), key=lambda n: n == own):
            log.warning("injecting node_loss after step %d: node %s", state.step, node[:8])
            self.keepers[node].kill_node.remote()

    def _corrupt_newest(self) -> None:
        """Flip a byte of the first data piece of the newest committed version (after its commit)."""
        import ray

        self.engine.wait()  # the hand-off, and with it rank 0's commit, has finished
        version = self.coordinator.last.version if self.coordinator.last else None
        if version is None or not self.coordinator.last.committed:
            log.warning("corrupt_piece: no committed snapshot yet, nothing to corrupt")
            return
        node = self.placement.groups[0][0]
        ray.get(self.keepers[node].inject_corruption.remote(PieceId(version, 0, 0)))
        log.warning("injected corrupt_piece: version %d, group 0, piece 0 on node %s", version, node[:8])


# ---------------------------------------------------------------------- collectives (no-ops alone)


def _broadcast(obj: Any, world_size: int) -> Any:
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj: Any, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out: list = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _all_ranks(flag: bool, world_size: int) -> bool:
    return _reduce(flag, world_size, dist.ReduceOp.MIN)


def _any_rank(flag: bool, world_size: int) -> bool:
    return _reduce(flag, world_size, dist.ReduceOp.MAX)


def _reduce(flag: bool, world_size: int, op: Any) -> bool:
    if world_size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=op)
    return bool(t.item())


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
