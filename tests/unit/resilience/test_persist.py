"""The persistent tier: pieces uploaded by keepers are found, verified and decoded from the store."""

from __future__ import annotations

from components.common.storage import open_store
from components.resilience.codec import make_codec
from components.resilience.persist import persisted_versions, prune, read_group, write_pieces
from components.resilience.recovery import group_from_store


def test_persisted_group_decodes_even_with_a_piece_lost_and_one_damaged(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    codec = make_codec("rs", 2, 2)
    payload = bytes(range(251)) * 1000
    pieces = codec.encode(40, 1, payload)
    write_pieces(store, root, pieces[1:])  # piece 0 was on a node that died before uploading
    damaged = [u for u in store.list(root) if "-i001-" in u][0]
    store.write_bytes(damaged, b"\0" + store.read_bytes(damaged)[1:])
    fetched = group_from_store(store, root, 40, 1, codec)
    assert fetched.payload == payload and fetched.decoded
    assert fetched.pieces == 3  # data piece 1 (damaged), then both parity pieces to make up k = 2


def test_an_intact_persisted_group_is_read_from_its_k_data_pieces_alone(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    codec = make_codec("rs", 3, 2)
    payload = bytes(range(256)) * 300
    write_pieces(store, root, codec.encode(8, 0, payload) + codec.encode(8, 1, payload[::-1]))
    read = read_group(store, root, 8, 1, k=3)
    assert [p.id.index for p in read] == [0, 1, 2]
    fetched = group_from_store(store, root, 8, 1, codec)
    assert fetched.payload == payload[::-1] and not fetched.decoded and fetched.pieces == 3


def test_persisted_versions_are_listed_newest_first_and_pruned_to_the_newest(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    codec = make_codec("xor", 2, 1)
    for version in (10, 20, 30, 40):
        write_pieces(store, root, codec.encode(version, 0, b"x" * 100))
    assert persisted_versions(store, root) == [40, 30, 20, 10]
    assert prune(store, root, keep=2) == [20, 10]
    assert persisted_versions(store, root) == [40, 30]
    assert len(read_group(store, root, 40, 0)) == 3
