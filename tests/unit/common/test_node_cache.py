"""The per-node cache against the moto S3 server, reached through tests/flaky_proxy.py so the
requests each process sends can be counted: several processes asking at once download once, a
checksum mismatch downloads again then fails, and a process killed half-way leaves nothing reusable."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from components.common.errors import DataError, StorageError
from components.common.node_cache import cached_object, cached_prefix
from components.common.storage import open_store
from tests.flaky_proxy import flaky_proxy

BUCKET = "lmforge-cache"
PROCESSES = 4


def s3(endpoint: str):
    return open_store("s3://x", s3_endpoint=endpoint, s3_secure=False, backoff_seconds=0.01)


def gets(proxy, path: str) -> int:
    return proxy.counts.requests.count(f"GET /{BUCKET}/{path}")


@pytest.fixture(scope="module")
def model(s3_server):
    """A small 'model' prefix in S3: two weight files and a config."""
    files = {"weights-0.bin": os.urandom(400_000), "weights-1.bin": os.urandom(300_000), "config.json": b"{}"}
    store = s3(s3_server)
    for name, data in files.items():
        store.write_bytes(f"s3://{BUCKET}/model/{name}", data)
    return files


def fetch_in_child(endpoint: str, cache_root: str, what: str, uri: str, barrier, results) -> None:
    """Runs in a child process with a store of its own: wait for the others, then ask the cache."""
    store = s3(endpoint)
    barrier.wait()
    fetch = cached_object if what == "object" else cached_prefix
    results.put(str(fetch(store, uri, cache_root)))


def run_processes(endpoint: str, cache_root: Path, what: str, uri: str) -> list[str]:
    """``PROCESSES`` processes ask for ``uri`` at the same moment; their answers.

    Forked rather than spawned: a spawned child re-imports pytest and this module (seconds each on a
    busy 2-core machine), and the cache shares nothing between processes but files and their locks,
    none held at the fork.
    """
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=fetch_in_child, args=(endpoint, str(cache_root), what, uri, barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    return [results.get(timeout=5) for _ in procs]


def test_object_is_downloaded_once_and_reused(s3_server, model, tmp_path):
    with flaky_proxy(s3_server) as proxy:
        first = cached_object(s3(proxy.address), f"s3://{BUCKET}/model/weights-0.bin", tmp_path)
        again = cached_object(s3(proxy.address), f"s3://{BUCKET}/model/weights-0.bin", tmp_path)
    assert first == again and first.read_bytes() == model["weights-0.bin"]
    assert first.name == "weights-0.bin"
    assert gets(proxy, "model/weights-0.bin") == 1


def test_processes_asking_at_once_download_an_object_once(s3_server, model, tmp_path):
    # Every answer is held back 0.3 s, so the others ask while the first download is under way.
    with flaky_proxy(s3_server, delay_every=1, delay_seconds=0.3) as proxy:
        paths = run_processes(proxy.address, tmp_path, "object", f"s3://{BUCKET}/model/weights-1.bin")
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == model["weights-1.bin"]
    assert gets(proxy, "model/weights-1.bin") == 1


def test_processes_asking_at_once_download_a_prefix_once(s3_server, model, tmp_path):
    with flaky_proxy(s3_server, delay_every=1, delay_seconds=0.3) as proxy:
        paths = run_processes(proxy.address, tmp_path, "prefix", f"s3://{BUCKET}/model")
    assert len(set(paths)) == 1
    root = Path(paths[0])
    assert {p.name: p.read_bytes() for p in root.iterdir()} == model
    assert all(gets(proxy, f"model/{name}") == 1 for name in model)
    assert sum(r.startswith(f"GET /{BUCKET}?") for r in proxy.counts.requests) == 1  # one listing


def test_object_matching_its_sha256_is_kept(s3_server, model, tmp_path):
    sha = hashlib.sha256(model["config.json"]).hexdigest()
    path = cached_object(s3(s3_server), f"s3://{BUCKET}/model/config.json", tmp_path, sha256=sha)
    assert path.read_bytes() == model["config.json"]


def test_sha256_mismatch_downloads_again_then_fails_naming_the_object(s3_server, model, tmp_path):
    with (
        flaky_proxy(s3_server) as proxy,
        pytest.raises(DataError, match=f"s3://{BUCKET}/model/config.json: sha256 is .* expected 00ff"),
    ):
        cached_object(s3(proxy.address), f"s3://{BUCKET}/model/config.json", tmp_path, sha256="00ff" * 16)
    assert gets(proxy, "model/config.json") == 2
    assert not list((tmp_path / "objects").rglob("config.json"))


def test_cached_copy_not_matching_the_sha256_is_replaced(s3_server, model, tmp_path):
    uri, sha = f"s3://{BUCKET}/model/weights-0.bin", hashlib.sha256(model["weights-0.bin"]).hexdigest()
    path = cached_object(s3(s3_server), uri, tmp_path)
    path.write_bytes(b"damaged on disk")
    with flaky_proxy(s3_server) as proxy:
        assert cached_object(s3(proxy.address), uri, tmp_path, sha256=sha).read_bytes() == model["weights-0.bin"]
    assert gets(proxy, "model/weights-0.bin") == 1


def test_unverified_copy_is_verified_in_place_when_a_sha256_is_given(s3_server, model, tmp_path):
    uri, sha = f"s3://{BUCKET}/model/weights-0.bin", hashlib.sha256(model["weights-0.bin"]).hexdigest()
    cached_object(s3(s3_server), uri, tmp_path)
    with flaky_proxy(s3_server) as proxy:
        cached_object(s3(proxy.address), uri, tmp_path, sha256=sha)
    assert proxy.counts.requests == []


def prefix_in_child(endpoint: str, cache_root: str) -> None:
    cached_prefix(s3(endpoint), f"s3://{BUCKET}/model", cache_root)


def test_prefix_interrupted_half_way_is_redone_not_reused(s3_server, model, tmp_path):
    # Connection 1 lists the prefix, 2 fetches the first object, 3 stalls: the child is killed there,
    # with one object on disk and the entry's lock held.
    with flaky_proxy(s3_server, delay_every=3, delay_seconds=60) as proxy:
        child = multiprocessing.get_context("fork").Process(target=prefix_in_child, args=(proxy.address, tmp_path))
        child.start()
        deadline = time.monotonic() + 30
        while proxy.counts.delayed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert proxy.counts.delayed == 1
    assert not (tmp_path / "prefixes").exists()  # never marked complete
    assert [p.name for p in (tmp_path / ".state").glob("*.tmp/prefix/*")] == ["config.json"]  # half-way
    root = cached_prefix(s3(s3_server), f"s3://{BUCKET}/model", tmp_path)  # the dead child's lock is free
    assert {p.name: p.read_bytes() for p in root.iterdir()} == model
    assert not list((tmp_path / ".state").glob("*.tmp"))


def test_file_uri_is_used_in_place(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"local weights")
    store = open_store("file:///")
    assert cached_object(store, f"file://{tmp_path}/model/w.bin", tmp_path / "cache") == tmp_path / "model" / "w.bin"
    assert cached_prefix(store, f"file://{tmp_path}/model", tmp_path / "cache") == tmp_path / "model"
    assert not (tmp_path / "cache").exists()


def test_file_uri_not_matching_its_sha256_is_a_data_error(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"local weights")
    with pytest.raises(DataError, match="w.bin: sha256 is"):
        cached_object(open_store("file:///"), f"file://{tmp_path}/w.bin", tmp_path / "cache", sha256="0" * 64)


def test_missing_object_is_a_storage_error_and_caches_nothing(s3_server, model, tmp_path):
    with pytest.raises(StorageError, match=f"no object at s3://{BUCKET}/model/absent.bin"):
        cached_object(s3(s3_server), f"s3://{BUCKET}/model/absent.bin", tmp_path)
    assert not (tmp_path / "objects").exists()
