"""Erasure codecs: every loss pattern a scheme promises to survive decodes to the original bytes."""

from __future__ import annotations

import dataclasses
import itertools
import pickle
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from components.common.errors import ConfigError, RecoveryError
from components.resilience import isal
from components.resilience.codec import ReedSolomonCodec, XorCodec, make_codec
from components.resilience.piece import Piece, PieceId
from components.resilience.xor import xor_into

SCHEMES = [("xor", 2, 1), ("xor", 3, 1), ("xor", 4, 1), ("rs", 1, 2), ("rs", 2, 2), ("rs", 4, 2), ("rs", 3, 5)]
# sizes around every multiple of k that matters, plus random ones (seeded: failures reproduce)
SIZES = [0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 4095, 4097, *random.Random(7).sample(range(10, 50_000), 4)]


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def flip_byte(piece, offset: int = 0):
    data = bytearray(piece.data)
    data[offset] ^= 0xFF
    return dataclasses.replace(piece, data=bytes(data))


@pytest.mark.parametrize(("scheme", "k", "m"), SCHEMES, ids=[f"{s}-k{k}-m{m}" for s, k, m in SCHEMES])
def test_every_loss_of_up_to_m_pieces_round_trips(scheme, k, m):
    codec = make_codec(scheme, k, m)
    for size in SIZES:
        data = random_bytes(size, seed=size)
        pieces = codec.encode(5, 1, data)
        assert len(pieces) == k + m
        assert [p.id.index for p in pieces] == list(range(k + m))
        assert len({len(p.data) for p in pieces}) == 1, "pieces must be equal-size"
        assert all(p.payload_size == size and p.is_intact() for p in pieces)
        for lost_count in range(m + 1):
            for lost in itertools.combinations(range(k + m), lost_count):
                kept = [p for p in pieces if p.id.index not in lost]
                assert codec.decode(kept) == data, f"size {size}, lost {lost}"


@pytest.mark.parametrize("scheme", ["xor", "rs"])
def test_encode_accepts_memoryview_and_numpy_buffers(scheme):
    codec = make_codec(scheme, 3, 1 if scheme == "xor" else 2)
    array = np.arange(1001, dtype=np.float32)
    pieces = codec.encode(0, 0, memoryview(array))
    assert pieces[0].payload_size == array.nbytes
    assert codec.decode(pieces[1:]) == array.tobytes()
    assert codec.decode(codec.encode(0, 0, array)) == array.tobytes()


@pytest.mark.parametrize(("scheme", "k", "m"), [("xor", 3, 1), ("rs", 4, 2)])
def test_corrupted_piece_fails_its_checksum_and_is_treated_as_lost(scheme, k, m):
    codec = make_codec(scheme, k, m)
    data = random_bytes(10_001)
    pieces = codec.encode(2, 0, data)
    corrupted = flip_byte(pieces[0], offset=len(pieces[0].data) // 2)
    assert not corrupted.is_intact()
    # the corrupted data piece plus m - 1 more lost: still exactly k intact pieces
    kept = [corrupted, *pieces[m:]]
    assert codec.decode(kept) == data


@pytest.mark.parametrize(("scheme", "k", "m"), [("xor", 3, 1), ("rs", 4, 2)])
def test_too_many_lost_pieces_raise_recovery_error_naming_the_snapshot(scheme, k, m):
    codec = make_codec(scheme, k, m)
    pieces = codec.encode(9, 3, random_bytes(999))
    kept = pieces[m + 1 :]
    with pytest.raises(RecoveryError, match=rf"version 9, group 3: {k - 1} intact pieces.*k={k}"):
        codec.decode(kept)


def test_corruption_beyond_m_raises_recovery_error_listing_failed_checksums():
    codec = make_codec("rs", 2, 2)
    pieces = codec.encode(1, 0, random_bytes(500))
    damaged = [flip_byte(p) for p in pieces[:3]] + pieces[3:]
    with pytest.raises(RecoveryError, match=r"1 intact pieces.*failed checksum: \[0, 1, 2\]"):
        codec.decode(damaged)


def test_a_good_duplicate_replaces_a_corrupted_copy_of_the_same_piece():
    codec = make_codec("xor", 2, 1)
    data = random_bytes(77)
    pieces = codec.encode(1, 0, data)
    assert codec.decode([flip_byte(pieces[0]), pieces[0], pieces[2]]) == data


def test_pieces_of_different_versions_are_refused():
    codec = make_codec("xor", 2, 1)
    old, new = codec.encode(1, 0, b"old state"), codec.encode(2, 0, b"new state")
    with pytest.raises(RecoveryError, match="version 2, group 0 was handed to the same decode"):
        codec.decode([old[0], new[1]])


def test_no_pieces_at_all_raise_recovery_error():
    with pytest.raises(RecoveryError, match="no pieces"):
        make_codec("rs", 2, 2).decode([])


def test_xor_codec_refuses_more_than_one_parity_piece():
    with pytest.raises(ConfigError, match="resilience.m"):
        make_codec("xor", 3, 2)


def test_unknown_scheme_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"resilience.scheme.*'lrc'.*xor, rs"):
        make_codec("lrc", 2, 1)


def test_reed_solomon_uses_cauchy_above_four_parity_pieces():
    assert ReedSolomonCodec(4, 4).backend == "isa-l vandermonde"
    assert ReedSolomonCodec(3, 5).backend == "isa-l cauchy"


def _singular_patterns(matrix: np.ndarray, k: int) -> int:
    return sum(isal.invert(matrix[list(rows)]) is None for rows in itertools.combinations(range(len(matrix)), k))


def test_vandermonde_decodes_every_loss_up_to_four_parity_pieces_and_cauchy_above():
    """Why the codec switches matrices at m = 4: checked on the ISA-L it loads, not taken on trust."""
    for k in range(1, 9):
        for m in range(1, isal.VANDERMONDE_MAX_M + 1):
            assert _singular_patterns(isal.encode_matrix(k, m), k) == 0, f"vandermonde k={k} m={m}"
    vandermonde = np.zeros((11, 6), dtype=np.uint8)
    isal.library().gf_gen_rs_matrix(isal.address(vandermonde.reshape(-1)), 11, 6)
    assert _singular_patterns(vandermonde, 6) > 0, "ISA-L's Vandermonde matrix has singular k=6 m=5 patterns"
    assert _singular_patterns(isal.encode_matrix(6, 5), 6) == 0


@pytest.mark.parametrize(("k", "m"), [(4, 2), (3, 5)], ids=["k4-m2-vandermonde", "k3-m5-cauchy"])
def test_reed_solomon_decode_into_rebuilds_every_loss_of_m_pieces(k, m):
    codec = ReedSolomonCodec(k, m)
    data = random_bytes(1_000_003)  # several chunks of a pass, not a multiple of k
    pieces = codec.encode(3, 2, data)
    patterns = list(itertools.combinations(range(k + m), m))
    assert len(patterns) == (15 if (k, m) == (4, 2) else 56)
    for lost in patterns:
        out = np.empty(len(data), dtype=np.uint8)
        assert bytes(codec.decode_into([p for p in pieces if p.id.index not in lost], out)) == data, lost


def test_reed_solomon_pieces_are_the_payload_slices_the_last_one_zero_padded():
    codec = ReedSolomonCodec(4, 2)
    data = random_bytes(4 * 1000 + 3)  # not a multiple of k: pieces of 1001 bytes, the last holds 1000
    pieces = codec.encode(1, 0, data)
    assert {len(p.data) for p in pieces} == {codec.piece_size(len(data))} == {1001}
    assert b"".join(bytes(p.data) for p in pieces[:4]) == data + b"\0"
    assert pieces[0].payload_size == len(data)
    assert codec.decode(pieces[2:]) == data


def test_reed_solomon_encode_without_copy_hands_whole_data_pieces_on_as_views_of_the_buffer():
    codec = ReedSolomonCodec(3, 2)
    buffer = np.frombuffer(random_bytes(3 * 4096 - 5), dtype=np.uint8).copy()  # the third piece is short
    pieces = codec.encode(1, 0, buffer, copy=False)
    assert [np.shares_memory(p.data, buffer) for p in pieces] == [True, True, False, False, False]
    assert pieces[0].is_view() and all(p.is_intact() for p in pieces)
    assert codec.decode(pieces[2:]) == buffer.tobytes()
    some = codec.encode(1, 0, buffer, copy={1})
    assert [np.shares_memory(p.data, buffer) for p in some] == [True, False, False, False, False]
    assert [p.checksum for p in some] == [p.checksum for p in pieces]
    assert not any(np.shares_memory(p.data, buffer) for p in codec.encode(1, 0, buffer))


def test_reed_solomon_refuses_pieces_of_the_earlier_pyeclib_codec_naming_the_version():
    """Persisted pieces do not record the scheme: a pyeclib fragment (80-byte header) is told by its size."""
    ec_iface = pytest.importorskip("pyeclib.ec_iface")
    data = random_bytes(10_000)
    fragments = ec_iface.ECDriver(k=4, m=2, ec_type="isa_l_rs_vand").encode(data)
    old = [Piece.make(PieceId(40, 1, i), f, payload_size=len(data)) for i, f in enumerate(fragments)]
    codec = ReedSolomonCodec(4, 2)
    for decode in (codec.decode, lambda pieces: codec.decode_into(pieces, np.empty(len(data), dtype=np.uint8))):
        with pytest.raises(RecoveryError, match=r"version 40, group 1: pieces of 2580 bytes.*makes 2500-byte.*pyeclib"):
            decode(old[2:])


def test_reed_solomon_codes_on_several_threads_at_once():
    """ISA-L runs without the GIL (ctypes releases it): keepers encode and decode on many threads."""
    codec = ReedSolomonCodec(4, 2)
    payloads = [random_bytes(300_001 + i, seed=i) for i in range(8)]

    def round_trip(data: bytes) -> bytes:
        pieces = codec.encode(1, 0, data)
        return bytes(codec.decode_into(pieces[2:], np.empty(len(data), dtype=np.uint8)))

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(round_trip, payloads)) == payloads


def test_decode_into_checks_pieces_one_by_one_when_one_is_cut_short():
    codec = ReedSolomonCodec(2, 2)
    data = random_bytes(10_000)
    pieces = codec.encode(1, 0, data)
    cut = dataclasses.replace(pieces[0], data=pieces[0].data[:100])  # an upload cut off by a crash
    assert bytes(codec.decode_into([cut, *pieces[1:]], np.empty(len(data), dtype=np.uint8))) == data


def test_reed_solomon_without_isa_l_is_a_config_error_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(isal, "candidates", lambda: [str(tmp_path / "libisal.so.2")])
    isal.library.cache_clear()
    isal.encode_matrix.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"resilience.scheme=rs needs Intel ISA-L.*reinstall pyeclib.*scheme=xor"):
            ReedSolomonCodec(4, 2)
    finally:
        isal.library.cache_clear()
        isal.encode_matrix.cache_clear()


def test_reed_solomon_codec_survives_pickling():
    codec = pickle.loads(pickle.dumps(make_codec("rs", 4, 2)))
    data = random_bytes(1234)
    assert codec.decode(codec.encode(0, 0, data)[2:]) == data


def test_xor_pieces_are_padded_to_whole_words():
    codec = XorCodec(3)
    assert [codec.piece_size(n) for n in (0, 1, 24, 25)] == [0, 8, 8, 16]


def test_xor_into_matches_python_xor_across_chunk_boundaries():
    size = (256 << 10) * 2 + 24  # more than two chunks, not a multiple of the chunk
    sources = [random_bytes(size, seed=s) for s in range(3)]
    out = np.empty(size, dtype=np.uint8)
    xor_into(out, sources)
    expected = np.bitwise_xor.reduce([np.frombuffer(s, np.uint8) for s in sources])
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(("scheme", "k", "m"), [("xor", 3, 1), ("rs", 3, 2)])
def test_decode_into_a_preallocated_buffer_matches_decode_for_every_loss(scheme, k, m):
    codec = make_codec(scheme, k, m)
    for size in (1, 23, 24, 25, 4097):
        data = random_bytes(size, seed=size)
        pieces = codec.encode(1, 0, data)
        for lost in itertools.combinations(range(k + m), m):
            out = np.full(size + 5, 0xAB, dtype=np.uint8)  # larger than the payload: the tail is untouched
            view = codec.decode_into([p for p in pieces if p.id.index not in lost], out)
            assert bytes(view) == data, f"size {size}, lost {lost}"
            assert (out[size:] == 0xAB).all()


def test_decode_into_refuses_a_buffer_smaller_than_the_payload():
    codec = make_codec("xor", 2, 1)
    with pytest.raises(ValueError, match=">= 10 bytes"):
        codec.decode_into(codec.encode(1, 0, random_bytes(10)), np.empty(9, dtype=np.uint8))


def test_xor_encode_without_copy_hands_whole_data_pieces_on_as_views_of_the_buffer():
    codec = XorCodec(2)
    buffer = np.frombuffer(random_bytes(40), dtype=np.uint8).copy()  # pieces of 24 bytes: the second is short
    pieces = codec.encode(1, 0, buffer, copy=False)
    assert np.shares_memory(pieces[0].data, buffer) and pieces[0].is_view()
    assert not np.shares_memory(pieces[1].data, buffer), "the short tail piece is padded, so it is a copy"
    owned = pieces[0].owned()
    assert not np.shares_memory(owned.data, buffer) and owned.is_intact()
    copied = codec.encode(1, 0, buffer)
    assert not any(np.shares_memory(p.data, buffer) for p in copied)
    assert codec.decode(copied[1:]) == buffer.tobytes()


def test_xor_encode_copies_only_the_data_pieces_it_is_told_to():
    codec = XorCodec(3)
    buffer = np.frombuffer(random_bytes(48), dtype=np.uint8).copy()  # three whole pieces of 16 bytes
    pieces = codec.encode(1, 0, buffer, copy={1})
    assert [np.shares_memory(p.data, buffer) for p in pieces] == [True, False, True, False]
    assert all(p.is_intact() for p in pieces) and codec.decode(pieces[1:]) == buffer.tobytes()


def test_reed_solomon_encodes_a_numpy_view_like_the_same_bytes():
    codec = make_codec("rs", 4, 2)
    data = random_bytes(100_003)
    view = np.frombuffer(data, dtype=np.uint8)[3:]
    assert [bytes(p.data) for p in codec.encode(1, 0, view)] == [bytes(p.data) for p in codec.encode(1, 0, data[3:])]


@pytest.mark.parametrize(("scheme", "k", "m"), [("xor", 3, 1), ("rs", 3, 2)])
def test_decode_into_decodes_around_a_corrupted_piece_among_the_first_k(scheme, k, m):
    codec = make_codec(scheme, k, m)
    data = random_bytes(100_001)
    pieces = codec.encode(1, 0, data)
    damaged = [flip_byte(pieces[0], offset=len(pieces[0].data) // 2), *pieces[1:]]
    assert bytes(codec.decode_into(damaged, np.empty(len(data), dtype=np.uint8))) == data
    too_many = [flip_byte(p, offset=len(p.data) // 2) for p in pieces[: m + 1]] + pieces[m + 1 :]
    with pytest.raises(RecoveryError, match="failed checksum"):
        codec.decode_into(too_many, np.empty(len(data), dtype=np.uint8))
