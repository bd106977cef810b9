"""Erasure codecs: one rank's snapshot bytes → ``k`` data + ``m`` parity pieces, and back from any ``k``.

One small interface, implementations chosen by ``cfg.resilience.scheme`` (torchtitan style):
:class:`ErasureCodec` states the contract, :func:`make_codec` looks a scheme up in :data:`CODECS`.

- ``xor`` (:class:`XorCodec`): ``k`` data pieces and one parity piece, their XOR (numpy, see
  :mod:`components.resilience.xor`). One parity piece survives any single node loss in a group.
- ``rs`` (:class:`ReedSolomonCodec`): Reed–Solomon on Intel ISA-L, called directly through ``ctypes``
  (:mod:`components.resilience.isal`; the library pyeclib's wheel bundles), not through pyeclib,
  whose copies and fragment headers held it to 0.20x of a memcpy; any ``m`` lost pieces are rebuilt.
  ISA-L's Vandermonde matrix decodes every loss only for ``m <= 4``, so larger ``m`` uses its
  Cauchy matrix.

Every piece is checksummed when made (:class:`~components.resilience.piece.Piece`). The public
:meth:`ErasureCodec.decode` is a guarded template method: it checks once, for every scheme, that
the pieces belong to one (version, group), treats a piece whose checksum fails as lost, and picks
``k`` intact pieces, data pieces first (when they are all intact decoding is a concatenation);
a scheme implements only ``_decode`` on exactly those ``k``.
"""

from __future__ import annotations

import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import ClassVar

import numpy as np

from components.common.errors import ConfigError, RecoveryError
from components.resilience import isal
from components.resilience.piece import Piece, PieceId, checksummer
from components.resilience.xor import WORD, BytesLike, as_array, xor_into

#: Environment for processes that encode or decode snapshots (keepers; the codec benchmark).
#: glibc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mmap and
#: unmaps them on free, so the pieces of every snapshot would be page-faulted in anew: about 1 GB/s
#: on a CPU box, several times slower than the coding itself. Raising the thresholds keeps freed
#: blocks in the heap, and the next snapshot reuses warm pages. One arena (``MALLOC_ARENA_MAX=1``): a
#: keeper frees a version's pieces on one thread (a commit) and allocates the next on others (Ray's call
#: threads, the data plane's connection threads); with glibc's per-thread arenas the freed blocks sat in
#: another arena and every snapshot faulted fresh pages in again (measured: encoding 64 MiB on a new
#: thread 230-245 ms, against 10 ms with one arena). glibc reads these at process start:
#: pass them as ``runtime_env={"env_vars": MALLOC_REUSE_ENV}`` to keeper actors.
MALLOC_REUSE_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_ARENA_MAX": "1",
}


class ErasureCodec(ABC):
    """``k`` data pieces then ``m`` parity pieces per (version, group); any ``k`` intact ones decode."""

    scheme: ClassVar[str]
    #: appended to the error for pieces of the wrong size (a scheme says which older pieces it refuses)
    foreign_hint: ClassVar[str] = ""

    def __init__(self, k: int, m: int) -> None:
        if k < 1:
            raise ConfigError(f"resilience.k: must be >= 1, got {k}")
        if m < 1:
            raise ConfigError(f"resilience.m: must be >= 1, got {m}")
        self.k, self.m = k, m

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, m={self.m})"

    @abstractmethod
    def piece_size(self, payload_size: int) -> int:
        """Bytes of each of the ``k + m`` pieces of a ``payload_size``-byte payload."""

    def _data_slots(
        self, view: np.ndarray, copy: bool | Collection[int]
    ) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
        """``(piece size, the payload's k slices, the k data pieces to fill)`` for an encode: a data
        piece is its slice itself (a view) unless ``copy`` asks it to own its bytes or it is the short
        last slice (zero-padded), then a new array the encoding pass copies the slice into."""
        size = self.piece_size(view.size)
        sources = [view[i * size : (i + 1) * size] for i in range(self.k)]
        own = set(range(self.k)) if copy is True else set(copy or ())
        blobs = [
            src if src.size == size and i not in own else np.empty(size, dtype=np.uint8)
            for i, src in enumerate(sources)
        ]
        return size, sources, blobs

    @abstractmethod
    def encode(self, version: int, group: int, data: BytesLike, *, copy: bool | Collection[int] = True) -> list[Piece]:
        """``k`` data then ``m`` parity pieces of equal size, checksummed, ``payload_size = len(data)``.

        ``data`` is read in place (any buffer: bytes, memoryview, numpy array). With ``copy=False`` a
        scheme may return data pieces that are views of ``data`` (no copy at all for them); with a
        collection of indices, only those data pieces must own their bytes (the ones the caller keeps:
        the copy is made in the encoding pass, not in a pass of its own afterwards).
        """

    def decode_into(self, pieces: Sequence[Piece], out: BytesLike) -> memoryview:
        """Like :meth:`decode`, but into the writable buffer ``out`` (at least the payload's size, e.g.
        a preallocated snapshot buffer); returns the view of ``out`` that holds the payload.

        A scheme that checks checksums while it decodes (:meth:`_decode_checked_into`) decodes the
        first ``k`` pieces optimistically, in one pass; only if one of them fails its checksum are the
        pieces checked one by one first and the decode run again on intact ones.
        """
        target = as_array(out)
        try:
            chosen = self._choose_intact(pieces, verify=False)
        except RecoveryError:  # e.g. a piece cut short, unchecked yet: check them one by one below
            chosen = None
        if chosen is not None:
            payload_size = self._check_target(target, chosen)
            if self._decode_checked_into(chosen, payload_size, target[:payload_size]):
                return memoryview(target[:payload_size])
        chosen = self._choose_intact(pieces)
        payload_size = self._check_target(target, chosen)
        self._decode_into(chosen, payload_size, target[:payload_size])
        return memoryview(target[:payload_size])

    @staticmethod
    def _check_target(target: np.ndarray, chosen: list[Piece]) -> int:
        payload_size = chosen[0].payload_size
        if target.size < payload_size or not target.flags.writeable:
            raise ValueError(f"decode_into needs a writable buffer of >= {payload_size} bytes, got {target.size}")
        return payload_size

    def _decode_checked_into(self, pieces: list[Piece], payload_size: int, out: np.ndarray) -> bool:
        """Decode into ``out`` while checking the pieces' checksums; False if one fails (``out`` is then
        garbage). Schemes without a fused path check first, then decode."""
        if not all(p.is_intact() for p in pieces):
            return False
        self._decode_into(pieces, payload_size, out)
        return True

    def _decode_into(self, pieces: list[Piece], payload_size: int, out: np.ndarray) -> None:
        """Decode into ``out`` (exactly ``payload_size`` bytes); schemes without an in-place path copy."""
        decoded = self._decode(pieces, payload_size)
        if len(decoded) != payload_size:
            self._size_mismatch(pieces, len(decoded), payload_size)
        np.copyto(out, np.frombuffer(decoded, dtype=np.uint8))

    def decode(self, pieces: Sequence[Piece]) -> bytes:
        """The original bytes from any ``k`` intact pieces of one (version, group).

        Pieces failing :meth:`Piece.is_intact` count as lost; fewer than ``k`` intact pieces raise
        :class:`RecoveryError`. Only as many checksums are computed as needed to find ``k`` good pieces.
        """
        chosen = self._choose_intact(pieces)
        payload_size = chosen[0].payload_size
        out = self._decode(chosen, payload_size)
        if len(out) != payload_size:
            self._size_mismatch(chosen, len(out), payload_size)
        return out

    def _size_mismatch(self, pieces: Sequence[Piece], got: int, payload_size: int) -> None:
        pid = pieces[0].id
        raise RecoveryError(
            f"snapshot version {pid.version}, group {pid.group}: {self!r} decoded {got} bytes, "
            f"the pieces say {payload_size}; the pieces were not made by this codec"
        )

    @abstractmethod
    def _decode(self, pieces: list[Piece], payload_size: int) -> bytes:
        """Decode from exactly ``k`` intact pieces of distinct indices, sorted by index."""

    def _choose_intact(self, pieces: Sequence[Piece], *, verify: bool = True) -> list[Piece]:
        """``k`` pieces of distinct indices, data pieces first; with ``verify``, intact ones only
        (checksums computed as needed), else the first ``k`` as they claim to be."""
        if not pieces:
            raise RecoveryError(f"{self!r}: no pieces to decode, need k={self.k} intact pieces")
        first = pieces[0]
        version, group = first.id.version, first.id.group
        where = f"snapshot version {version}, group {group}"
        for p in pieces:
            if (p.id.version, p.id.group) != (version, group):
                raise RecoveryError(
                    f"{where}: a piece of version {p.id.version}, group {p.id.group} was handed to the same "
                    "decode; decode one (version, group) at a time"
                )
            if not 0 <= p.id.index < self.k + self.m:
                raise RecoveryError(f"{where}: piece index {p.id.index} outside 0..{self.k + self.m - 1} of {self!r}")
        intact: dict[int, Piece] = {}
        corrupt: set[int] = set()
        for p in sorted(pieces, key=lambda p: p.id.index):
            if len(intact) == self.k:
                break
            if p.id.index in intact:
                continue
            if not verify or p.is_intact():
                intact[p.id.index] = p
            else:
                corrupt.add(p.id.index)
        if len(intact) < self.k:
            absent = sorted(set(range(self.k + self.m)) - intact.keys() - corrupt)
            raise RecoveryError(
                f"cannot decode {where}: {len(intact)} intact pieces, {self!r} needs k={self.k} "
                f"(failed checksum: {sorted(corrupt) or 'none'}; absent: {absent or 'none'})"
            )
        chosen = list(intact.values())
        for p in chosen[1:]:
            if (p.payload_size, len(p.data)) != (chosen[0].payload_size, len(chosen[0].data)):
                raise RecoveryError(
                    f"{where}: intact pieces disagree on their sizes (piece {p.id.index}: {len(p.data)} bytes "
                    f"of a {p.payload_size}-byte payload, piece {chosen[0].id.index}: {len(chosen[0].data)} "
                    f"of {chosen[0].payload_size}); they come from different encodings"
                )
        payload_size = chosen[0].payload_size
        if len(chosen[0].data) != (expected := self.piece_size(payload_size)):
            raise RecoveryError(
                f"{where}: pieces of {len(chosen[0].data)} bytes for a {payload_size}-byte payload, but {self!r} "
                f"makes {expected}-byte pieces: they were not made by this codec{self.foreign_hint}"
            )
        return chosen


#: bytes of each piece handled per step of the fused XOR encode: k + 1 chunks stay in cache together
ENCODE_CHUNK = 256 << 10


class XorCodec(ErasureCodec):
    """``k`` data pieces plus their XOR: any one lost piece is the XOR of the other ``k``."""

    scheme = "xor"

    def __init__(self, k: int, m: int = 1) -> None:
        super().__init__(k, m)
        if m != 1:
            raise ConfigError(
                f"resilience.m: xor parity has exactly one parity piece; set m=1 or scheme=rs (got m={m})"
            )

    def piece_size(self, payload_size: int) -> int:
        """``payload_size / k`` rounded up to whole :data:`WORD`\\ s, so the XOR runs on ``uint64`` lanes."""
        return -(-payload_size // (self.k * WORD)) * WORD

    def encode(self, version: int, group: int, data: BytesLike, *, copy: bool | Collection[int] = True) -> list[Piece]:
        """Pieces as ``uint8`` arrays; with ``copy=False`` each whole data piece is a view of ``data``
        (only a padded tail piece and the parity are new memory), so the caller must keep ``data``
        unchanged while it holds them (or :meth:`Piece.owned` them); with a collection of indices,
        those data pieces are copies and the others views.

        One pass over the payload in cache-sized chunks: each chunk of each piece is copied (into a
        new piece), checksummed and XORed into the parity while it sits in cache, so memory sees one
        read of the payload and one write per new piece, instead of a pass per step (copy, XOR, hash
        each piece): about 2x faster than the three passes at 64 MiB.
        """
        view = as_array(data)
        size, sources, blobs = self._data_slots(view, copy)
        parity = np.empty(size, dtype=np.uint8)
        hashers = [checksummer() for _ in range(self.k + 1)]
        for lo in range(0, size, ENCODE_CHUNK):
            hi = min(lo + ENCODE_CHUNK, size)
            acc = parity[lo:hi]
            for i, (src, blob) in enumerate(zip(sources, blobs, strict=True)):
                if blob is not src:  # np.copyto releases the GIL; only tail pieces are short: zero-pad them
                    have = max(0, min(hi, src.size) - lo)
                    np.copyto(blob[lo : lo + have], src[lo : lo + have])
                    blob[lo + have : hi] = 0
                chunk = blob[lo:hi]
                hashers[i].update(chunk)
                if i == 0:  # k = 1: the "parity" of one piece is a mirror copy
                    np.copyto(acc, chunk)
                else:
                    np.bitwise_xor(acc, chunk, out=acc)
            hashers[self.k].update(acc)
        return [
            Piece(PieceId(version, group, i), b, h.hexdigest(), view.size)
            for i, (b, h) in enumerate(zip([*blobs, parity], hashers, strict=True))
        ]

    def _decode(self, pieces: list[Piece], payload_size: int) -> bytes:
        blocks: dict[int, BytesLike] = {p.id.index: p.data for p in pieces}
        lost = [i for i in range(self.k) if i not in blocks]
        if lost:  # k intact of k + 1 pieces: exactly one data piece is missing and the parity is here
            rebuilt = np.empty(len(pieces[0].data), dtype=np.uint8)
            xor_into(rebuilt, [p.data for p in pieces])
            blocks[lost[0]] = rebuilt
        size = len(pieces[0].data)
        # one copy: join takes views trimmed to the payload, so padding is never copied
        return b"".join(
            memoryview(blocks[i]).cast("B")[: max(0, min(size, payload_size - i * size))] for i in range(self.k)
        )

    def _decode_checked_into(self, pieces: list[Piece], payload_size: int, out: np.ndarray) -> bool:
        """One pass in cache-sized chunks, as :meth:`encode`: each chunk of each piece is checksummed,
        then copied to its place or XORed into the lost piece's while it is in cache."""
        size = len(pieces[0].data)
        present = {p.id.index for p in pieces}
        lost = next((i for i in range(self.k) if i not in present), None)
        datas = [as_array(p.data) for p in pieces]
        hashers = [checksummer() for _ in pieces]
        spare = np.empty(min(size, ENCODE_CHUNK), dtype=np.uint8)
        for lo in range(0, size, ENCODE_CHUNK):
            hi = min(lo + ENCODE_CHUNK, size)
            chunks = [d[lo:hi] for d in datas]
            for h, c in zip(hashers, chunks, strict=True):
                h.update(c)
            for p, c in zip(pieces, chunks, strict=True):
                have = max(0, min(hi - lo, payload_size - (p.id.index * size + lo)))
                if p.id.index < self.k and have:
                    start = p.id.index * size + lo
                    np.copyto(out[start : start + have], c[:have])
            have = 0 if lost is None else max(0, min(hi - lo, payload_size - (lost * size + lo)))
            if have:  # the lost data piece: the XOR of the k pieces here (its copy, for k = 1)
                start, partial = lost * size + lo, have < hi - lo  # a short tail: rebuilt whole, then trimmed
                dst = spare[: hi - lo] if partial else out[start : start + have]
                np.copyto(dst, chunks[0])
                for c in chunks[1:]:
                    np.bitwise_xor(dst, c, out=dst)
                if partial:
                    np.copyto(out[start : start + have], dst[:have])
        return all(h.hexdigest() == p.checksum for h, p in zip(hashers, pieces, strict=True))

    def _decode_into(self, pieces: list[Piece], payload_size: int, out: np.ndarray) -> None:
        size = len(pieces[0].data)
        blocks: dict[int, BytesLike] = {p.id.index: p.data for p in pieces}
        for i in range(self.k):
            lo, hi = i * size, min((i + 1) * size, payload_size)
            if hi <= lo:
                continue
            if i in blocks:  # padding is never copied
                np.copyto(out[lo:hi], as_array(blocks[i])[: hi - lo])
            elif hi - lo == size:  # the lost piece: k intact of k + 1, so the parity is here
                xor_into(out[lo:hi], [p.data for p in pieces])
            else:  # a lost short tail piece: rebuild it whole, keep what the payload holds of it
                rebuilt = np.empty(size, dtype=np.uint8)
                xor_into(rebuilt, [p.data for p in pieces])
                np.copyto(out[lo:hi], rebuilt[: hi - lo])


#: bytes of all ``k + m`` pieces handled per step of a fused Reed–Solomon pass: every piece's chunk is
#: still in cache (2 MiB of L2 per core here) when it is hashed after ISA-L read or wrote it
RS_STEP_BYTES = 1536 << 10


class ReedSolomonCodec(ErasureCodec):
    """Reed–Solomon on Intel ISA-L, called directly (:mod:`components.resilience.isal`) on numpy buffers.

    A piece is a plain ``payload / k`` slice (the last one zero-padded) or a parity row, with no
    header: data pieces are the payload's slices themselves (views with ``copy=False``, as in
    :meth:`XorCodec.encode`), parity pieces are arrays ISA-L's ``ec_encode_data`` writes, and decoding
    writes the missing data rows straight into the caller's buffer. Bound by hand rather than through
    pyeclib, whose copies and per-fragment framing held encoding and decoding to 0.20x of a memcpy.

    Pieces made by the earlier pyeclib codec (before 2026-12-04) carry liberasurecode's fragment header
    and cannot be decoded by this one. Neither a persisted piece's name nor its version's manifest
    records the scheme (``persist.py``: group, index, payload size, checksum; manifests hold the shape);
    the size tells: such a fragment is its share of the payload plus 80 header bytes, never the size
    :meth:`piece_size` gives, so decoding refuses it with an error that names the snapshot version
    instead of returning garbage, and recovery moves on to its next tier.
    """

    scheme = "rs"
    foreign_hint = (
        "; pieces persisted by lmforge's earlier pyeclib-based rs codec (before 2026-12-04, fragments with "
        "an 80-byte header) cannot be decoded by this one: restore from the Ray Train checkpoint (recovery "
        "falls back to it) or read that version with an lmforge from before the change"
    )

    def __init__(self, k: int, m: int) -> None:
        super().__init__(k, m)
        isal.encode_matrix(k, m)  # now, not at the first encode: a ConfigError naming the fix if ISA-L cannot load
        self.backend = "isa-l vandermonde" if m <= isal.VANDERMONDE_MAX_M else "isa-l cauchy"
        step = RS_STEP_BYTES // (k + m)
        self.chunk = max(4096, step - step % 64)  # whole 64-byte vectors per ISA-L call

    def __repr__(self) -> str:
        return f"ReedSolomonCodec(k={self.k}, m={self.m}, backend={self.backend!r})"

    def __reduce__(self):  # rebuilt from (k, m) wherever it is unpickled: ISA-L tables are per process
        return (type(self), (self.k, self.m))

    def piece_size(self, payload_size: int) -> int:
        """``payload_size / k`` rounded up: ISA-L codes any length, so only the last piece is padded."""
        return -(-payload_size // self.k)

    def encode(self, version: int, group: int, data: BytesLike, *, copy: bool | Collection[int] = True) -> list[Piece]:
        """Pieces as ``uint8`` arrays, with :meth:`XorCodec.encode`'s contract for ``copy``: with
        ``copy=False`` whole data pieces are views of ``data``, with a collection of indices those data
        pieces are copies and the others views.

        One pass in cache-sized chunks: each chunk of each data piece is copied (if it must own its
        bytes) and hashed, ISA-L writes the parity chunks from them, and those are hashed while in cache.
        """
        view = as_array(data)
        size, sources, blobs = self._data_slots(view, copy)
        parity = [np.empty(size, dtype=np.uint8) for _ in range(self.m)]
        hashers = [checksummer() for _ in range(self.k + self.m)]
        tables = _encode_tables(self.k, self.m)
        inputs, outputs = isal.Pointers(blobs), isal.Pointers(parity)
        for lo in range(0, size, self.chunk):
            hi = min(lo + self.chunk, size)
            for i, (src, blob) in enumerate(zip(sources, blobs, strict=True)):
                if blob is not src:  # np.copyto releases the GIL; only tail pieces are short: zero-pad them
                    have = max(0, min(hi, src.size) - lo)
                    np.copyto(blob[lo : lo + have], src[lo : lo + have])
                    blob[lo + have : hi] = 0
                hashers[i].update(blob[lo:hi])
            isal.encode(tables, hi - lo, inputs.at(lo), self.k, outputs.at(lo), self.m)
            for j, p in enumerate(parity):
                hashers[self.k + j].update(p[lo:hi])
        return [
            Piece(PieceId(version, group, i), b, h.hexdigest(), view.size)
            for i, (b, h) in enumerate(zip([*blobs, *parity], hashers, strict=True))
        ]

    def _decode(self, pieces: list[Piece], payload_size: int) -> bytes:
        size = len(pieces[0].data)
        blocks = {p.id.index: as_array(p.data) for p in pieces}
        lost = [i for i in range(self.k) if i not in blocks]
        if lost and size:  # rebuild the lost data rows whole, in one ISA-L call
            rebuilt = [np.empty(size, dtype=np.uint8) for _ in lost]
            inputs = isal.Pointers([as_array(p.data) for p in pieces])
            isal.encode(
                self._decode_tables(pieces), size, inputs.at(0), self.k, isal.Pointers(rebuilt).at(0), len(lost)
            )
            blocks.update(zip(lost, rebuilt, strict=True))
        # one copy: join takes views trimmed to the payload, so padding is never copied
        return b"".join(
            memoryview(blocks[i])[: max(0, min(size, payload_size - i * size))] if i in blocks else b""
            for i in range(self.k)
        )

    def _decode_checked_into(self, pieces: list[Piece], payload_size: int, out: np.ndarray) -> bool:
        return self._decode_pass(pieces, payload_size, out, verify=True)

    def _decode_into(self, pieces: list[Piece], payload_size: int, out: np.ndarray) -> None:
        self._decode_pass(pieces, payload_size, out, verify=False)

    def _decode_pass(self, pieces: list[Piece], payload_size: int, out: np.ndarray, *, verify: bool) -> bool:
        """One pass in cache-sized chunks: each chunk of each data piece here is copied to its place,
        each chunk of each piece is hashed (with ``verify``) while in cache, and ISA-L writes the lost
        data rows straight into ``out`` (a short tail row goes through a spare chunk, then only its
        payload bytes are copied). Returns whether every piece matched its checksum (always True
        without ``verify``)."""
        size = len(pieces[0].data)
        datas = [as_array(p.data) for p in pieces]
        present = {p.id.index for p in pieces}
        lost = [i for i in range(self.k) if i not in present]
        hashers = [checksummer() for _ in pieces] if verify else []
        if lost:
            tables = self._decode_tables(pieces)
            inputs = isal.Pointers(datas)
            spares = [np.empty(min(size, self.chunk), dtype=np.uint8) for _ in lost]
            outputs = isal.Pointers(spares)
            targets = outputs.array
            target_base = isal.address(out)
        for lo in range(0, size, self.chunk):
            hi = min(lo + self.chunk, size)
            for p, d, h in zip(pieces, datas, hashers or itertools.repeat(None), strict=False):
                start = p.id.index * size + lo
                have = max(0, min(hi - lo, payload_size - start)) if p.id.index < self.k else 0
                if have:  # a data piece: copied first, so its hash reads the copy from cache, not memory
                    np.copyto(out[start : start + have], d[lo : lo + have])
                if h is not None:
                    h.update(out[start : start + have] if have == hi - lo else d[lo:hi])
            if not lost:
                continue
            partial = []
            for r, i in enumerate(lost):
                start = i * size + lo
                have = max(0, min(hi - lo, payload_size - start))
                if have == hi - lo:
                    targets[r] = target_base + start
                else:  # a short tail row, or one wholly past the payload: computed aside
                    targets[r] = outputs.bases[r]
                    partial.append((r, start, have))
            isal.encode(tables, hi - lo, inputs.at(lo), self.k, targets, len(lost))
            for r, start, have in partial:
                np.copyto(out[start : start + have], spares[r][:have])
        return all(h.hexdigest() == p.checksum for h, p in zip(hashers, pieces, strict=False))

    def _decode_tables(self, pieces: list[Piece]) -> np.ndarray:
        chosen = tuple(p.id.index for p in pieces)
        tables = _decode_tables(self.k, self.m, chosen)
        if tables is None:
            pid = pieces[0].id
            raise RecoveryError(
                f"snapshot version {pid.version}, group {pid.group}: {self!r} cannot decode from pieces "
                f"{list(chosen)} (their rows of the generator matrix are singular); this loss pattern needs "
                f"other pieces, or resilience.m above {isal.VANDERMONDE_MAX_M} (Cauchy) for new snapshots"
            )
        return tables


@functools.lru_cache(maxsize=64)
def _encode_tables(k: int, m: int) -> np.ndarray:
    """ISA-L tables of the parity rows, per (k, m)."""
    return isal.init_tables(isal.encode_matrix(k, m)[k:])


@functools.lru_cache(maxsize=1024)
def _decode_tables(k: int, m: int, chosen: tuple[int, ...]) -> np.ndarray | None:
    """ISA-L tables that rebuild the data rows missing from the ``k`` pieces ``chosen`` (sorted
    indices), per (k, m) and erasure pattern; None if those pieces' rows are singular.

    Piece ``j`` of the encoding is row ``j`` of the generator matrix ``G`` times the data, so the
    pieces chosen are ``S = G[chosen]`` times the data, and the data is ``S^-1`` times them: the rows
    of ``S^-1`` for the missing data pieces are the coefficients to code the chosen pieces with.
    """
    inverse = isal.invert(isal.encode_matrix(k, m)[list(chosen)])
    if inverse is None:
        return None
    lost = [i for i in range(k) if i not in chosen]
    return isal.init_tables(inverse[lost])


#: scheme name (``cfg.resilience.scheme``) → codec class; each takes ``(k, m)``
CODECS: dict[str, type[ErasureCodec]] = {"xor": XorCodec, "rs": ReedSolomonCodec}


def make_codec(scheme: str, k: int, m: int) -> ErasureCodec:
    """The codec of ``cfg.resilience.scheme``: ``xor`` (``m`` must be 1) or ``rs``."""
    if scheme not in CODECS:
        raise ConfigError(f"resilience.scheme: unknown erasure code {scheme!r}; use one of: {', '.join(CODECS)}")
    return CODECS[scheme](k, m)
