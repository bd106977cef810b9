"""Tiered recovery: bring a restarted worker group back to the newest state that can be proven intact.

Tiers, tried in order until one works on every rank (all ranks restore the same version)::

    memory      every data piece of every group is held intact by a keeper: concatenate
    decode      some pieces are lost (node loss) or damaged (checksum): decode from any k per group
    persistent  the newest snapshot the keepers uploaded to the object store (same pieces, same decode)
    checkpoint  the Ray Train checkpoint the loop already loaded (or a fresh start: "none")

A tier *fails* when any rank cannot get ``k`` intact pieces of some group, or a decoded payload
does not describe this model; the failure is logged and the next tier is tried, so a bad state is
never reloaded in a loop. With DDP every rank needs every group (each group is one rank's disjoint
share of the replicated state), so every rank fetches and restores all groups and then the meta
state (RNG streams, step, scheduler) of its own group. With FSDP a group is its rank's own shards,
needed by no other rank: each rank fetches and restores only its own group, with no broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle

from components.common.errors import RecoveryError
from components.common.log import get_logger
from components.common.storage import ObjectStore
from components.resilience.codec import ErasureCodec
from components.resilience.commit import UNREACHABLE
from components.resilience.keeper import MissingPieceError
from components.resilience.layout import SnapshotLayout
from components.resilience.payload import unframe
from components.resilience.persist import read_group
from components.resilience.piece import Piece, PieceId
from components.resilience.state import restore_meta, restore_tensors
from components.training.parallel import is_sharded

log = get_logger(__name__)

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inventory(keepers: Mapping[str, ActorHandle], version: int) -> Inventory:
    """Which keeper holds which intact piece of ``version`` (dead keepers hold nothing)."""
    refs = {node: keeper.pieces.remote(version) for node, keeper in keepers.items()}
    found: Inventory = {}
    for node, ref in refs.items():
        try:
            ids: list[PieceId] = ray.get(ref)
        except UNREACHABLE:
            continue
        for pid in ids:
            found.setdefault(pid.group, {}).setdefault(pid.index, node)
    return found


def group_from_keepers(
    keepers: Mapping[str, ActorHandle], held: Inventory, version: int, group: int, codec: ErasureCodec
) -> tuple[bytes, bool]:
    """``(payload, decoded)`` of one group from the keepers: data pieces first, parity only if needed."""
    where = held.get(group, {})
    pieces: list[Piece] = []
    for wanted in (range(codec.k), range(codec.k, codec.k + codec.m)):
        if len(pieces) >= codec.k:
            break
        refs = [keepers[where[i]].get.remote(PieceId(version, group, i)) for i in wanted if i in where]
        for ref in refs:
            try:
                pieces.append(ray.get(ref))
            except (MissingPieceError, *UNREACHABLE) as e:  # damaged since the inventory, or keeper gone
                log.warning("snapshot version %d, group %d: a piece is lost (%s)", version, group, e)
    return _decode(codec, pieces, version, group)


def group_from_store(
    store: ObjectStore, root: str, version: int, group: int, codec: ErasureCodec
) -> tuple[bytes, bool]:
    """``(payload, decoded)`` of one group from the persisted pieces of ``version``."""
    return _decode(codec, read_group(store, root, version, group), version, group)


def _decode(codec: ErasureCodec, pieces: list[Piece], version: int, group: int) -> tuple[bytes, bool]:
    if not pieces:
        raise RecoveryError(f"snapshot version {version}, group {group}: no piece survives")
    payload = codec.decode(pieces)  # verifies checksums, prefers data pieces
    intact_data = {p.id.index for p in pieces if p.id.index < codec.k and p.is_intact()}
    return payload, len(intact_data) < codec.k


def check_groups(payloads: list[bytes], state: Any) -> list[tuple[SnapshotLayout, memoryview]]:
    """Unframe every group's payload and check it fits this model and optimizer, changing nothing
    the snapshot would not overwrite (absent optimizer state is created, as zeros, on the way)."""
    framed = [unframe(p, where=f"snapshot group {g}") for g, p in enumerate(payloads)]
    sharded = is_sharded(state.module)
    for layout, _ in framed:
        layout.check_world(state.world_size, sharded)  # another world size or parallelism: next tier
        layout.live_tensors(state.module, state.optimizer, create_missing=True)  # raises on a mismatch
    return framed


def restore_groups(framed: list[tuple[SnapshotLayout, memoryview]], rank: int, state: Any) -> int:
    """Restore every group's tensors into ``state``, then ``rank``'s own meta; returns the step."""
    for layout, buffer in framed:
        restore_tensors(buffer, layout, state)
    layout, buffer = framed[rank]
    return restore_meta(buffer, layout, state)
