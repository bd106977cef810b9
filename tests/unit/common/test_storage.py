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


def test_read_range_returns_exactly_the_bytes_asked_for(store_and_root):
    store, root = store_and_root
    data = bytes(range(256)) * 40
    store.write_bytes(join(root, "tokens.bin"), data)
    assert store.read_range(join(root, "tokens.bin"), 1000, 2345) == data[1000:3345]
    assert store.read_range(join(root, "tokens.bin"), len(data) - 7, 7) == data[-7:]


def test_read_range_past_the_end_is_an_error_giving_the_size(store_and_root):
    store, root = store_and_root
    store.write_bytes(join(root, "short.bin"), b"0123456789")
    with pytest.raises(StorageError, match=r"bytes 8\.\.13 of .*short.bin: the object has 10 bytes"):
        store.read_range(join(root, "short.bin"), 8, 5)


def test_read_range_starting_past_the_end_is_an_error(store_and_root):
    store, root = store_and_root
    store.write_bytes(join(root, "short.bin"), b"0123456789")
    with pytest.raises(StorageError, match="the object has 10 bytes"):
        store.read_range(join(root, "short.bin"), 20, 5)


def test_read_range_of_a_missing_object_names_the_uri(store_and_root):
    store, root = store_and_root
    with pytest.raises(StorageError, match="no object at .*absent.bin"):
        store.read_range(join(root, "absent.bin"), 0, 4)


def test_size_is_the_object_length(store_and_root):
    store, root = store_and_root
    store.write_bytes(join(root, "s.bin"), b"x" * 12345)
    assert store.size(join(root, "s.bin")) == 12345


def test_size_of_a_missing_object_names_the_uri(store_and_root):
    store, root = store_and_root
    with pytest.raises(StorageError, match="no object at .*absent.bin"):
        store.size(join(root, "absent.bin"))


def test_failed_download_leaves_nothing_behind(store_and_root, tmp_path):
    store, root = store_and_root
    dest = tmp_path / "dl"
    with pytest.raises(StorageError, match="no object at"):
        store.download_file(join(root, "absent.bin"), dest / "absent.bin")
    assert list(dest.iterdir()) == []


def test_download_replaces_an_earlier_copy(store_and_root, tmp_path):
    store, root = store_and_root
    store.write_bytes(join(root, "m.bin"), b"new bytes")
    (tmp_path / "m.bin").write_bytes(b"an older, longer copy of the object")
    store.download_file(join(root, "m.bin"), tmp_path / "m.bin")
    assert (tmp_path / "m.bin").read_bytes() == b"new bytes"


def test_store_options_carry_the_s3_settings_and_retry_budget(make_config, s3_server):
    from components.common.artifacts import open_run_store, store_options

    cfg = make_config(
        "storage.uri=s3://lmforge-test/run",
        f"storage.s3_endpoint={s3_server}",
        "storage.s3_secure=false",
        "storage.s3_max_attempts=3",
        "storage.s3_backoff_seconds=0.25",
        "storage.s3_timeout_seconds=7",
    )
    assert store_options(cfg) == {
        "s3_endpoint": s3_server,
        "s3_secure": False,
        "s3_region": "us-east-1",
        "max_attempts": 3,
        "backoff_seconds": 0.25,
        "timeout_seconds": 7.0,
    }
    store = open_run_store(cfg)
    assert (store.max_attempts, store.backoff_seconds) == (3, 0.25)


def test_directory_markers_written_by_other_s3_clients_are_not_objects(s3_server, tmp_path):
    # pyarrow (and so Ray Train's checkpoint upload) leaves empty 'dir/' keys; they hold no data.
    from pyarrow import fs

    from components.common.storage import s3_filesystem

    store = open_store("s3://x", s3_endpoint=s3_server, s3_secure=False)
    root = f"s3://lmforge-test/{tmp_path.name}"
    store.write_text(join(root, "ckpt/a.txt"), "a")
    arrow = s3_filesystem(
        s3_endpoint=s3_server, s3_secure=False, s3_region="us-east-1", max_attempts=1, timeout_seconds=10
    )
    arrow.create_dir(f"lmforge-test/{tmp_path.name}/ckpt/empty", recursive=False)
    assert arrow.get_file_info(f"lmforge-test/{tmp_path.name}/ckpt/empty").type == fs.FileType.Directory
    assert store.list(join(root, "ckpt")) == [join(root, "ckpt/a.txt")]
    assert sorted(p.name for p in store.download_dir(join(root, "ckpt"), tmp_path / "dl").iterdir()) == ["a.txt"]
