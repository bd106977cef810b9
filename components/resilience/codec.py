"""Erasure codecs: one rank's snapshot bytes → ``k`` data + ``m`` parity pieces, and back from any ``k``.

One small interface, implementations chosen by ``cfg.resilience.scheme`` (torchtitan style):
:class:`ErasureCodec` states the contract, :func:`make_codec` looks a scheme up in :data:`CODECS`.

- ``xor`` (:class:`XorCodec`): ``k`` data pieces and one parity piece, their XOR (numpy, see
  :mod:`components.resilience.xor`). One parity piece survives any single node loss in a group.
- ``rs`` (:class:`ReedSolomonCodec`): Reed–Solomon through ``pyeclib`` (liberasurecode + Intel
  ISA-L, bundled in its wheel); any ``m`` lost pieces are rebuilt. ISA-L's Vandermonde matrix is
  only guaranteed invertible for ``m <= 4``, so larger ``m`` uses its Cauchy matrix.

Every piece is checksummed when made (:class:`~components.resilience.piece.Piece`). The public
:meth:`ErasureCodec.decode` is a guarded template method: it checks once, for every scheme, that
the pieces belong to one (version, group), treats a piece whose checksum fails as lost, and picks
``k`` intact pieces, data pieces first (when they are all intact decoding is a concatenation);
a scheme implements only ``_decode`` on exactly those ``k``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import ClassVar

import numpy as np

from components.common.errors import ConfigError, RecoveryError
from components.common.log import get_logger
from components.resilience.piece import Piece, PieceId, checksummer
from components.resilience.xor import WORD, BytesLike, as_array, xor_into

log = get_logger(__name__)

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

    def __init__(self, k: int, m: int) -> None:
        if k < 1:
            raise ConfigError(f"resilience.k: must be >= 1, got {k}")
        if m < 1:
            raise ConfigError(f"resilience.m: must be >= 1, got {m}")
        self.k, self.m = k, m

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, m={self.m})"

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
        chosen = self._choose_intact(pieces, verify=False)
        payload_size = chosen[0].payload_size
        if target.size < payload_size or not target.flags.writeable:
            raise ValueError(f"decode_into needs a writable buffer of >= {payload_size} bytes, got {target.size}")
        if self._decode_checked_into(chosen, payload_size, target[:payload_size]):
            return memoryview(target[:payload_size])
        chosen = self._choose_intact(pieces)
        self._decode_into(chosen, payload_size, target[:payload_size])
        return memoryview(target[:payload_size])

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
        size = self.piece_size(view.size)
        sources = [view[i * size : (i + 1) * size] for i in range(self.k)]
        own = set(range(self.k)) if copy is True else set(copy or ())
        blobs = [
            src if src.size == size and i not in own else np.empty(size, dtype=np.uint8)
            for i, src in enumerate(sources)
        ]
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


#: ISA-L's Vandermonde-derived matrix is guaranteed to decode every loss pattern only up to this m
VANDERMONDE_MAX_M = 4
FALLBACK_BACKEND = "liberasurecode_rs_vand"


def rs_backends(m: int) -> tuple[str, ...]:
    """pyeclib backends to try, best first: ISA-L (Cauchy above :data:`VANDERMONDE_MAX_M`), then liberasurecode's own."""
    return ("isa_l_rs_vand" if m <= VANDERMONDE_MAX_M else "isa_l_rs_cauchy", FALLBACK_BACKEND)


class ReedSolomonCodec(ErasureCodec):
    """Reed–Solomon through ``pyeclib``: ``Piece.data`` is a pyeclib fragment, its own header included.

    The header carries the fragment index and the original size, so decode hands the fragments
    straight back to pyeclib. pyeclib's C API takes ``bytes`` only: other buffers are copied once.
    """

    scheme = "rs"

    def __init__(self, k: int, m: int, backends: Sequence[str] | None = None) -> None:
        super().__init__(k, m)
        self.backends = tuple(backends or rs_backends(m))
        self._driver, self.backend = _open_driver(k, m, self.backends)

    def __repr__(self) -> str:
        return f"ReedSolomonCodec(k={self.k}, m={self.m}, backend={self.backend!r})"

    def __reduce__(self):  # the pyeclib driver holds a C handle: rebuild it wherever the codec is unpickled
        return (type(self), (self.k, self.m, self.backends))

    def encode(self, version: int, group: int, data: BytesLike, *, copy: bool | Collection[int] = True) -> list[Piece]:
        """Fragments made by pyeclib straight from ``data`` (bytes, or a numpy view of any buffer:
        pyeclib reads it in place); they are new ``bytes`` whatever ``copy`` says."""
        payload = data if isinstance(data, bytes) else as_array(data)
        fragments = self._driver.encode(payload)
        size = len(payload)
        return [Piece.make(PieceId(version, group, i), f, payload_size=size) for i, f in enumerate(fragments)]

    def _decode(self, pieces: list[Piece], payload_size: int) -> bytes:
        from pyeclib.ec_iface import ECDriverError

        # liberasurecode asserts (aborting the process) on a fragment that is not a bytes object; a
        # numpy array passes as pyeclib reads it in place (checked with pyeclib 1.6)
        fragments = [p.data if isinstance(p.data, bytes | np.ndarray) else bytes(p.data) for p in pieces]
        try:
            return self._driver.decode(fragments)
        except ECDriverError as e:
            pid = pieces[0].id
            raise RecoveryError(
                f"snapshot version {pid.version}, group {pid.group}: {self!r} could not decode pieces "
                f"{[p.id.index for p in pieces]}: {e}"
            ) from e


def _open_driver(k: int, m: int, backends: Sequence[str]):
    try:
        from pyeclib.ec_iface import ECDriver, ECDriverError
    except ImportError as e:
        raise ConfigError(
            "resilience.scheme=rs needs pyeclib (pip install pyeclib; its wheel bundles liberasurecode and "
            "ISA-L), or set resilience.scheme=xor with m=1"
        ) from e
    failures = []
    for name in backends:
        try:
            driver = ECDriver(k=k, m=m, ec_type=name)
        except ECDriverError as e:
            failures.append(f"{name}: {e}")
            continue
        if failures:
            log.warning("Reed-Solomon k=%d m=%d: using %s (unavailable: %s)", k, m, name, "; ".join(failures))
        return driver, name
    raise ConfigError(
        f"resilience.scheme=rs with k={k}, m={m}: no pyeclib backend could be opened ({'; '.join(failures)}); "
        "reinstall pyeclib from its manylinux wheel, lower resilience.k/m, or use resilience.scheme=xor"
    )


#: scheme name (``cfg.resilience.scheme``) → codec class; each takes ``(k, m)``
CODECS: dict[str, type[ErasureCodec]] = {"xor": XorCodec, "rs": ReedSolomonCodec}


def make_codec(scheme: str, k: int, m: int) -> ErasureCodec:
    """The codec of ``cfg.resilience.scheme``: ``xor`` (``m`` must be 1) or ``rs``."""
    if scheme not in CODECS:
        raise ConfigError(f"resilience.scheme: unknown erasure code {scheme!r}; use one of: {', '.join(CODECS)}")
    return CODECS[scheme](k, m)
