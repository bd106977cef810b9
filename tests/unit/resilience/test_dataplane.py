"""The direct data plane between keepers: pieces over TCP, refusals back as the keeper's own exceptions."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from components.common.errors import DataError
from components.resilience.dataplane import PieceLinks, PieceServer
from components.resilience.keeper import BusyError, MemoryKeeper
from components.resilience.piece import Piece, PieceId

MIB = 1 << 20


@pytest.fixture
def keeper_and_links():
    keeper = MemoryKeeper(budget_mb=64, expected_version_bytes=4 * MIB)
    server = PieceServer(keeper.put, "127.0.0.1")
    links = PieceLinks(timeout_s=10)
    yield keeper, server, links
    links.close()
    server.close()


def _piece(version: int, index: int, size: int = 3 * MIB + 5) -> Piece:
    data = np.random.default_rng(index).integers(0, 256, size, dtype=np.uint8)
    return Piece.make(PieceId(version, 0, index), data, payload_size=size - 5)


def test_pieces_sent_to_a_keepers_server_are_stored_intact_with_their_ids_and_sizes(keeper_and_links):
    keeper, server, links = keeper_and_links
    sent = [_piece(7, i) for i in range(2)]
    view = Piece(sent[1].id, sent[1].data[: 2 * MIB], sent[1].checksum, sent[1].payload_size)  # a view, as sent
    view = Piece.make(view.id, view.data, payload_size=view.payload_size)
    assert links.send([(server.address, sent[0], 1, 0.0), (server.address, view, 1, 0.0)]) == [None, None]
    keeper.commit(7, {sent[0].id, view.id})
    for want in (sent[0], view):
        got = keeper.get(want.id)
        assert got.is_intact() and got.payload_size == want.payload_size
        assert bytes(got.data) == bytes(want.data)
    assert server.received == 2


def test_a_busy_keepers_refusal_comes_back_as_busy_error_and_the_connection_stays_usable(keeper_and_links):
    keeper, server, links = keeper_and_links
    keeper.put(_piece(3, 0, size=1024))  # version 3 is being written: a piece of 4 must wait
    [refusal] = links.send([(server.address, _piece(4, 1, size=1024), 1, 0.0)])
    assert isinstance(refusal, BusyError) and "version 3 is still being written" in str(refusal)
    keeper.drop(3)
    assert links.send([(server.address, _piece(4, 1, size=1024), 1, 0.0)]) == [None]


def test_a_piece_damaged_on_the_way_is_refused_as_data_error_and_not_stored(keeper_and_links):
    keeper, server, links = keeper_and_links
    good = _piece(5, 0, size=4096)
    bad = Piece(good.id, good.data.copy(), good.checksum, good.payload_size)
    bad.data[100] ^= 0xFF
    [refusal] = links.send([(server.address, bad, 1, 0.0)])
    assert isinstance(refusal, DataError) and "do not match its checksum" in str(refusal)
    assert keeper.status().pieces == 0


def test_a_connection_without_the_keepers_token_is_closed_and_stores_nothing(keeper_and_links):
    keeper, server, links = keeper_and_links
    host, port, _ = server.address
    with pytest.raises(OSError):
        links.send([((host, port, b"\0" * 16), _piece(6, 0, size=4096), 1, 0.0)])
    assert keeper.status().pieces == 0
    with socket.create_connection((host, port), timeout=5) as raw:  # not even the magic
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\0" * 64)
        try:
            closed = raw.recv(1) == b""
        except ConnectionResetError:  # closed with our bytes unread: the kernel resets instead
            closed = True
        assert closed
    assert keeper.status().pieces == 0
