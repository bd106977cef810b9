"""The persistent tier: pieces uploaded by keepers are found, verified and decoded from the store; a
version counts only once its manifests vouch for k pieces of every group."""

from __future__ import annotations

from components.common.storage import open_store
from components.resilience.codec import make_codec
from components.resilience.keeper import MemoryKeeper
from components.resilience.persist import (
    PersistingKeeper,
    VersionShape,
    persisted_versions,
    prune,
    read_group,
    write_manifest,
    write_pieces,
)
from components.resilience.recovery import group_from_store

XOR_2_1 = VersionShape(groups=2, pieces_per_group=3, k=2)


class _PersistingMemoryKeeper(PersistingKeeper, MemoryKeeper):
    """The keeper actor's persistence without its actor (``NodeKeeper`` adds Ray-only parts)."""


def _persist(store, root, version, *, groups=2, drop=(), manifest=True) -> None:
    """Upload every piece of ``version`` (``groups`` xor k=2 m=1 groups) except the (group, index) in
    ``drop``, then its manifest: what keepers do after a commit."""
    codec = make_codec("xor", 2, 1)
    pieces = [
        p for g in range(groups) for p in codec.encode(version, g, bytes([version % 256]) * 100)
        if (p.id.group, p.id.index) not in drop
    ]  # fmt: skip
    write_pieces(store, root, pieces)
    if manifest:
        write_manifest(store, root, version, pieces, VersionShape(groups, 3, 2), "k1")


def test_persisted_group_decodes_even_with_a_piece_lost_and_one_damaged(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    codec = make_codec("rs", 2, 2)
    payload = bytes(range(251)) * 1000
    pieces = codec.encode(40, 1, payload)
    write_pieces(store, root, pieces[1:])  # piece 0 was on a node that died before uploading
    damaged = [u for u in store.list(root) if "-i001-" in u][0]
    original = store.read_bytes(damaged)
    store.write_bytes(damaged, bytes([original[0] ^ 0xFF]) + original[1:])
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
    for version in (10, 20, 30, 40):
        _persist(store, root, version)
    assert persisted_versions(store, root) == [40, 30, 20, 10]
    assert prune(store, root, keep=2) == [20, 10]
    assert persisted_versions(store, root) == [40, 30]
    assert len(read_group(store, root, 40, 0)) == 3


def test_a_version_without_a_manifest_is_not_listed(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    _persist(store, root, 10)
    _persist(store, root, 20, manifest=False)  # every piece uploaded, the manifest not yet
    assert persisted_versions(store, root) == [10]


def test_a_version_with_fewer_than_k_pieces_of_a_group_is_not_complete(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    _persist(store, root, 10, drop={(1, 0), (1, 2)})  # group 1 keeps one piece, k = 2
    _persist(store, root, 20, drop={(1, 2)})  # group 1 keeps k pieces: decodable
    assert persisted_versions(store, root) == [20]


def test_a_group_whose_keepers_never_wrote_a_manifest_leaves_the_version_incomplete(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    pieces = [p for g in range(2) for p in make_codec("xor", 2, 1).encode(10, g, b"x" * 100)]
    write_pieces(store, root, pieces)
    write_manifest(store, root, 10, [p for p in pieces if p.id.group == 0], XOR_2_1, "node-a")
    assert persisted_versions(store, root) == []
    write_manifest(store, root, 10, [p for p in pieces if p.id.group == 1], XOR_2_1, "node-b")
    assert persisted_versions(store, root) == [10]


def test_a_piece_listed_but_deleted_from_the_store_does_not_count(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    _persist(store, root, 10)
    for uri in [u for u in store.list(root) if "/g00000-i00" in u][:2]:
        store.delete(uri)
    assert persisted_versions(store, root) == []


def test_prune_keeps_the_newest_complete_version_behind_newer_incomplete_ones(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    _persist(store, root, 10)
    _persist(store, root, 20, drop={(0, 0), (0, 1)})  # cut off by a failure
    _persist(store, root, 30, manifest=False)  # still uploading
    assert persisted_versions(store, root) == [10]
    assert prune(store, root, keep=1) == []
    assert persisted_versions(store, root) == [10]
    assert {int(u.split("/v")[1][:12]) for u in store.list(root)} == {10, 20, 30}


def test_prune_deletes_incomplete_versions_older_than_the_kept_complete_ones(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    _persist(store, root, 10, manifest=False)  # abandoned
    _persist(store, root, 20)
    _persist(store, root, 30)
    assert prune(store, root, keep=1) == [20, 10]
    assert {int(u.split("/v")[1][:12]) for u in store.list(root)} == {30}


def test_prune_deletes_nothing_while_no_version_is_complete(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    store = open_store(root)
    _persist(store, root, 10, manifest=False)
    assert prune(store, root, keep=1) == []
    assert store.list(root)


def test_a_keeper_writes_its_manifest_after_uploading_its_pieces_of_a_committed_version(tmp_path):
    root = f"file://{tmp_path}/snapshots"
    keeper = _PersistingMemoryKeeper(budget_mb=1, expected_version_bytes=0)
    pieces = make_codec("xor", 1, 1).encode(5, 0, b"y" * 64)
    for p in pieces:
        keeper.put(p)
    assert keeper.persist(5, root, None, VersionShape(1, 2, 1)) is False  # not committed yet
    keeper.commit(5, {p.id for p in pieces})
    assert keeper.persist(5, root, None, VersionShape(1, 2, 1)) is True
    keeper.wait_persisted()
    store = open_store(root)
    assert persisted_versions(store, root) == [5]
    assert sum("manifest-" in u for u in store.list(root)) == 1
