"""Intel ISA-L's erasure-code kernels through ``ctypes``: the GF(2^8) math of the Reed–Solomon codec.

Bound by hand, five functions, because the wrapper everyone uses costs more than the math: pyeclib
(liberasurecode) copies the payload into fragments of its own with an 80-byte header each, allocates a
new ``bytes`` per fragment, and copies again to decode, so encoding ran at 0.20x of a memcpy (64 MiB,
k=4 m=2, ``tests/benchmarks/test_codec_throughput.py``), while ISA-L's ``ec_encode_data`` alone codes
the same payload at about 1.5x of a memcpy on one core of this box. ISA-L is the well-kept library
that does the arithmetic (SIMD kernels picked for the CPU at run time); lmforge only hands it numpy
buffers: the pieces it reads and the memory it writes.

The library is the one pyeclib's manylinux wheel bundles (``pyeclib.libs/libisal-pyeclib.so.*``), so
nothing new is installed; a system ``libisal`` is tried next. ``ctypes`` releases the GIL around every
call of a ``CDLL`` function, so keepers code on several threads at once.

Contracts (ISA-L's ``erasure_code.h``): ``gf_gen_rs_matrix(a, rows, k)`` and
``gf_gen_cauchy1_matrix(a, rows, k)`` fill a ``rows x k`` matrix whose first ``k`` rows are the
identity; ``gf_invert_matrix(in, out, n)`` inverts an ``n x n`` matrix (``in`` is overwritten), 0 on
success; ``ec_init_tables(k, rows, a, tables)`` expands a ``rows x k`` coefficient matrix into
``32 * k * rows`` bytes of tables; ``ec_encode_data(len, k, rows, tables, sources, outputs)`` writes
``rows`` outputs of ``len`` bytes, each a GF(2^8) dot product of the ``k`` sources with one row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.common.errors import ConfigError

#: ISA-L's Vandermonde-derived matrix decodes every loss pattern only up to this many parity rows
#: (checked for k <= 12: with 5 parity rows some k x k submatrices are singular from k = 6 on);
#: above it the Cauchy matrix, any square submatrix of which is invertible
VANDERMONDE_MAX_M = 4

_BYTES = ctypes.c_void_p
_POINTERS = ctypes.POINTER(ctypes.c_void_p)
_INT = ctypes.c_int
_SIGNATURES = {
    "gf_gen_rs_matrix": (None, [_BYTES, _INT, _INT]),
    "gf_gen_cauchy1_matrix": (None, [_BYTES, _INT, _INT]),
    "gf_invert_matrix": (_INT, [_BYTES, _BYTES, _INT]),
    "ec_init_tables": (None, [_INT, _INT, _BYTES, _BYTES]),
    "ec_encode_data": (None, [_INT, _INT, _INT, _BYTES, _POINTERS, _POINTERS]),
}


def candidates() -> list[str]:
    """Shared libraries that may hold ISA-L, best first: pyeclib's bundled copy, then the system's."""
    found = []
    try:
        import pyeclib

        found += sorted(str(p) for p in (Path(pyeclib.__file__).parent.parent / "pyeclib.libs").glob("libisal*.so*"))
    except ImportError:
        pass
    if system := ctypes.util.find_library("isal"):
        found.append(system)
    return found


@functools.cache
def library() -> ctypes.CDLL:
    """ISA-L, loaded once per process, its functions typed; :class:`ConfigError` if no copy loads."""
    failures = []
    for path in candidates():
        try:
            lib = ctypes.CDLL(path)
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
        except (OSError, AttributeError) as e:
            failures.append(f"{path}: {e}")
            continue
        return lib
    raise ConfigError(
        "resilience.scheme=rs needs Intel ISA-L, which the pyeclib wheel bundles "
        f"({'; '.join(failures) or 'no pyeclib.libs/libisal*.so* and no system libisal found'}): "
        "reinstall pyeclib from its manylinux wheel (pip install --force-reinstall pyeclib), install "
        "libisal, or set resilience.scheme=xor with m=1"
    )


def address(buffer: np.ndarray) -> int:
    """Where a contiguous 1-D ``uint8`` buffer's bytes start (read-only buffers too: ISA-L only reads sources)."""
    if not buffer.flags.c_contiguous:
        raise ValueError("ISA-L needs contiguous buffers; copy a strided view with np.ascontiguousarray first")
    return buffer.ctypes.data


@functools.cache
def encode_matrix(k: int, m: int) -> np.ndarray:
    """The ``(k + m) x k`` generator matrix, identity on top: Vandermonde up to
    :data:`VANDERMONDE_MAX_M` parity rows, Cauchy above. Read-only: cached per (k, m)."""
    if k + m > 256:  # GF(2^8) has 256 elements: no larger matrix has every k x k submatrix invertible
        raise ConfigError(f"resilience.k + resilience.m: Reed-Solomon over GF(2^8) allows at most 256, got {k + m}")
    lib = library()
    matrix = np.zeros((k + m, k), dtype=np.uint8)
    generate = lib.gf_gen_rs_matrix if m <= VANDERMONDE_MAX_M else lib.gf_gen_cauchy1_matrix
    generate(address(matrix.reshape(-1)), k + m, k)
    matrix.flags.writeable = False
    return matrix


def invert(matrix: np.ndarray) -> np.ndarray | None:
    """The inverse of a square GF(2^8) matrix, or None if it is singular."""
    n = matrix.shape[0]
    scratch = np.array(matrix, dtype=np.uint8, order="C")  # gf_invert_matrix overwrites its input
    inverse = np.zeros((n, n), dtype=np.uint8)
    status = library().gf_invert_matrix(address(scratch.reshape(-1)), address(inverse.reshape(-1)), n)
    return inverse if status == 0 else None


def init_tables(coefficients: np.ndarray) -> np.ndarray:
    """ISA-L's expanded tables for a ``rows x k`` coefficient matrix (what :func:`encode` takes)."""
    rows, k = coefficients.shape
    matrix = np.ascontiguousarray(coefficients, dtype=np.uint8)
    tables = np.zeros(32 * k * rows, dtype=np.uint8)
    library().ec_init_tables(k, rows, address(matrix.reshape(-1)), address(tables))
    tables.flags.writeable = False
    return tables


class Pointers:
    """A C array of pointers into fixed buffers, re-aimed at an offset for each chunk of a pass."""

    def __init__(self, buffers: Sequence[np.ndarray]) -> None:
        self.buffers = list(buffers)  # keeps them alive while C holds their addresses
        self.bases = [address(b) for b in self.buffers]
        self.array = (ctypes.c_void_p * max(1, len(self.bases)))(*self.bases)

    def at(self, offset: int) -> ctypes.Array:
        self.array[: len(self.bases)] = [b + offset for b in self.bases]
        return self.array


def encode(tables: np.ndarray, length: int, sources: ctypes.Array, k: int, outputs: ctypes.Array, rows: int) -> None:
    """``rows`` outputs of ``length`` bytes from ``k`` sources (pointer arrays, see :class:`Pointers`)."""
    if length > 0:
        library().ec_encode_data(length, k, rows, tables.ctypes.data, sources, outputs)
