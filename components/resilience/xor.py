"""The XOR kernel of the parity codec: ``out = a ^ b ^ c ...`` over equal-size byte buffers, in numpy.

Hand-written because the operation is one line of numpy, while an EC library (pyeclib's flat XOR
codes) would add its fragment headers and two buffer copies per call for the simplest code there is.
Buffers are viewed as ``uint64`` words when their length allows it (the XOR codec pads pieces to a
multiple of :data:`WORD` bytes so it always does), so numpy XORs eight bytes per lane with SIMD.
The work is cut into chunks that fit the L2 cache: the running parity of a chunk stays in cache
while every source streams past it once, so memory traffic is one read per source and one write of
the result, instead of a read and a write of the whole result per source.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: anything exposing a C-contiguous buffer: bytes, bytearray, memoryview, numpy array
BytesLike = bytes | bytearray | memoryview | np.ndarray

#: bytes per XOR lane; pieces are padded to a multiple of this
WORD = 8
#: bytes of the result computed per pass over the sources (well inside a 512 KiB L2)
CHUNK_BYTES = 256 << 10


def as_array(buffer: BytesLike) -> np.ndarray:
    """A 1-D ``uint8`` numpy view of any C-contiguous buffer (no copy; read-only if ``buffer`` is)."""
    if isinstance(buffer, np.ndarray) and buffer.dtype == np.uint8 and buffer.ndim == 1:
        return buffer
    return np.frombuffer(memoryview(buffer).cast("B"), dtype=np.uint8)


def words(buffer: BytesLike) -> np.ndarray:
    """A numpy view of ``buffer`` (no copy): ``uint64`` words if the length allows, else bytes.

    Writable exactly when ``buffer`` is (a ``bytes`` object gives a read-only view).
    """
    view = as_array(buffer)
    return view.view(np.uint64) if view.size % WORD == 0 else view


def xor_into(out: BytesLike, sources: Sequence[BytesLike]) -> None:
    """Write the XOR of ``sources`` (at least one, each as long as ``out``) into the writable ``out``."""
    if not sources:
        raise ValueError("xor_into needs at least one source buffer")
    dst = words(out)
    if not dst.flags.writeable:
        raise ValueError("xor_into needs a writable output buffer")
    srcs = [words(s) for s in sources]
    for s in srcs:
        if s.nbytes != dst.nbytes:
            raise ValueError(f"xor_into: a source has {s.nbytes} bytes, the output {dst.nbytes}")
    step = CHUNK_BYTES // dst.itemsize
    for lo in range(0, dst.size, step):
        acc = dst[lo : lo + step]
        if len(srcs) == 1:  # k = 1: the "parity" of one piece is a mirror copy
            np.copyto(acc, srcs[0][lo : lo + step])
            continue
        np.bitwise_xor(srcs[0][lo : lo + step], srcs[1][lo : lo + step], out=acc)
        for s in srcs[2:]:
            np.bitwise_xor(acc, s[lo : lo + step], out=acc)
