"""In-memory fault tolerance as one training-loop callback: recover on start, snapshot every N steps.

Per worker group (a fresh start, or Ray Train's restart after a failure), in ``pre_train``:

1. every rank reports its node; rank 0 starts or finds the per-node keepers (``keeper_actor.py``),
   settles a half-done commit (``commit.py``) and writes the recovery plan: the newest committed
   version in memory, which keeper holds which piece (asked of every keeper, so the pieces are found
   where the placement they were written with put them), the persisted versions, a new generation
   number, and the placement of the *new* snapshots over the hosts left (``placement.py``). The plan
   is broadcast, so all ranks agree. Fewer hosts than ``k + m`` do not stop a restart: recovery uses
   what exists, and training goes on with a warning that new snapshots are less protected;
2. the ranks try the tiers of ``recovery.py`` in order (memory/decode → persistent → the Ray Train
   checkpoint the loop already loaded): each rank fetches and restores only its own group, then the
   owners broadcast what the other replicas need; a tier counts only if it worked on every rank;
3. rank 0 fences the keepers to the new generation, keeping only the version restored from memory.

Then every ``snapshot_every`` steps ``post_step`` begins an asynchronous snapshot (``snapshot.py``)
whose hand-off goes to the node's keeper and, on rank 0, through the commit (``sink.py``);
``pre_optimizer_step`` fences it. Every keeper notes the newest snapshot step it received a piece
of and when, so a recovery knows how many steps were lost and since when (to within one snapshot
interval: a per-step note would cost a Ray call every step). Rank 0 executes the ``node_loss``,
``keeper_crash``, ``commit_cut`` and ``corrupt_piece`` faults, which act on keepers and on the commit
(``faults.py``).

What a recovery did (tier, version, seconds, steps lost) is logged, sent to MLflow when a run id is
given, and kept in ``state_dict()["recoveries"]`` for the training summary. A restarted worker group
starts with fresh callbacks (and the checkpoint's copy of the list, which predates later recoveries),
so rank 0 also writes every record to the object store (``ResilienceTarget.recoveries_uri``) and
reads them all back on start: the summary and the MLflow tags list every recovery of the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from components.common.errors import ConfigError, RecoveryError
from components.common.log import get_logger
from components.common.storage import join, open_store
from components.resilience.codec import make_codec
from components.resilience.commit import UNREACHABLE, newest_common_committed
from components.resilience.faults import Fault, cut_commit, fire_once
from components.resilience.keeper_actor import keeper_name, keeper_namespace, start_keepers
from components.resilience.persist import persisted_versions
from components.resilience.piece import PieceId
from components.resilience.placement import Placement, cluster_nodes
from components.resilience.recovery import (
    CALL_TIMEOUT_S,
    Fetched,
    RecoveryRecord,
    broadcast_owned,
    check_group,
    group_from_keepers,
    group_from_store,
    inventory,
    restore_own,
)
from components.resilience.remote import wait_for
from components.resilience.sink import Coordinator, KeeperSink, PersistTarget
from components.resilience.snapshot import SnapshotEngine
from components.resilience.snapshot_callback import SnapshotCallback
from components.training.callbacks import TrainState
from components.training.parallel import is_sharded, min_over_ranks

log = get_logger(__name__)


@dataclass(frozen=True)
class ResilienceTarget:
    """Where one training run's resilience state lives; plain values, pickled to every worker."""

    run_name: str  # names the run's keeper actors (one per node)
    snapshots_uri: str  # persisted snapshots: <checkpoint_uri>/<stage>/snapshots
    markers_uri: str  # fired faults: <checkpoint_uri>/<stage>/faults
    store_options: dict = field(default_factory=dict)
    mlflow: tuple[str, str] | None = None  # (tracking URI, run id) to report recoveries to
    #: every recovery of the run, one JSON object each: <checkpoint_uri>/<stage>/recoveries ('' = not kept)
    recoveries_uri: str = ""


class ResilienceCallback(SnapshotCallback):
    """Recover the newest intact state on start; snapshot to the keepers every ``snapshot_every`` steps.

    A :class:`SnapshotCallback` (fence before the optimizer step, snapshot in ``post_step``, close the
    engine without hiding the loop's own error) whose engine hands each snapshot to the keepers.
    """

    def __init__(self, cfg: Any, target: ResilienceTarget, faults: tuple[Fault, ...] = ()) -> None:
        super().__init__(every=cfg.resilience.snapshot_every, max_in_flight=cfg.resilience.max_in_flight)
        self.cfg, self.target = cfg, target
        self.r = cfg.resilience
        self.faults = tuple(f for f in faults if f.kind in ("node_loss", "keeper_crash", "commit_cut", "corrupt_piece"))
        # enough curve points to bridge the gap back to the last persistent checkpoint
        self.curve_tail = cfg.pretrain.checkpoint_every + self.r.snapshot_every
        self.recoveries: list[dict] = []
        self.coordinator: Coordinator | None = None
        self._pending: RecoveryRecord | None = None
        self._failed_at_time: float | None = None
        self._cuts_settled: set[Fault] = set()  # commit_cut faults that fired already
        self._untried: list[Fault] = []  # post_step faults this worker group has not tried yet
        self._began = time.monotonic()  # this worker group began training: a fault's after_s counts from it

    # ------------------------------------------------------------------ loop events

    def pre_train(self, state: TrainState) -> None:
        import ray

        started = time.perf_counter()
        self._untried = [f for f in self.faults if f.kind != "commit_cut"]
        self.codec = make_codec(self.r.scheme, self.r.k, self.r.m)
        rank_nodes = _all_gather(ray.get_runtime_context().get_node_id(), state.world_size)
        plan = _broadcast(self._plan(state, rank_nodes) if state.rank == 0 else None, state.world_size)
        self.placement = Placement.from_dict(plan["placement"])
        namespace = keeper_namespace(self.target.run_name)
        self.keepers = {
            node: ray.get_actor(keeper_name(self.target.run_name, node), namespace=namespace)
            for node in self.placement.ring
        }
        record = self._recover(state, plan)
        record.restore_seconds = time.perf_counter() - started
        record.hosts, record.less_protected = self.placement.hosts, self.placement.short
        if state.rank == 0:
            keep = record.version if record.tier in ("memory", "decode") else None
            refs = {node: k.start_generation.remote(plan["generation"], keep) for node, k in self.keepers.items()}
            for node, ref in refs.items():
                _get(ref, node, f"start_generation({plan['generation']})")
        _barrier(state.world_size)
        self._began = time.monotonic()
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
            if any(f.kind == "commit_cut" for f in self.faults):
                self.coordinator.cut = self._cut_commit
            self.recoveries = self._recorded_recoveries()
        sink = KeeperSink(
            rank=state.rank,
            keepers=self.keepers,
            placement=self.placement,
            codec=(self.r.scheme, self.r.k, self.r.m),
            generation=plan["generation"],
            coordinator=self.coordinator,
        )
        # No whole-buffer checksum: the keeper checksums every piece it makes.
        self.engine = SnapshotEngine(
            self.r.max_in_flight, sink, curve_tail=self.curve_tail, whole_checksum=False, coalesce=self.r.coalesce
        )

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

        # A restart after losing nodes goes on with fewer hosts than k + m: the pieces already stored
        # are found wherever they are (inventory below), and only new snapshots use this placement.
        placement = Placement.build(rank_nodes, cluster_nodes(), self.r.k, self.r.m, allow_fewer=True)
        if placement.short:
            log.warning(
                "only %d host(s) hold snapshot pieces, fewer than resilience.k + resilience.m = %d: training goes on, "
                "but new snapshots are less protected (a host holds several pieces of a group, so losing one more "
                "host can cost the in-memory tiers; the persistent tier still holds every %d-th snapshot). Add "
                "nodes to restore full protection",
                placement.hosts, self.r.k + self.r.m, self.r.persist_every,
            )  # fmt: skip
        # No budget check here: the driver checked the real layout before the fit, and the coordinator
        # checks what the keepers measure after this group's first commit (sink.py). An estimate here
        # would refuse a restart on fewer hosts (more pieces per node) before recovering anything,
        # though memory and decode need no new snapshot at all. Keepers that run keep their budget;
        # one started on a replacement node gets the same resilience.keeper_memory_mb.
        keepers = start_keepers(self.target.run_name, self.cfg, expected_version_bytes=0)
        missing = [n[:8] for n in placement.ring if n not in keepers]
        if missing:
            raise RecoveryError(f"nodes {missing} of the placement ring have no snapshot keeper")
        keepers = {n: keepers[n] for n in placement.ring}
        refs = {node: k.status.remote() for node, k in keepers.items()}
        statuses = {}
        for node, ref in refs.items():
            try:
                statuses[node] = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except UNREACHABLE as e:  # lost since start_keepers: it holds nothing this recovery can use
                log.warning("keeper on node %s did not answer status() within %.0fs: %s", node[:8], CALL_TIMEOUT_S, e)
        held = any(s.committed is not None or s.writing is not None for s in statuses.values())
        version = newest_common_committed(keepers) if held else None
        progress = [(s.progress_step, s.progress_time) for s in statuses.values() if s.progress_step is not None]
        store = open_store(self.target.snapshots_uri, **self.target.store_options)
        return {
            "placement": placement.to_dict(),
            "generation": max((s.generation for s in statuses.values()), default=0) + 1,
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
        # FSDP: a group holds its rank's own shards, which no other rank needs: no broadcast
        own_only = is_sharded(state.module)
        for tier, version in attempts:
            error, own, fetched = "", None, None
            try:  # only this rank's own group: recovery traffic per rank does not grow with the world size
                fetched = self._fetch(tier, version, state.rank, plan, store)
                own = check_group(fetched.payload, state.rank, state)
            except Exception as e:  # any failure of a tier means: try the next one (and say why)
                error = f"{type(e).__name__}: {e}"
                log.warning("rank %d: restoring %s version %d failed: %s", state.rank, tier, version, error)
            if _all_ranks(not error, state.world_size):
                restore_own(own, state)
                if not own_only:  # DDP: the owners make every replica whole again
                    broadcast_owned(own, state)
                state.start_step = state.step
                if tier == "memory" and _any_rank(fetched.decoded, state.world_size):
                    tier = "decode"
                record = RecoveryRecord(tier, version, 0.0, fallbacks=fallbacks)
                record.pieces_fetched = _all_gather(fetched.pieces, state.world_size)
                record.bytes_fetched = _all_gather(fetched.nbytes, state.world_size)
                return record
            fallbacks.append(f"{tier}@{version}: {error or 'failed on another rank'}")
        tier = "checkpoint" if state.step > 0 else "none"
        return RecoveryRecord(tier, state.step if state.step > 0 else None, 0.0, fallbacks=fallbacks)

    def _fetch(self, tier: str, version: int, group: int, plan: dict, store: Any) -> Fetched:
        if tier == "memory":
            return group_from_keepers(self.keepers, plan["inventory"], version, group, self.codec)
        return group_from_store(store, self.target.snapshots_uri, version, group, self.codec)

    def _report_recovery(self, now: float) -> None:
        record, self._pending = self._pending, None
        if self._failed_at_time is not None:
            record.recovery_seconds = now - self._failed_at_time
        self.recoveries.append(record.to_dict())
        if self.target.recoveries_uri:  # read back by the next worker group (see the module docstring)
            store = open_store(self.target.recoveries_uri, **self.target.store_options)
            name = f"{time.time_ns():020d}.json"  # named by time: a listing is in order
            store.write_text(join(self.target.recoveries_uri, name), json.dumps(record.to_dict()))
        log.warning("recovery %d of this run: %s", len(self.recoveries), json.dumps(record.to_dict()))
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

    def _recorded_recoveries(self) -> list[dict]:
        """Rank 0: every recovery earlier worker groups of this run reported (oldest first), else the
        checkpoint's list (a target that keeps none)."""
        if not self.target.recoveries_uri:
            return self.recoveries
        store = open_store(self.target.recoveries_uri, **self.target.store_options)
        uris = [u for u in store.list(self.target.recoveries_uri) if u.endswith(".json")]
        return [json.loads(store.read_text(u)) for u in uris]

    # ------------------------------------------------------------------ faults acting on keepers

    def _inject(self, state: TrainState) -> None:
        trained = time.monotonic() - self._began
        due = [f for f in self._untried if f.due(state.step, trained)]
        # tried once per worker group: fire_once's marker look-up is not repeated every step after S
        self._untried = [f for f in self._untried if f not in due]
        for fault in (f for f in due if f.kind == "corrupt_piece"):
            if fire_once(self.target.markers_uri, fault, f"step {state.step}", self.target.store_options):
                self._corrupt_newest()
        losses = [f for f in due if f.kind == "node_loss"]
        doomed = []
        for fault in losses:
            rank = self._rank_of(fault, state)
            if fire_once(self.target.markers_uri, fault, f"step {state.step}", self.target.store_options):
                doomed.append(self.placement.groups[rank][0])  # the node that runs that rank
        for fault in (f for f in due if f.kind == "keeper_crash"):
            rank = self._rank_of(fault, state)
            if fire_once(self.target.markers_uri, fault, f"step {state.step}", self.target.store_options):
                self._crash_keeper(self.placement.groups[rank][0])
        # other nodes first: if rank 0's own node is doomed, this process dies with it
        own = self.placement.groups[0][0]
        for node in sorted(set(doomed), key=lambda n: n == own):
            log.warning("injecting node_loss after step %d: node %s", state.step, node[:8])
            self.keepers[node].kill_node.remote()

    @staticmethod
    def _rank_of(fault: Fault, state: TrainState) -> int:
        """The rank whose node ``node_loss``/``keeper_crash`` strike (``node=N``; default the highest)."""
        rank = state.world_size - 1 if fault.node is None else fault.node
        if not 0 <= rank < state.world_size:
            raise ConfigError(f"resilience.faults: {fault} names rank {rank}; ranks are 0..{state.world_size - 1}")
        return rank

    def _crash_keeper(self, node: str) -> None:
        """Kill the keeper actor of ``node`` alone (its node and training worker live on), once the
        newest snapshot is committed: recovery then decodes that version around the lost pieces."""
        import ray

        self.engine.wait()
        ray.kill(self.keepers[node], no_restart=True)
        log.warning("fault keeper_crash: killed the snapshot keeper of node %s", node[:8])

    def _cut_commit(self, version: int, expected: dict) -> None:
        """The coordinator's ``commit_cut`` hook: cut the commit of the first snapshot at or after each
        fault's step (and die); other versions commit normally."""
        trained = time.monotonic() - self._began
        cuts = [f for f in self.faults if f.kind == "commit_cut" and version >= f.step]
        for fault in (f for f in cuts if f.waited(trained)):
            if fault in self._cuts_settled:
                continue  # fired before this worker group started: no store look-up per snapshot
            if fire_once(self.target.markers_uri, fault, f"version {version}", self.target.store_options):
                cut_commit(self.keepers, version, expected)
            self._cuts_settled.add(fault)

    def _corrupt_newest(self) -> None:
        """Flip a byte of the first data piece of the newest committed version (after its commit)."""
        self.engine.wait()  # the hand-off, and with it rank 0's commit, has finished
        version = self.coordinator.last.version if self.coordinator.last else None
        if version is None or not self.coordinator.last.committed:
            log.warning("corrupt_piece: no committed snapshot yet, nothing to corrupt")
            return
        node = self.placement.groups[0][0]
        _get(self.keepers[node].inject_corruption.remote(PieceId(version, 0, 0)), node, "inject_corruption")
        log.warning("injected corrupt_piece: version %d, group 0, piece 0 on node %s", version, node[:8])


def _get(ref: Any, node: str, call: str) -> Any:
    """``ray.get`` with the recovery timeout (``remote.wait_for``, whose error names the node and the
    call); a keeper that died answers with a :class:`RecoveryError` that names them too."""
    try:
        return wait_for(ref, node=node, call=call, timeout_s=CALL_TIMEOUT_S)
    except UNREACHABLE as e:
        if isinstance(e, RecoveryError):
            raise
        raise RecoveryError(
            f"snapshot keeper on node {node[:8]}: {call} failed ({type(e).__name__}); the node may be lost"
        ) from e


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
    return flag if world_size == 1 else bool(min_over_ranks([int(flag)])[0])


def _any_rank(flag: bool, world_size: int) -> bool:
    return not _all_ranks(not flag, world_size)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
