"""Where Ray Train keeps checkpoints: ``ray_storage`` maps a store URI to RunConfig's
``storage_path`` and filesystem (built by ``components.common.storage.s3_filesystem``)."""

from __future__ import annotations

import pytest

from components.common.errors import StorageError
from components.training.driver import ray_storage


def test_s3_checkpoint_uri_maps_to_a_pyarrow_filesystem(make_config, monkeypatch):
    from pyarrow.fs import S3FileSystem

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = make_config("storage.s3_endpoint=127.0.0.1:9000", "storage.s3_secure=false")
    path, fs = ray_storage(cfg, "s3://lmforge/checkpoints/abc")
    assert path == "lmforge/checkpoints/abc" and isinstance(fs, S3FileSystem)
    assert ray_storage(cfg, "file:///tmp/x/ckpt") == ("/tmp/x/ckpt", None)


def test_checkpoint_filesystem_writes_to_the_configured_endpoint(make_config, s3_server):
    cfg = make_config(f"storage.s3_endpoint={s3_server}", "storage.s3_secure=false")
    path, fs = ray_storage(cfg, "s3://lmforge-ray/checkpoints/abc")
    fs.create_dir(path)
    with fs.open_output_stream(f"{path}/checkpoint_000001/state.bin") as f:
        f.write(b"weights")
    with fs.open_input_stream(f"{path}/checkpoint_000001/state.bin") as f:
        assert f.read() == b"weights"


def test_unknown_checkpoint_scheme_is_a_storage_error(make_config):
    with pytest.raises(StorageError, match="gs://b/x"):
        ray_storage(make_config(), "gs://b/x")


def test_s3_checkpoints_without_credentials_name_the_uri_and_variables(make_config, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(StorageError, match="checkpoints at s3://b/x: .*AWS_ACCESS_KEY_ID"):
        ray_storage(make_config(), "s3://b/x")
