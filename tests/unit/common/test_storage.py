"""One storage test body, run on the local directory and on a real S3-protocol server (moto)."""

import pytest

from components.common.errors import StorageError
from components.common.storage import join, open_store


@pytest.fixture(params=["local", "s3"])
def store_and_root(request, tmp_path):
    if request.param == "local":
        return open_store("file:///"), f"file://{tmp_path}/store"
    endpoint = request.getfixturevalue("s3_server")
    return open_store("s3://x", s3_endpoint=endpoint, s3_secure=False), f"s3://lmforge-test/{tmp_path.name}"


def test_bytes_round_trip(store_and_root):
    store, root = store_and_root
    store.write_bytes(join(root, "a/b.bin"), b"\x00\x01payload")
    assert store.read_bytes(join(root, "a/b.bin")) == b"\x00\x01payload"


def test_exists_reflects_writes(store_and_root):
    store, root = store_and_root
    assert not store.exists(join(root, "k.txt"))
    store.write_text(join(root, "k.txt"), "v")
    assert store.exists(join(root, "k.txt"))


def test_directory_upload_and_download_keep_layout(store_and_root, tmp_path):
    store, root = store_and_root
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "x.txt").write_text("x")
    (src / "sub" / "y.txt").write_text("y")
    store.upload_dir(src, join(root, "dir"))
    assert [u.removeprefix(join(root, "dir")) for u in store.list(join(root, "dir"))] == ["/sub/y.txt", "/x.txt"]
    dest = store.download_dir(join(root, "dir"), tmp_path / "dest")
    assert (dest / "sub" / "y.txt").read_text() == "y"


def test_missing_object_error_names_the_uri(store_and_root):
    store, root = store_and_root
    with pytest.raises(StorageError, match="no object at .*missing.bin"):
        store.read_bytes(join(root, "missing.bin"))


def test_unsupported_scheme_is_rejected():
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_store("gs://bucket/x")


def test_s3_without_credentials_says_which_variables(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        open_store("s3://bucket", s3_endpoint="127.0.0.1:1", s3_secure=False)


def test_digest_changes_with_content(store_and_root):
    store, root = store_and_root
    store.write_text(join(root, "d.txt"), "one")
    first = store.digest(join(root, "d.txt"))
    store.write_text(join(root, "d.txt"), "two")
    assert store.digest(join(root, "d.txt")) != first
