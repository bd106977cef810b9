"""charts/lmforge/files/create_buckets.py, the chart's bucket Job, run for real against an S3
server on 127.0.0.1 (moto), as the Job runs it: a separate process with the keys in its env."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

from minio import Minio

from .k8s_checks import CHART

SCRIPT = CHART / "files" / "create_buckets.py"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def keys() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
    }


def test_creates_missing_buckets_and_leaves_existing_ones(s3_server):
    client = Minio(
        s3_server, access_key=keys()["AWS_ACCESS_KEY_ID"], secret_key=keys()["AWS_SECRET_ACCESS_KEY"], secure=False
    )
    client.make_bucket("lmforge-existing")
    client.put_object("lmforge-existing", "keep.txt", io.BytesIO(b"x"), 1)

    first = run_script("--endpoint", s3_server, "lmforge-new", "lmforge-existing", env=keys())
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["bucket lmforge-new: created", "bucket lmforge-existing: exists"]
    assert client.bucket_exists("lmforge-new")
    assert [o.object_name for o in client.list_objects("lmforge-existing")] == ["keep.txt"]

    again = run_script("--endpoint", s3_server, "lmforge-new", env=keys())
    assert again.returncode == 0 and again.stdout.strip() == "bucket lmforge-new: exists"


def test_gives_up_with_a_clear_message_when_the_endpoint_never_answers():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake_keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    result = run_script("--endpoint", f"127.0.0.1:{port}", "--wait-seconds", "0.5", "lmforge", env=fake_keys)
    assert result.returncode != 0
    assert f"127.0.0.1:{port} did not answer within" in result.stderr


def test_refuses_to_start_without_credentials_in_the_environment():
    result = run_script("--endpoint", "127.0.0.1:9", "lmforge")
    assert result.returncode != 0
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY not set" in result.stderr


def test_pipeline_policy_allows_s3_on_the_lmforge_buckets_and_nothing_else():
    import importlib.util

    spec = importlib.util.spec_from_file_location("create_buckets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (statement,) = module.pipeline_policy(["lmforge", "lmforge-data"])["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == ["s3:*"]
    assert sorted(statement["Resource"]) == [
        "arn:aws:s3:::lmforge", "arn:aws:s3:::lmforge-data", "arn:aws:s3:::lmforge-data/*", "arn:aws:s3:::lmforge/*"]  # fmt: skip
