"""The direct data plane: pieces and keeper calls over TCP, refusals back as the keeper's own exceptions."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from components.common.errors import DataError
from components.resilience.dataplane import LINK_CALLS, KeeperLinks, KeeperServer, LinkLostError
from components.resilience.handoff_reader import SharedBuffer
from components.resilience.keeper import BusyError, IncompleteVersionError, MemoryKeeper
from components.resilience.piece import Piece, PieceId
from components.resilience.remote import KeeperTimeoutError

MIB = 1 << 20


@pytest.fixture
def keeper_and_links():
    keeper = MemoryKeeper(budget_mb=64, expected_version_bytes=4 * MIB)
    calls = {"prepare": _prepare(keeper), "commit": keeper.commit, "drop": keeper.drop, "pieces": keeper.pieces}
    server = KeeperServer(keeper.put, "127.0.0.1", calls=calls)
    links = KeeperLinks(timeout_s=10)
    yield keeper, server, links
    links.close()
    server.close()


def _prepare(keeper: MemoryKeeper):
    def prepare(version, expected, timeout_s):  # as the keeper actor's (spread.py), on a bare keeper
        keeper.wait_for_pieces(version, expected, timeout_s)
        return keeper.held(version)

    return prepare


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


def test_a_call_over_the_link_returns_the_keepers_answer_with_piece_ids_and_sets_intact(keeper_and_links):
    keeper, server, links = keeper_and_links
    stored = [_piece(8, i, size=4096) for i in range(3)]
    for piece in stored:
        keeper.put(piece)
    expected = {p.id for p in stored}
    answer = links.call(server.address, "prepare", (8, expected, 5.0), node="n" * 8).result(5.0)
    assert answer == [p.id for p in stored]
    assert links.call(server.address, "commit", (8, expected), node="n" * 8).result(5.0) is None
    assert keeper.status().committed == 8 and server.served == 2


def test_a_keepers_refusal_of_a_call_comes_back_as_its_own_exception_and_the_connection_stays_usable(
    keeper_and_links,
):
    keeper, server, links = keeper_and_links
    keeper.put(_piece(9, 0, size=4096))
    missing = {PieceId(9, 0, 0), PieceId(9, 0, 1)}
    with pytest.raises(IncompleteVersionError, match="1 of 2 expected pieces"):
        links.call(server.address, "commit", (9, missing), node="n" * 8).result(5.0)
    assert links.call(server.address, "pieces", (9,), node="n" * 8).result(5.0) == [PieceId(9, 0, 0)]


def test_an_answer_is_read_once_and_every_later_read_sees_the_same(keeper_and_links):
    keeper, server, links = keeper_and_links
    keeper.put(_piece(10, 0, size=4096))
    pending = links.call(server.address, "pieces", (10,), node="n" * 8)
    assert pending.result(5.0) == pending.result(0.0) == [PieceId(10, 0, 0)]


def test_a_keeper_that_does_not_answer_in_time_raises_a_timeout_naming_its_node_and_the_call(keeper_and_links):
    _, server, links = keeper_and_links
    pending = links.call(server.address, "prepare", (11, {PieceId(11, 0, 0)}, 5.0), node="abcdef0123")
    with pytest.raises(KeeperTimeoutError, match="node abcdef01 did not answer prepare"):
        pending.result(0.2)


def test_a_connection_lost_after_the_call_went_out_raises_link_lost(keeper_and_links):
    _, server, links = keeper_and_links
    pending = links.call(server.address, "prepare", (12, {PieceId(12, 0, 0)}, 30.0), node="n" * 8)
    pending._sock.shutdown(socket.SHUT_RD)  # as a keeper's death looks to the caller: end of stream
    with pytest.raises(LinkLostError, match="connection lost during prepare"):
        pending.result(5.0)


def test_a_call_the_server_does_not_offer_is_refused_with_its_name(keeper_and_links):
    _, server, links = keeper_and_links
    with pytest.raises(Exception, match="no call 'kill_node' over the data plane"):
        links.call(server.address, "kill_node", (), node="n" * 8).result(5.0)


def test_arguments_the_wire_format_does_not_know_are_refused_before_anything_is_sent(keeper_and_links):
    _, server, links = keeper_and_links
    with pytest.raises(TypeError, match="cannot carry a ndarray"):
        links.call(server.address, "pieces", (np.zeros(3),), node="n" * 8)


def test_a_shared_buffer_descriptor_survives_the_wire_format():
    from components.resilience.dataplane import decode, encode

    desc = SharedBuffer(pid=12, fd=7, nbytes=4096, token="t-1")
    assert decode(encode([desc, {PieceId(1, 2, 3)}, None, 2.5])) == [desc, {PieceId(1, 2, 3)}, None, 2.5]


def test_the_keeper_actor_serves_exactly_the_link_calls_over_its_data_plane():
    from components.resilience.keeper_actor import NodeKeeper

    assert set(NodeKeeper(1, 1)._link_calls()) == LINK_CALLS


def test_a_hand_off_by_node_id_in_a_new_generation_waits_for_the_handles_a_ray_hand_off_brings():
    from components.resilience.dataplane import HolderUnknownError
    from components.resilience.keeper_actor import NodeKeeper

    keeper = NodeKeeper(1, 1)
    keeper.__dict__["_handles"] = {1: {"node-a": "handle of generation 1"}}  # as a Ray hand-off leaves it
    # a restarted worker group (generation 2) may come with a replaced keeper on node-a: not the old handle
    with pytest.raises(HolderUnknownError, match="no actor handle yet"):
        keeper.store_snapshot_by_node(3, 0, SharedBuffer(1, 2, 3, "t"), ["node-a"], ("xor", 1, 1), 2, 0.0)
