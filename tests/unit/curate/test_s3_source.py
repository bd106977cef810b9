"""An s3:// source read through the object store, against a moto S3 server on 127.0.0.1."""

import gzip
import json

import pytest

from components.common.artifacts import file_digest
from components.common.config import load_config
from components.common.shards import read_manifest
from components.curate.run import curate

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")


@pytest.fixture
def s3_store(monkeypatch):
    from components.common.storage import S3Store

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    host, port = server.get_host_and_port()
    try:
        yield S3Store(f"{host}:{port}", secure=False)
    finally:
        server.stop()


def test_s3_prefix_is_curated_through_the_store(tmp_path, s3_store):
    texts = [f"Record {i}: a sentence long enough to pass the length filter." for i in range(40)]
    body = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts)
    # moto keeps one in-memory S3 per process: a bucket of its own keeps these objects out of other tests' listings.
    s3_store.write_bytes("s3://curate-raw/corpus/part-0.jsonl.gz", gzip.compress(body))
    s3_store.write_bytes("s3://curate-raw/corpus/part-1.txt", b"\n\n".join(t.encode() for t in texts[:5]))
    # Records differ only in a number, which MinHash normalizes away: near-dedup and quality are off here.
    off = ["curate.near_dedup=false", "curate.gopher_quality=false", "curate.gopher_repetition=false"]
    cfg = load_config("tiny", [f"run.home={tmp_path}", "tokenizer.vocab_size=300", "curate.expectations=false", *off])
    summary = curate(cfg, source="s3://curate-raw/corpus", out_dir=tmp_path / "out", store=s3_store)
    m = summary["metrics"]
    assert (m["files"], m["records_read"], m["records_kept"], m["dropped_exact_duplicate"]) == (2, 45, 40, 5)
    files = read_manifest(tmp_path / "out")["files"]
    assert [f["uri"] for f in files] == ["s3://curate-raw/corpus/part-0.jsonl.gz", "s3://curate-raw/corpus/part-1.txt"]
    s3_store.download_file(files[0]["uri"], tmp_path / "check.gz")
    assert files[0]["sha256"] == file_digest(tmp_path / "check.gz")
