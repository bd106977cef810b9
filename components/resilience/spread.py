"""Keeper-side encoding: a rank hands its payload to the keeper on its own node, which encodes it and
spreads the pieces over the group's keepers.

Why the keeper encodes, not the trainer: the erasure code then runs in a process that is not on the
training critical path (on a GPU node, on CPUs that sit idle), and every node's keeper encodes only
its own node's ranks, so parity work is spread across the cluster instead of gathered on one
coordinator. The trainer's hand-off thread makes one same-node call, naming its shared buffer
(``handoff.py``): the keeper encodes from the trainer's pages, so the pieces it keeps are the only
copy of the rank's share on the node besides the buffer. The call returns once the pieces are
stored. A put that finds another version still being written is refused with ``BusyError``
(back-pressure, ``keeper.py``); the whole hand-off then raises it, and the rank retries after a
backoff (``sink.py``) instead of holding keeper threads while it waits. Retries cost no bytes twice:
the home keeper refuses before encoding if it is busy itself, and keeps the pieces another holder
refused, so the retry sends only those (without this, a rank one snapshot ahead of rank 0's
commit re-encoded and re-sent its whole share at every retry: measured, one retry per snapshot
on mini-sized payloads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray
from ray.actor import ActorHandle

from components.common.log import get_logger
from components.resilience.codec import ErasureCodec, make_codec
from components.resilience.dataplane import HolderUnknownError, KeeperLinks, KeeperServer
from components.resilience.handoff_reader import SharedBuffer, SharedBufferReader
from components.resilience.keeper import BusyError
from components.resilience.keeper_client import AddressBook
from components.resilience.piece import Piece, PieceId
from components.resilience.remote import DATA_TIMEOUT_S, wait_for

log = get_logger(__name__)


class SnapshotSpreader:
    """Keeper mixin: ``store_snapshot`` encodes one rank's payload and stores each piece on its holder."""

    def store_snapshot(
        self,
        version: int,
        group: int,
        payload: SharedBuffer | np.ndarray | bytes,
        holders: Sequence[tuple[str, ActorHandle]],
        codec: tuple[str, int, int],
        generation: int,
        wait_s: float,
    ) -> int:
        """Encode ``payload`` as (``version``, ``group``) and put piece ``i`` on ``holders[i]`` (node id, keeper).

        ``payload`` is the framed snapshot: a trainer's shared buffer on this node (read in place), or
        its bytes (a zero-copy view of Ray's object store when sent as a numpy array). Returns the
        number of pieces this call stored; raises whatever a holder's ``put`` raised (``BusyError``: retry
        later) and ``KeeperTimeoutError`` naming a holder that did not answer within
        :data:`~components.resilience.remote.DATA_TIMEOUT_S`. ``wait_s`` is passed to the puts
        (``sink.py`` passes 0: back-pressure is waited out by the rank, not here).
        """
        # Remember the holders' handles: a later hand-off over the data plane names holders by node
        # id only (``store_snapshot_by_node``), and the Ray fallback and address lookups need handles.
        # Per generation: a restarted worker group may come with a replaced keeper (a new actor on
        # the same node), and the first hand-off of each generation brings its handles through Ray.
        handles = self.__dict__.setdefault("_handles", {})
        for old in [g for g in handles if g != generation]:
            del handles[old]
        handles.setdefault(generation, {}).update(dict(holders))
        key = (version, group, generation)
        stash = self.__dict__.setdefault("_refused", {})
        for other in [k for k in stash if k != key]:  # a hand-off that gave up, or an older generation's
            del stash[other]
        here = self._node_here()
        if key in stash:  # a retry: only the pieces refused last time, already encoded
            return self._put_pieces(version, group, stash.pop(key), here, generation, wait_s)
        busy = self.busy_with(version, generation)
        if busy is not None:  # refused before encoding anything: a retry then costs one call
            raise BusyError(f"keeper refused version {version} of group {group}: version {busy} is still being written")
        # What this hand-off holds beyond the stored pieces (for the memory check after the first
        # snapshot, budget.py): a payload sent as bytes sits in the object store; a shared buffer
        # is the trainer's own memory.
        in_transit = 0
        if isinstance(payload, SharedBuffer):
            payload = self._shared_buffers().view(payload, generation)
        else:
            in_transit = len(payload)
        # Data pieces bound for other nodes stay views of the payload: they are copied once, into the
        # object store, by `.remote()` itself (before it returns, so the trainer may reuse its buffer
        # once this call ends). The one kept here is copied inside the encoding pass (in cache,
        # hashed on the copy), so storing it costs neither a second copy nor a second hash.
        kept = {i for i, (node, _) in enumerate(holders) if node == here}
        pieces = self._codec(*codec).encode(version, group, payload, copy=kept)
        del payload
        # the pieces bound for other nodes are copied once, into the object store
        in_transit += sum(len(p.data) for p, (node, _) in zip(pieces, holders, strict=True) if node != here)
        self._note_transient(version, in_transit)
        return self._put_pieces(version, group, list(zip(pieces, holders, strict=True)), here, generation, wait_s)

    def _put_pieces(
        self,
        version: int,
        group: int,
        todo: list[tuple[Piece, tuple[str, ActorHandle]]],
        here: str,
        generation: int,
        wait_s: float,
    ) -> int:
        """Put each piece on its holder; returns how many were stored. Pieces a holder refused as busy
        are kept (as copies of their own) for the rank's retry, which then sends only them: a retry
        neither encodes again nor sends a piece twice. Other errors propagate.

        Pieces for other nodes go over the direct data plane (``dataplane.py``); a piece whose
        connection fails (its keeper died or restarted) goes as a Ray call instead, so a lost keeper
        raises ``RayActorError`` as it always did. Every outcome is collected before any is raised:
        a call left unread would log its error as unhandled (the ``BusyError`` noise of old).
        """
        refused, failures = [], []
        for piece, holder in todo:
            if holder[0] == here:  # stored without a round trip
                try:
                    self.put(piece, generation=generation, wait_s=wait_s, made_here=True)
                except BusyError:
                    refused.append((piece, holder))
        remote = [(piece, holder) for piece, holder in todo if holder[0] != here]
        direct, via_ray = self._send_direct(remote, generation, wait_s)
        outcomes = list(direct)
        if via_ray:
            calls = [(p, h, h[1].put.remote(p, generation=generation, wait_s=wait_s)) for p, h in via_ray]
            ray.wait([ref for _, _, ref in calls], num_returns=len(calls), timeout=DATA_TIMEOUT_S + wait_s)
            for piece, holder, ref in calls:
                try:
                    wait_for(ref, node=holder[0], call=f"put(version {version}, group {group})", timeout_s=0)
                    outcomes.append((piece, holder, None))
                except Exception as e:  # collected: raised below, once every call is read
                    outcomes.append((piece, holder, e))
        for piece, holder, error in outcomes:
            if isinstance(error, BusyError):
                refused.append((piece, holder))
            elif error is not None:
                failures.append(error)
        if failures:
            raise failures[0]
        if refused:
            self.__dict__["_refused"][(version, group, generation)] = [(p.owned(), h) for p, h in refused]
            raise BusyError(
                f"version {version} of group {group}: {len(refused)} of its pieces were refused by busy holders "
                f"({', '.join(h[0][:8] for _, h in refused)}); they are kept for the retry"
            )
        return len(todo)

    def store_snapshot_by_node(
        self,
        version: int,
        group: int,
        payload: SharedBuffer,
        holder_nodes: Sequence[str],
        codec: Sequence,
        generation: int,
        wait_s: float,
    ) -> int:
        """:meth:`store_snapshot` as a data-plane call: holders named by node id, resolved to the handles
        an earlier Ray hand-off of the same ``generation`` brought; ``HolderUnknownError`` (the caller
        repeats the call through Ray) if one has not been seen yet."""
        handles = self.__dict__.get("_handles", {}).get(generation, {})
        unknown = [node[:8] for node in holder_nodes if node not in handles]
        if unknown:
            raise HolderUnknownError(f"no actor handle yet for the keepers on nodes {unknown}")
        holders = [(node, handles[node]) for node in holder_nodes]
        return self.store_snapshot(version, group, payload, holders, tuple(codec), generation, wait_s)

    def data_address(self) -> tuple[str, int, bytes]:
        """``(host, port, token)`` of this keeper's server (``dataplane.py``), started on first use."""
        with self._lock:
            server = self.__dict__.get("_server")
            if server is None:
                server = self.__dict__["_server"] = KeeperServer(
                    self.put, ray.util.get_node_ip_address(), calls=self._link_calls()
                )
        return server.address

    def _link_calls(self) -> dict:
        """The calls the server answers (``dataplane.LINK_CALLS``), by the names callers use."""
        return {
            "store_snapshot_by_node": self.store_snapshot_by_node,
            "prepare": self.prepare,
            "commit": self.commit,
            "drop": self.drop,
            "pieces": self.pieces,
            "busy_with": self.busy_with,
        }

    def _send_direct(
        self, todo: list[tuple[Piece, tuple[str, ActorHandle]]], generation: int, wait_s: float
    ) -> tuple[list[tuple[Piece, tuple[str, ActorHandle], Exception | None]], list[tuple[Piece, tuple]]]:
        """Send ``todo`` over the data plane: ``(outcomes, pieces to send as Ray calls instead)``."""
        if not todo:
            return [], []
        links: KeeperLinks = self.__dict__.setdefault("_links", KeeperLinks(DATA_TIMEOUT_S))
        book: AddressBook = self.__dict__.setdefault("_addresses", AddressBook())
        addresses = book.resolve(dict(h for _, h in todo), instead="sending its pieces through Ray")
        direct = [(p, h) for p, h in todo if h[0] in addresses]
        via_ray = [(p, h) for p, h in todo if h[0] not in addresses]
        try:
            errors = links.send([(addresses[h[0]], p, generation, wait_s) for p, h in direct])
        except OSError as e:
            # A keeper died or restarted (new port): ask again next time; now send these through Ray
            # (a repeated piece replaces itself: puts are idempotent within the version being written).
            nodes = sorted({h[0] for _, h in direct})
            log.warning(
                "data plane to nodes %s failed (%s); sending these pieces through Ray", [n[:8] for n in nodes], e
            )
            for node in nodes:
                links.forget(addresses[node])
                book.forget(node)
            return [], via_ray + direct
        return [(p, h, err) for (p, h), err in zip(direct, errors, strict=True)], via_ray

    def prepare(self, version: int, expected: set[PieceId], timeout_s: float) -> list[PieceId]:
        """Phase 1 of the commit in one call: wait until the ``expected`` pieces are stored (or
        ``timeout_s`` passes), then the ids of the pieces of ``version`` held.

        Not hashed again here (``Keeper.held``): every piece was verified when stored, and phase 2's
        ``commit`` verifies each once more; a piece damaged in between is then counted lost and the
        keeper rolled forward without it (``commit.py``). Hashing here too cost the keepers a pass
        over all their bytes per snapshot (xor k=2 m=1: 1.5x the state, cluster-wide)."""
        self.wait_for_pieces(version, expected, timeout_s)
        return self.held(version)

    def release_buffers(self, tokens: list[str]) -> None:
        """Unmap trainer buffers that will not be handed off again (the trainer's sink closed)."""
        self._shared_buffers().release(tokens)

    def _shared_buffers(self) -> SharedBufferReader:
        return self.__dict__.setdefault("_shared", SharedBufferReader())

    def memory_need(self, version: int) -> tuple[int, int, int]:
        """``(bytes of version held here, bytes its hand-offs here held in transit, budget bytes)``.

        The transit bytes add up every hand-off of the version on this node, as if they overlapped
        (the node's ranks snapshot the same step, so they do).
        """
        with self._lock:
            stored = sum(self._sizes.get(version, {}).values())
            return stored, self.__dict__.get("_transient", {}).get(version, 0), self.budget_bytes

    def _note_transient(self, version: int, nbytes: int) -> None:
        with self._lock:
            transient = self.__dict__.setdefault("_transient", {})
            transient[version] = transient.get(version, 0) + nbytes
            for old in [v for v in transient if v < version - 1]:  # the current and previous versions suffice
                del transient[old]

    def _node_here(self) -> str:
        """This keeper's node id, asked of Ray once: the runtime-context look-up was ~5 % of a busy keeper's
        Python time per hand-off (py-spy, tiny snapshots every step)."""
        node = self.__dict__.get("_node_id_here")
        if node is None:
            node = self.__dict__["_node_id_here"] = ray.get_runtime_context().get_node_id()
        return node

    def _codec(self, scheme: str, k: int, m: int) -> ErasureCodec:
        cache = self.__dict__.setdefault("_codecs", {})
        if (scheme, k, m) not in cache:
            cache[(scheme, k, m)] = make_codec(scheme, k, m)
        return cache[(scheme, k, m)]
