"""The pyarrow S3 filesystem Ray Train writes checkpoints through (``s3_filesystem``), against the
moto S3 server, directly and through tests/flaky_proxy.py: it reaches the endpoint it is given,
retries a dropped connection, and spends exactly ``max_attempts`` attempts on a dead one."""

from __future__ import annotations

import os

import pytest

from components.common.errors import StorageError
from components.common.storage import open_store, s3_filesystem
from tests.flaky_proxy import flaky_proxy

BUCKET = "lmforge-ckpt"


def filesystem(endpoint: str, **options):
    return s3_filesystem(s3_endpoint=endpoint, s3_secure=False, timeout_seconds=5, **options)


@pytest.fixture(scope="module")
def seeded(s3_server):
    """The bucket exists and holds one object (written with the object store, read back with pyarrow)."""
    open_store("s3://x", s3_endpoint=s3_server, s3_secure=False).write_bytes(f"s3://{BUCKET}/seed.bin", b"seed")
    return s3_server


def test_filesystem_reads_what_the_store_wrote_and_back(seeded):
    fs = filesystem(seeded)
    with fs.open_input_stream(f"{BUCKET}/seed.bin") as f:
        assert f.read() == b"seed"
    with fs.open_output_stream(f"{BUCKET}/ckpt/state.pt") as f:
        f.write(b"checkpoint bytes")
    store = open_store("s3://x", s3_endpoint=seeded, s3_secure=False)
    assert store.read_bytes(f"s3://{BUCKET}/ckpt/state.pt") == b"checkpoint bytes"


def test_filesystem_retries_dropped_connections(seeded):
    data = os.urandom(200_000)
    with flaky_proxy(seeded, drop_every=3) as proxy:
        fs = filesystem(proxy.address, max_attempts=4)
        for i in range(2):
            with fs.open_output_stream(f"{BUCKET}/ckpt/part-{i}.bin") as f:
                f.write(data)
        for i in range(2):
            with fs.open_input_stream(f"{BUCKET}/ckpt/part-{i}.bin") as f:
                assert f.read() == data
    assert proxy.counts.dropped >= 1


def test_filesystem_spends_exactly_max_attempts(seeded):
    with flaky_proxy(seeded, drop_every=1) as proxy, pytest.raises(OSError, match="Connection reset"):
        filesystem(proxy.address, max_attempts=3).open_input_stream(f"{BUCKET}/seed.bin")
    assert proxy.counts.requests == [f"HEAD /{BUCKET}/seed.bin"] * 3


def test_filesystem_without_credentials_names_the_variables(monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        filesystem("127.0.0.1:1")
