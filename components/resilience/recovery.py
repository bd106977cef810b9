"""Tiered recovery: bring a restarted worker group back to the newest state that can be proven intact.

Tiers, tried in order until one works on every rank (all ranks restore the same version)::

    memory      every data piece of the rank's group is held intact by a keeper: concatenate
    decode      some pieces are lost (node loss) or damaged (checksum): decode from any k
    persistent  the newest snapshot the keepers uploaded to the object store (k pieces per group)
    checkpoint  the Ray Train checkpoint the loop already loaded (or a fresh start: "none")

Recovery is group-local, so its traffic per rank does not grow with the world size: each rank
fetches only its *own* group (its disjoint share of the state, ``ownership.py``): the ``k`` data
pieces when they are intact, a parity piece only for each one that is missing or damaged. It
restores what it owns and its own meta state (RNG streams, step, scheduler); then, with DDP, the
owners broadcast their restored tensors to the other replicas over the process group
(:func:`broadcast_owned`: one broadcast per owner, of its whole tensor region). A sharded engine
(FSDP2), where every rank holds only what it owns, skips that step.

A tier *fails* when any rank cannot get ``k`` intact pieces of its group, or the decoded payload
does not describe this rank's share of this model; the failure is logged and the next tier is
tried, so a bad state is never reloaded in a loop. Every remote call has a timeout
(:data:`CALL_TIMEOUT_S`); a keeper that does not answer in time counts as lost, and the error says
which node and which call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import torch
import torch.distributed as dist
from ray.actor import ActorHandle

from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.common.storage import ObjectStore
from components.resilience.codec import ErasureCodec
from components.resilience.commit import UNREACHABLE
from components.resilience.keeper import MissingPieceError
from components.resilience.layout import SnapshotLayout
from components.resilience.ownership import snapshot_names
from components.resilience.payload import unframe
from components.resilience.persist import read_group
from components.resilience.piece import Piece, PieceId
from components.resilience.state import as_byte_tensor, restore_meta, restore_tensors
from components.training.parallel import is_sharded

log = get_logger(__name__)

#: seconds any one remote call of a recovery may take before its keeper counts as lost
CALL_TIMEOUT_S = 60.0

#: group -> piece index -> node id of a keeper holding it intact
Inventory = dict[int, dict[int, str]]


@dataclass
class RecoveryRecord:
    """What one restart of the worker group did; logged, reported to MLflow and the run summary."""

    tier: str
    version: int | None  # the step restored (None: fresh start)
    restore_seconds: float  # inside the new workers: plan, fetch, decode, restore
    failed_at_step: int | None = None  # newest step the failed group reported finishing
    steps_lost: int | None = None  # failed_at_step - version
    recovery_seconds: float | None = None  # failed group's last report -> first step after resume
    fallbacks: list[str] = field(default_factory=list)  # tiers tried and failed, "tier@version: why"
    pieces_fetched: list[int] = field(default_factory=list)  # per rank, by the tier that worked
    bytes_fetched: list[int] = field(default_factory=list)  # per rank: piece bytes moved to it
    hosts: int | None = None  # hosts the new snapshots are placed on
    less_protected: bool = False  # fewer hosts than k + m: a host holds two pieces of a group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fetched:
    """One group's payload, and what getting it cost."""

    payload: bytes
    decoded: bool  # parity was needed (a data piece was lost or damaged)
    pieces: int  # pieces transferred to this rank
    nbytes: int  # their bytes


def inventory(keepers: Mapping[str, ActorHandle], version: int, timeout_s: float = CALL_TIMEOUT_S) -> Inventory:
    """Which keeper holds which intact piece of ``version`` (dead or silent keepers hold nothing)."""
    refs = {node: keeper.pieces.remote(version) for node, keeper in keepers.items()}
    found: Inventory = {}
    for node, ref in refs.items():
        try:
            ids: list[PieceId] = ray.get(ref, timeout=timeout_s)
        except UNREACHABLE as e:
            log.warning("inventory of version %d: keeper on node %s did not answer pieces() (%s)", version, node[:8], e)
            continue
        for pid in ids:
            found.setdefault(pid.group, {}).setdefault(pid.index, node)
    return found


def group_from_keepers(
    keepers: Mapping[str, ActorHandle],
    held: Inventory,
    version: int,
    group: int,
    codec: ErasureCodec,
    timeout_s: float = CALL_TIMEOUT_S,
) -> Fetched:
    """One group from the keepers: its ``k`` data pieces, and a parity piece per data piece lost.

    Pieces are asked for in rounds of exactly as many as are still missing, data pieces first, so an
    intact group moves ``k`` pieces and a group that lost one moves ``k`` plus the piece that failed.
    """
    where = held.get(group, {})
    candidates = [i for i in range(codec.k + codec.m) if i in where]  # data first, then parity
    pieces: list[Piece] = []
    lost: list[str] = []
    while len(pieces) < codec.k and candidates:
        wanted, candidates = candidates[: codec.k - len(pieces)], candidates[codec.k - len(pieces) :]
        refs = [(i, keepers[where[i]].get.remote(PieceId(version, group, i))) for i in wanted]
        for index, ref in refs:
            try:
                pieces.append(ray.get(ref, timeout=timeout_s))
            except (MissingPieceError, *UNREACHABLE) as e:  # damaged since the inventory, keeper gone or silent
                lost.append(f"piece {index} on node {where[index][:8]}: get() failed: {type(e).__name__}")
                log.warning("snapshot version %d, group %d: piece %d is lost (%s)", version, group, index, e)
    return _decode(codec, pieces, version, group, lost)


def group_from_store(store: ObjectStore, root: str, version: int, group: int, codec: ErasureCodec) -> Fetched:
    """One group from the persisted pieces of ``version``: ``k`` intact ones, data first."""
    return _decode(codec, read_group(store, root, version, group, k=codec.k), version, group, [])


def _decode(codec: ErasureCodec, pieces: list[Piece], version: int, group: int, lost: list[str]) -> Fetched:
    if len(pieces) < codec.k:
        why = f" ({'; '.join(lost)})" if lost else ""
        raise RecoveryError(
            f"snapshot version {version}, group {group}: {len(pieces)} piece(s) survive, {codec!r} needs k={codec.k}{why}"
        )
    payload = codec.decode(pieces)  # verifies checksums, prefers data pieces
    intact_data = {p.id.index for p in pieces if p.id.index < codec.k and p.is_intact()}
    return Fetched(payload, len(intact_data) < codec.k, len(pieces), sum(len(p.data) for p in pieces))


def check_group(payload: bytes, rank: int, state: Any) -> tuple[SnapshotLayout, memoryview]:
    """Unframe ``rank``'s own group and check it is this rank's share of this model and optimizer,
    changing nothing the snapshot would not overwrite (absent optimizer state is created, as zeros)."""
    layout, buffer = unframe(payload, where=f"snapshot group {rank}")
    layout.check_world(state.world_size, is_sharded(state.module))  # another world size or parallelism: next tier
    expected = snapshot_names(state.module, rank, state.world_size)  # DDP: its share; FSDP: its shard of each
    names = list(dict.fromkeys(e.name for e in layout.entries))
    if names != expected:
        raise RecoveryError(
            f"snapshot group {rank} holds parameters {names[:3]}... but rank {rank} of {state.world_size} snapshots "
            f"{expected[:3]}...: the snapshot was taken at another world size (pretrain.num_workers) or of another model"
        )
    layout.live_tensors(state.module, state.optimizer, create_missing=True)  # raises on a mismatch
    return layout, buffer


def restore_own(own: tuple[SnapshotLayout, memoryview], state: Any) -> int:
    """Restore this rank's own tensors and meta (RNG streams, step, scheduler); returns the step."""
    layout, buffer = own
    restore_tensors(buffer, layout, state)
    return restore_meta(buffer, layout, state)


def broadcast_owned(own: tuple[SnapshotLayout, memoryview], state: Any) -> int:
    """DDP: make every replica whole again after each rank restored only what it owns.

    Each owner broadcasts the tensor region of its snapshot buffer (bitwise what it just restored,
    parameters and optimizer state back to back) in one collective, so there are ``world_size``
    broadcasts whatever the number of tensors; the layouts travel first in one all-gather. Returns
    the bytes this rank received. A sharded engine (FSDP2) does not call this.
    """
    if state.world_size == 1:
        return 0
    layout, buffer = own
    layouts: list = [None] * state.world_size
    dist.all_gather_object(layouts, layout.to_dict())
    device = _collective_device()
    received = 0
    for owner, described in enumerate(layouts):
        mine = owner == state.rank
        owner_layout = layout if mine else SnapshotLayout.from_dict(described)
        size = owner_layout.meta_offset  # the tensors end where the meta region begins
        if mine:
            region = as_byte_tensor(buffer)[:size].to(device)
        else:
            region = torch.empty(size, dtype=torch.uint8, device=device)
        dist.broadcast(region, src=owner)
        if mine:
            continue
        received += size
        tensors = owner_layout.live_tensors(state.module, state.optimizer, create_missing=True)
        with torch.no_grad():
            for tensor, view in zip(tensors, owner_layout.byte_views(region), strict=True):
                tensor.copy_(view)
    return received


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
