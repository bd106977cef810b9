"""``torch.distributed.checkpoint`` storage backed by the snapshot keepers: DCP saves to memory.

Design
------
``KeeperStorageWriter`` and ``KeeperStorageReader`` implement DCP's ``StorageWriter`` and
``StorageReader``, so ``dcp.save``, ``dcp.async_save`` and ``dcp.load`` (resharding included) work
unchanged, with the bytes held by the per-node keeper actors (``keeper_actor.py``) instead of files.
They mirror DCP's ``FileSystemWriter``/``FileSystemReader``:

- Each rank serializes its write items as ``_write_item`` does (``torch.save`` of a compact CPU copy of
  a tensor, raw bytes of a ``BytesIO`` item) into blobs of up to ``blob_bytes``, each put, with its
  checksum, into the keeper on the rank's own node while the next blob is being serialized.
- Keys are namespaced by checkpoint id: ``dcp/<id>/<save id>/__<rank>_<n>`` for data and
  ``dcp/<id>/.metadata-<ns>`` for DCP's ``Metadata``, which the coordinator writes in ``finish`` once
  every rank's data is stored. A save is therefore all-or-nothing: until its metadata lands, readers
  see the previous save of that id. After it lands the coordinator drops the previous save's blobs.
- Reading asks every keeper of the run which blobs it holds, so the reader needs all their handles
  and finds blobs on whichever node they are. Each blob's checksum is verified after the transfer; a
  mismatch raises ``RecoveryError`` naming the blob.

These blobs are replicated nowhere and not erasure coded: losing a node loses its ranks' part of a
DCP checkpoint. They are the fast tier for a user's own checkpoints; the EC snapshots of
``snapshot.py`` are what survives node loss.

Usage with Ray Train
--------------------
``ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))`` persists a *directory* to the
run's storage, which costs a disk (or object-store) write every time. With these classes a training
loop checkpoints to memory often and reports a persistent checkpoint rarely::

    keepers = start_keepers(run_name, cfg, expected_version_bytes=...)   # in the driver, once
    # in train_loop_per_worker (keepers passed in via train_loop_config):
    writer = KeeperStorageWriter(keepers)
    pending = None
    for step in range(steps):
        ...train...
        if step % 10 == 0:                                   # memory: every few steps, in the background
            if pending is not None:
                pending.result()
            model_sd, optim_sd = get_state_dict(model, optimizer)
            pending = dcp.async_save({"model": model_sd, "optim": optim_sd},
                                     checkpoint_id="latest", storage_writer=writer)
        if step % 500 == 0:                                  # persistent: rarely, through Ray Train
            dcp.save(state, checkpoint_id=local_dir)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(local_dir))
    # after a worker restart: dcp.load(state, storage_reader=KeeperStorageReader(keepers, "latest"))

Only the default thread-based ``async_save`` is supported (the process-based one runs the writer in
a process that is not connected to Ray), and only the collective (``use_collectives=True``) format.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import time
import uuid
from collections.abc import Mapping
from typing import Any

import ray
import torch
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from torch.distributed.checkpoint import Metadata, StorageReader, StorageWriter
from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from components.common.errors import ConfigError, RecoveryError
from components.common.log import get_logger
from components.resilience.keeper import MIB
from components.resilience.piece import checksum
from components.resilience.remote import CONTROL_TIMEOUT_S, DATA_TIMEOUT_S, wait_for, wait_for_all

log = get_logger(__name__)

#: largest blob a rank puts in one call: bounds the extra memory of serializing and the call size
DEFAULT_BLOB_BYTES = 64 * MIB
METADATA = ".metadata-"


@dataclasses.dataclass(frozen=True)
class _SaveSlot:
    """Where one rank's data of one save goes: set on each rank's plan by the coordinator."""

    save_id: str
    rank: int


@dataclasses.dataclass(frozen=True)
class BlobSlice:
    """Where one write item's bytes are: the ``storage_data`` of DCP's metadata for this storage."""

    key: str
    offset: int
    length: int


def checkpoint_prefix(checkpoint_id: str) -> str:
    return f"dcp/{checkpoint_id}/"


def _valid_id(checkpoint_id: str | os.PathLike) -> str:
    checkpoint_id = os.fspath(checkpoint_id)
    if not KeeperStorageWriter.validate_checkpoint_id(checkpoint_id):
        raise ConfigError(
            f"checkpoint id {checkpoint_id!r}: a keeper checkpoint id is a non-empty name without '/' "
            f"(it namespaces blob keys, and 'a' must not list 'a/b' as its own), e.g. 'latest' or 'step-100'"
        )
    return checkpoint_id


def _keys_by_keeper(keepers: Mapping[str, ActorHandle], prefix: str) -> dict[str, list[str]]:
    """``{node_id: keys under prefix}`` for every keeper that answers; a lost keeper lists nothing."""
    refs = {node_id: keeper.list_blobs.remote(prefix) for node_id, keeper in keepers.items()}
    found = {}
    for node_id, ref in refs.items():
        try:
            found[node_id] = wait_for(ref, node=node_id, call=f"list_blobs({prefix!r})", timeout_s=CONTROL_TIMEOUT_S)
        except RayActorError:
            log.warning("keeper on node %s is gone: its DCP blobs under %r are lost", node_id[:8], prefix)
    return found


def drop_checkpoint(keepers: Mapping[str, ActorHandle], checkpoint_id: str) -> int:
    """Free every blob of ``checkpoint_id`` on every live keeper; returns how many were dropped."""
    prefix = checkpoint_prefix(_valid_id(checkpoint_id))
    live = _keys_by_keeper(keepers, prefix)
    drops = {node_id: keepers[node_id].drop_blobs.remote(prefix) for node_id in live}
    return sum(wait_for_all(drops, call=f"drop_blobs({prefix!r})", timeout_s=CONTROL_TIMEOUT_S).values())


def _local_keeper(keepers: Mapping[str, ActorHandle]) -> ActorHandle:
    node_id = ray.get_runtime_context().get_node_id()
    if node_id not in keepers:
        raise RecoveryError(
            f"no snapshot keeper on this node ({node_id[:8]}; keepers on {[n[:8] for n in keepers]}): "
            f"call start_keepers again after nodes join, and pass its result to KeeperStorageWriter"
        )
    return keepers[node_id]


class KeeperStorageWriter(StorageWriter):
    """DCP ``StorageWriter``: each rank's items into its node's keeper, metadata by the coordinator."""

    def __init__(
        self,
        keepers: Mapping[str, ActorHandle],
        checkpoint_id: str | os.PathLike | None = None,
        *,
        blob_bytes: int = DEFAULT_BLOB_BYTES,
    ) -> None:
        super().__init__()
        self.keepers = dict(keepers)  # {node_id: keeper}, as start_keepers returns
        self.blob_bytes = blob_bytes
        self._checkpoint_id = _valid_id(checkpoint_id) if checkpoint_id else None
        self.save_id = uuid.uuid4().hex

    @property
    def checkpoint_id(self) -> str:
        if self._checkpoint_id is None:
            raise ConfigError("KeeperStorageWriter needs a checkpoint id: pass checkpoint_id= to it or to dcp.save")
        return self._checkpoint_id

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id:
            self._checkpoint_id = _valid_id(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("use_collectives", True):
            raise ConfigError("KeeperStorageWriter supports only dcp.save(..., use_collectives=True), the default")
        self._keeper = _local_keeper(self.keepers)
        self._keeper_node = ray.get_runtime_context().get_node_id()
        self.checkpoint_id  # noqa: B018 - fail before planning, not after serializing everything

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # The coordinator's save id names every rank's blobs, so one save's blobs share one prefix.
        return [
            dataclasses.replace(plan, storage_data=_SaveSlot(self.save_id, rank)) for rank, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        slot: _SaveSlot = plan.storage_data
        base = f"{checkpoint_prefix(self.checkpoint_id)}{slot.save_id}/__{slot.rank}_"
        results: list[WriteResult] = []
        puts: list[ray.ObjectRef] = []
        buffer = io.BytesIO()

        def put_buffer() -> None:
            data = buffer.getvalue()
            puts.append(self._keeper.put_blob.remote(f"{base}{len(puts)}", data, checksum(data)))
            buffer.seek(0)
            buffer.truncate()

        for item in plan.items:
            offset = buffer.tell()
            data = planner.resolve_data(item)  # resolved lazily, one item at a time, as DCP asks
            if item.type == WriteItemType.BYTE_IO:
                buffer.write(data.getbuffer())
            else:
                tensor = data.detach().cpu()
                if tensor.untyped_storage().size() != tensor.nbytes:
                    tensor = tensor.clone()  # torch.save writes whole storages: keep only this view
                torch.save(tensor, buffer)
            length = buffer.tell() - offset
            results.append(WriteResult(item.index, length, BlobSlice(f"{base}{len(puts)}", offset, length)))
            if buffer.tell() >= self.blob_bytes:
                put_buffer()
        if buffer.tell():
            put_buffer()
        wait_for_all(
            {f"{self._keeper_node}#{i}": ref for i, ref in enumerate(puts)},
            call=f"put_blob({base}*)",
            timeout_s=DATA_TIMEOUT_S,
        )
        done: Future[list[WriteResult]] = Future()
        done.set_result(results)
        return done

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.version = CURRENT_DCP_VERSION
        metadata.storage_data = {r.index: r.storage_data for rank_results in results for r in rank_results}
        metadata.storage_meta = self.storage_meta()
        # Pickle, as DCP's own FileSystemWriter stores Metadata: it is a torch-internal graph of
        # dataclasses with no other stable serialization; it is read back only by this run's code.
        data = pickle.dumps(metadata)
        prefix = checkpoint_prefix(self.checkpoint_id)
        # Nanoseconds in the key: should a crash leave an older metadata blob behind on another
        # node, readers take the newest.
        key = f"{prefix}{METADATA}{time.time_ns():020d}"
        wait_for(
            self._keeper.put_blob.remote(key, data, checksum(data)),
            node=self._keeper_node,
            call=f"put_blob({key!r})",
            timeout_s=DATA_TIMEOUT_S,
        )
        self._drop_older_saves(prefix, key)

    def _drop_older_saves(self, prefix: str, metadata_key: str) -> None:
        """Free earlier saves of this checkpoint id (and partial ones from crashed saves)."""
        current = f"{prefix}{self.save_id}/"
        drops = {}
        for node_id, keys in _keys_by_keeper(self.keepers, prefix).items():
            stale = {
                key if key.startswith(prefix + METADATA) else prefix + key[len(prefix) :].split("/")[0] + "/"
                for key in keys
                if key != metadata_key and not key.startswith(current)
            }
            drops.update({f"{node_id}#{p}": self.keepers[node_id].drop_blobs.remote(p) for p in stale})
        wait_for_all(drops, call="drop_blobs(older saves)", timeout_s=CONTROL_TIMEOUT_S)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        if not isinstance(checkpoint_id, str | os.PathLike):
            return False
        name = os.fspath(checkpoint_id)
        return name != "" and "/" not in name


class KeeperStorageReader(StorageReader):
    """DCP ``StorageReader``: finds each blob on whichever keeper of the run holds it and verifies it."""

    def __init__(self, keepers: Mapping[str, ActorHandle], checkpoint_id: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.keepers = dict(keepers)  # every node's keeper: a rank reads blobs written anywhere
        self._checkpoint_id = _valid_id(checkpoint_id) if checkpoint_id else None
        self.storage_data: dict[Any, BlobSlice] = {}
        self.load_id = uuid.uuid4().hex
        self._holder: dict[str, str] | None = None  # blob key -> node id of the keeper holding it

    @property
    def checkpoint_id(self) -> str:
        if self._checkpoint_id is None:
            raise ConfigError("KeeperStorageReader needs a checkpoint id: pass checkpoint_id= to it or to dcp.load")
        return self._checkpoint_id

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id:
            self._checkpoint_id = _valid_id(checkpoint_id)
        self.storage_data, self._holder, self.load_id = {}, None, uuid.uuid4().hex

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # DCP's fallback to per-rank metadata (use_collectives=False)
            raise RecoveryError("KeeperStorageWriter writes only the global metadata, never per-rank metadata")
        self._holder = None  # a new load: the blobs may have moved on since this reader's last one
        prefix = checkpoint_prefix(self.checkpoint_id)
        candidates = sorted(key for key in self._locate() if key.startswith(prefix + METADATA))
        if not candidates:
            raise RecoveryError(
                f"DCP checkpoint {self.checkpoint_id!r} is in none of the {len(self.keepers)} keepers: never "
                f"saved, its save has not finished, or the node holding its metadata was lost"
            )
        metadata: Metadata = pickle.loads(self._fetch(candidates[-1]))  # pickle: see finish()
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if metadata.storage_data is None:
            raise RecoveryError(f"DCP checkpoint {self.checkpoint_id!r}: its metadata names no stored items")
        self.storage_data = metadata.storage_data
        self._holder = None

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        by_blob: dict[str, list] = {}
        for item in plan.items:
            by_blob.setdefault(self.storage_data[item.storage_index].key, []).append(item)
        holders = self._locate()
        # every request out at once, so transfers overlap; each blob is freed once its items are read
        pending = {key: self._keeper_of(key, holders).get_blob.remote(key) for key in by_blob}
        for key, items in by_blob.items():
            blob = memoryview(self._verified(key, pending.pop(key), holders[key]))
            for item in items:
                where = self.storage_data[item.storage_index]
                stream = io.BytesIO(blob[where.offset : where.offset + where.length])
                if item.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(item, stream)
                    continue
                tensor = torch.load(stream, map_location="cpu", weights_only=True)
                for dim, (start, length) in enumerate(zip(item.storage_offsets, item.lengths, strict=True)):
                    tensor = tensor.narrow(dim, start, length)  # the part of the stored chunk this rank needs
                target = planner.resolve_tensor(item).detach()
                if target.size() != tensor.size():
                    raise RecoveryError(
                        f"blob {key!r}: item {item.storage_index} is {tensor.size()}, not {target.size()}"
                    )
                target.copy_(tensor)
                planner.commit_tensor(item, target)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return KeeperStorageWriter.validate_checkpoint_id(checkpoint_id)

    # ------------------------------------------------------------------ internals

    def _locate(self) -> dict[str, str]:
        if self._holder is None:
            found = _keys_by_keeper(self.keepers, checkpoint_prefix(self.checkpoint_id))
            self._holder = {key: node_id for node_id, keys in found.items() for key in keys}
        return self._holder

    def _keeper_of(self, key: str, holders: dict[str, str]) -> ActorHandle:
        if key not in holders:
            raise RecoveryError(
                f"blob {key!r} of DCP checkpoint {self.checkpoint_id!r} is on no live keeper (its node was lost?)"
            )
        return self.keepers[holders[key]]

    def _fetch(self, key: str) -> bytes:
        holders = self._locate()
        return self._verified(key, self._keeper_of(key, holders).get_blob.remote(key), holders[key])

    def _verified(self, key: str, ref: ray.ObjectRef, node_id: str) -> bytes:
        try:
            data, expected = wait_for(ref, node=node_id, call=f"get_blob({key!r})", timeout_s=DATA_TIMEOUT_S)
        except RayActorError as e:
            raise RecoveryError(f"blob {key!r}: the keeper holding it died while it was read") from e
        if checksum(data) != expected:
            raise RecoveryError(
                f"blob {key!r} of DCP checkpoint {self.checkpoint_id!r} failed its checksum: its keeper's copy "
                f"is damaged; load an older checkpoint (or a persistent one) instead"
            )
        return data
