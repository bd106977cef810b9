"""A piece of an erasure-coded snapshot: the unit keepers store, move and verify.

A snapshot version is cut, per erasure-coding group, into ``k`` data pieces (one per rank's node in
the group) and ``m`` parity pieces. Every piece carries its checksum from the moment it is made, so
any holder (keeper, reader, decoder) can tell a damaged piece from a good one and treat it as lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash


def checksum(data: bytes | bytearray | memoryview) -> str:
    """xxh3-128 of ``data``: not cryptographic, but fast enough (many GB/s) to check every piece on
    every store and every read without costing the snapshot its overlap with training."""
    return xxhash.xxh3_128_hexdigest(data)


@dataclass(frozen=True)
class PieceId:
    """Where a piece belongs: snapshot version, EC group, and index (0..k-1 data, k..k+m-1 parity)."""

    version: int
    group: int
    index: int


@dataclass(frozen=True)
class Piece:
    id: PieceId
    data: bytes
    checksum: str
    #: bytes of payload before padding to the group's piece size (the decoder trims to it)
    payload_size: int

    @classmethod
    def make(cls, id: PieceId, data: bytes, payload_size: int | None = None) -> Piece:
        return cls(
            id=id, data=data, checksum=checksum(data), payload_size=len(data) if payload_size is None else payload_size
        )

    def is_intact(self) -> bool:
        return checksum(self.data) == self.checksum
