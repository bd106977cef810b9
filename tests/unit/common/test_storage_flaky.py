"""The S3 store through a flaky network: a TCP proxy on 127.0.0.1 (tests/flaky_proxy.py) in front of
the moto S3 server drops, throttles, cuts and delays chosen connections. Every operation must come
through byte-identical, each injected failure must cost exactly one logged retry, and a spent or
zero budget must fail with a StorageError that says so."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from components.common.errors import StorageError
from components.common.s3_store import BACKOFF_CAP_SECONDS, backoff_delay
from components.common.storage import join, open_store
from tests.flaky_proxy import flaky_proxy

BUCKET = "lmforge-flaky"


@pytest.fixture
def retry_log():
    """WARNING records of the S3 store (its retries), captured on its own logger."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("components.common.s3_store")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def proxied_store(proxy, **options):
    """A store reaching moto only through ``proxy``, with a fast backoff so the test stays short."""
    return open_store("s3://x", s3_endpoint=proxy.address, s3_secure=False, backoff_seconds=0.01, **options)


def direct_store(s3_server):
    return open_store("s3://x", s3_endpoint=s3_server, s3_secure=False)


def make_tree(root):
    """A directory of mixed sizes: 1.5 MB and 300 kB of random bytes, and small files in sub-dirs."""
    files = {
        "model.safetensors": os.urandom(1_500_000),
        "shards/train-00000.bin": os.urandom(300_000),
        "shards/train-00001.bin": os.urandom(2_000),
        "tokenizer/tokenizer.json": b'{"vocab": {}}',
        "config.json": b"{}",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_every_operation_survives_a_flaky_connection_byte_identical(s3_server, tmp_path, retry_log):
    files = make_tree(tmp_path / "src")
    uri = f"s3://{BUCKET}/roundtrip"
    with flaky_proxy(
        s3_server, drop_every=4, throttle_every=7, cut_every=5, cut_after=4096, delay_every=6, delay_seconds=0.2
    ) as proxy:
        store = proxied_store(proxy)
        store.upload_dir(tmp_path / "src", uri)
        listed = store.list(uri)
        store.download_dir(uri, tmp_path / "dst")
        blob = store.read_bytes(join(uri, "model.safetensors"))
        windows = [
            store.read_range(join(uri, "shards/train-00000.bin"), off, 4096) for off in range(0, 300_000, 60_000)
        ]
        size = store.size(join(uri, "model.safetensors"))
        store.write_bytes(join(uri, "extra.bin"), b"late write")
        store.delete(join(uri, "extra.bin"))
        gone = not store.exists(join(uri, "extra.bin"))

    assert listed == sorted(join(uri, name) for name in files)
    assert {
        p.relative_to(tmp_path / "dst").as_posix(): p.read_bytes() for p in (tmp_path / "dst").rglob("*") if p.is_file()
    } == files
    assert blob == files["model.safetensors"] and size == len(blob)
    shard = files["shards/train-00000.bin"]
    assert windows == [shard[off : off + 4096] for off in range(0, 300_000, 60_000)]
    assert gone
    c = proxy.counts
    assert min(c.dropped, c.throttled, c.cut, c.delayed) >= 1, c
    # Every failed request cost exactly one retry, logged: nothing retried below us, nothing unlogged.
    assert len(retry_log) == store.retries == c.failed


def test_retry_warning_names_the_uri_and_the_error(s3_server, retry_log):
    direct_store(s3_server).write_bytes(f"s3://{BUCKET}/named.bin", b"payload")
    with flaky_proxy(s3_server, throttle_every=2) as proxy:
        store = proxied_store(proxy)
        store.read_bytes(f"s3://{BUCKET}/named.bin")  # connection 1: through
        store.read_bytes(f"s3://{BUCKET}/named.bin")  # connection 2: throttled, 3: through
    [record] = retry_log
    assert record.levelno == logging.WARNING
    assert f"s3://{BUCKET}/named.bin" in record.getMessage() and "SlowDown" in record.getMessage()


def test_throttled_head_is_retried(s3_server, retry_log):
    # A HEAD answer has no body, so a 503 reaches the client as a bare status, not as SlowDown XML.
    direct_store(s3_server).write_bytes(f"s3://{BUCKET}/head.bin", b"12345")
    with (
        flaky_proxy(s3_server, throttle_every=1) as proxy,
        pytest.raises(StorageError, match="gave up after 2 attempts.*503"),
    ):
        proxied_store(proxy, max_attempts=2).size(f"s3://{BUCKET}/head.bin")
    assert proxy.counts.requests == [f"HEAD /{BUCKET}/head.bin"] * 2


def test_read_timeout_is_retried(s3_server, retry_log):
    direct_store(s3_server).write_bytes(f"s3://{BUCKET}/slow.bin", b"slow payload")
    with flaky_proxy(s3_server, delay_every=2, delay_seconds=2.0) as proxy:
        store = proxied_store(proxy, timeout_seconds=0.4)
        assert store.read_bytes(f"s3://{BUCKET}/slow.bin") == b"slow payload"  # connection 1
        assert store.read_bytes(f"s3://{BUCKET}/slow.bin") == b"slow payload"  # 2 stalls, 3 answers
    [record] = retry_log
    assert "ReadTimeoutError" in record.getMessage()


def test_spent_budget_says_how_many_attempts_and_the_last_error(s3_server, retry_log):
    with flaky_proxy(s3_server, drop_every=1) as proxy, pytest.raises(StorageError) as failure:
        proxied_store(proxy, max_attempts=3).read_bytes(f"s3://{BUCKET}/any.bin")
    message = str(failure.value)
    assert f"s3://{BUCKET}/any.bin" in message and "gave up after 3 attempts" in message
    assert "storage.s3_max_attempts=3" in message and "Connection" in message
    # Exactly three requests reached the network: no layer below retried on its own.
    assert proxy.counts.connections == 3 and len(retry_log) == 2


def test_budget_of_one_attempt_fails_at_the_first_error(s3_server, retry_log):
    with (
        flaky_proxy(s3_server, drop_every=1) as proxy,
        pytest.raises(StorageError, match=rf"cannot read s3://{BUCKET}/one.bin: gave up after 1 attempt "),
    ):
        proxied_store(proxy, max_attempts=1).read_bytes(f"s3://{BUCKET}/one.bin")
    assert proxy.counts.connections == 1 and retry_log == []


def test_missing_object_fails_at_once_without_retry(s3_server, retry_log):
    direct_store(s3_server).write_bytes(f"s3://{BUCKET}/present.bin", b"x")
    with (
        flaky_proxy(s3_server) as proxy,
        pytest.raises(StorageError, match=f"no object at s3://{BUCKET}/absent.bin"),
    ):
        proxied_store(proxy).read_bytes(f"s3://{BUCKET}/absent.bin")
    assert proxy.counts.requests == [f"GET /{BUCKET}/absent.bin"] and retry_log == []


def test_access_denied_fails_at_once_with_a_hint(s3_server, retry_log):
    with (
        flaky_proxy(s3_server, deny_every=1) as proxy,
        pytest.raises(StorageError, match=rf"cannot read s3://{BUCKET}/secret.bin: .*AccessDenied.*credentials"),
    ):
        proxied_store(proxy).read_bytes(f"s3://{BUCKET}/secret.bin")
    assert proxy.counts.connections == 1 and retry_log == []


def test_refused_connection_is_retried_within_the_budget(retry_log):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = open_store("s3://x", s3_endpoint=f"127.0.0.1:{port}", s3_secure=False, max_attempts=2, backoff_seconds=0.01)
    with pytest.raises(StorageError, match="gave up after 2 attempts.*(refused|NewConnectionError)"):
        store.read_bytes(f"s3://{BUCKET}/any.bin")
    assert len(retry_log) == 1


def test_download_cut_half_way_leaves_no_file(s3_server, tmp_path):
    direct_store(s3_server).write_bytes(f"s3://{BUCKET}/big.bin", os.urandom(200_000))
    with (
        flaky_proxy(s3_server, cut_every=1, cut_after=50_000) as proxy,
        pytest.raises(StorageError, match="gave up after 2 attempts"),
    ):
        proxied_store(proxy, max_attempts=2).download_file(f"s3://{BUCKET}/big.bin", tmp_path / "big.bin")
    assert proxy.counts.cut == 2
    assert list(tmp_path.iterdir()) == []


def test_retry_log_and_errors_hold_no_credentials(s3_server, monkeypatch, retry_log):
    direct_store(s3_server).write_bytes(f"s3://{BUCKET}/cred.bin", b"x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFLAKYPROXYTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "flaky-proxy-secret-value")
    with flaky_proxy(s3_server, throttle_every=1) as proxy, pytest.raises(StorageError) as failure:
        proxied_store(proxy, max_attempts=3).read_bytes(f"s3://{BUCKET}/cred.bin")
    text = "\n".join(r.getMessage() for r in retry_log) + str(failure.value)
    assert len(retry_log) == 2 and "SlowDown" in text
    assert "AKIAFLAKYPROXYTEST" not in text and "flaky-proxy-secret-value" not in text


def test_backoff_starts_at_backoff_seconds_doubles_and_is_capped():
    first = [backoff_delay(1, 0.5) for _ in range(200)]
    third = [backoff_delay(3, 0.5) for _ in range(200)]
    assert min(first) >= 0.25 and max(first) <= 0.5
    assert min(third) >= 1.0 and max(third) <= 2.0
    assert max(backoff_delay(30, 0.5) for _ in range(50)) <= BACKOFF_CAP_SECONDS
