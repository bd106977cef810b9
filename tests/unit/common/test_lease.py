"""The object-store lease (components/common/lease.py) on both backends: a local directory and a real
S3-protocol server (moto, which honours ``If-None-Match: *`` and ``If-Match`` like S3 and MinIO)."""

from __future__ import annotations

import json
import threading

import pytest

from components.common.lease import LeaseTimeout, acquire, held, release
from components.common.storage import open_store


@pytest.fixture(params=["file", "s3"])
def store_and_uri(request, tmp_path):
    if request.param == "file":
        return open_store("file:///"), f"file://{tmp_path}/leases/model.json"
    endpoint = request.getfixturevalue("s3_server")
    store = open_store("s3://lmforge-leases", s3_endpoint=endpoint, s3_secure=False, max_attempts=2)
    return store, f"s3://lmforge-leases/{request.node.name.replace('[', '-').rstrip(']')}/model.json"


def test_s3_conditional_create_refuses_an_existing_object(s3_server):
    store = open_store("s3://lmforge-leases", s3_endpoint=s3_server, s3_secure=False)
    uri = "s3://lmforge-leases/conditional/object"
    assert store.create_exclusive(uri, b"first") is not None
    assert store.create_exclusive(uri, b"second") is None
    assert store.read_bytes(uri) == b"first"


def test_only_one_of_two_concurrent_takers_holds_the_lease(store_and_uri):
    store, uri = store_and_uri
    barrier, won, lost = threading.Barrier(2), [], []

    def take(name: str) -> None:
        barrier.wait()
        try:
            won.append(acquire(store, uri, ttl_seconds=60, wait_seconds=0, holder=name))
        except LeaseTimeout as e:
            lost.append(str(e))

    threads = [threading.Thread(target=take, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 1
    assert f"held by {won[0].holder}" in lost[0] and "wait_seconds" in lost[0]


def test_a_released_lease_can_be_taken_again(store_and_uri):
    store, uri = store_and_uri
    with held(store, uri, ttl_seconds=60, wait_seconds=0, holder="first"):
        pass
    lease = acquire(store, uri, ttl_seconds=60, wait_seconds=0, holder="second")
    assert json.loads(store.read_bytes(uri))["holder"] == "second"
    assert release(store, lease)


def test_an_expired_lease_is_broken_and_its_late_release_leaves_the_successor_alone(store_and_uri):
    store, uri = store_and_uri
    dead = acquire(store, uri, ttl_seconds=0.01, wait_seconds=0, holder="crashed")
    successor = acquire(store, uri, ttl_seconds=60, wait_seconds=5, holder="successor", poll_seconds=0.02)
    assert not release(store, dead)
    assert json.loads(store.read_bytes(uri))["holder"] == "successor"
    assert release(store, successor)
