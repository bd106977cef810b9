"""A piece of an erasure-coded snapshot: the unit keepers store, move and verify.

A snapshot version is cut, per erasure-coding group, into ``k`` data pieces (one per rank's node in
the group) and ``m`` parity pieces. Every piece carries its checksum from the moment it is made, so
any holder (keeper, reader, decoder) can tell a damaged piece from a good one and treat it as lost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import xxhash

#: a piece's bytes: ``bytes``, or a 1-D ``uint8`` numpy array (codecs make arrays so they can write
#: pieces in place and hand views of a snapshot buffer on without copying them)
PieceData = bytes | np.ndarray


def checksum(data: bytes | bytearray | memoryview) -> str:
    """xxh3-128 of ``data``: not cryptographic, but fast enough (many GB/s) to check every piece on
    every store and every read without costing the snapshot its overlap with training."""
    return xxhash.xxh3_128_hexdigest(data)


def checksummer() -> xxhash.xxh3_128:
    """:func:`checksum` in streaming form (``update`` chunk by chunk, then ``hexdigest``): the same
    digest, computed while each chunk is still in cache from the step that wrote it."""
    return xxhash.xxh3_128()


#: bytes copied and hashed per step of :func:`copy_checksummed` (stays in L2 between the two)
COPY_CHUNK = 256 << 10


def copy_checksummed(data: PieceData) -> tuple[np.ndarray, str]:
    """A copy of ``data`` that owns its bytes, and the :func:`checksum` of the copy, in one pass:
    each chunk is hashed right after it is copied, while it is still in cache, so memory sees one
    read of ``data`` (a keeper verifies and keeps a received piece at the cost of one memcpy)."""
    src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    out = np.empty(src.size, dtype=np.uint8)
    hasher = checksummer()
    for lo in range(0, src.size, COPY_CHUNK):
        chunk = out[lo : lo + COPY_CHUNK]
        np.copyto(chunk, src[lo : lo + COPY_CHUNK])
        hasher.update(chunk)
    return out, hasher.hexdigest()


@dataclass(frozen=True)
class PieceId:
    """Where a piece belongs: snapshot version, EC group, and index (0..k-1 data, k..k+m-1 parity)."""

    version: int
    group: int
    index: int


@dataclass(frozen=True)
class Piece:
    id: PieceId
    data: PieceData
    checksum: str
    #: bytes of payload before padding to the group's piece size (the decoder trims to it)
    payload_size: int

    @classmethod
    def make(cls, id: PieceId, data: PieceData, payload_size: int | None = None) -> Piece:
        return cls(
            id=id, data=data, checksum=checksum(data), payload_size=len(data) if payload_size is None else payload_size
        )

    def is_intact(self) -> bool:
        return checksum(self.data) == self.checksum

    def is_view(self) -> bool:
        """True if ``data`` is a numpy view of memory this piece does not own (a snapshot buffer, or a
        Ray object-store buffer that comes back from a call as a zero-copy, read-only view)."""
        return isinstance(self.data, np.ndarray) and self.data.base is not None

    def owned_checked(self) -> Piece | None:
        """This piece with bytes of its own (:meth:`owned`) if it is intact, else None: for a view,
        the copy and the checksum are one pass (:func:`copy_checksummed`), the hash of the copy."""
        if not self.is_view():
            return self if self.is_intact() else None
        data, digest = copy_checksummed(self.data)
        return replace(self, data=data) if digest == self.checksum else None

    def owned(self) -> Piece:
        """This piece with bytes of its own: a holder that keeps a piece must not keep a view (the
        snapshot buffer is reused; an object-store buffer dies with its owner, the sender)."""
        return replace(self, data=np.array(self.data, dtype=np.uint8, copy=True)) if self.is_view() else self
