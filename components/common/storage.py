"""Object storage behind a few methods over ``str`` URIs: a local directory or S3/MinIO.

URIs are strings, not ``Path``s, because ``s3://bucket/key`` is not a filesystem path. Both backends
hold the same key layout (``<root>/<kind>/<content-hash>/...``), so a run on a laptop and a run on
the cluster differ only in ``storage.uri``. The public methods check the URI once and add it to
every error; a backend implements only the ``_``-prefixed hooks.

S3 credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, set from
a Kubernetes Secret on the cluster), never from config files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from components.common.errors import StorageError


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a local file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI with exactly one slash between them."""
    out = uri.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


class ObjectStore(ABC):
    """A flat key space addressed by URIs of one scheme."""

    scheme: str

    def exists(self, uri: str) -> bool:
        return self._exists(self._key(uri))

    def read_bytes(self, uri: str) -> bytes:
        key = self._key(uri)
        try:
            return self._read(key)
        except FileNotFoundError as e:
            raise StorageError(f"no object at {uri}") from e
        except OSError as e:
            raise StorageError(f"cannot read {uri}: {e}") from e

    def write_bytes(self, uri: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            self.upload_file(tmp.name, uri)
        finally:
            os.unlink(tmp.name)

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def upload_file(self, path: str | Path, uri: str) -> None:
        try:
            self._upload(Path(path), self._key(uri))
        except OSError as e:
            raise StorageError(f"cannot write {uri} from {path}: {e}") from e

    def download_file(self, uri: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._download(self._key(uri), Path(path))
        except FileNotFoundError as e:
            raise StorageError(f"no object at {uri}") from e
        except OSError as e:
            raise StorageError(f"cannot read {uri} into {path}: {e}") from e

    def digest(self, uri: str) -> str:
        """A content fingerprint of one object: sha256 locally, the ETag on S3 (no download)."""
        try:
            return self._digest(self._key(uri))
        except FileNotFoundError as e:
            raise StorageError(f"no object at {uri}") from e

    def list(self, prefix_uri: str) -> list[str]:
        """URIs of every object under ``prefix_uri`` (recursive), sorted."""
        prefix = self._key(prefix_uri).rstrip("/") + "/"
        return sorted(self._uri(k) for k in self._list(prefix))

    def delete(self, uri: str) -> None:
        """Remove one object; an absent object is not an error (deletes are retried after crashes)."""
        try:
            self._delete(self._key(uri))
        except OSError as e:
            raise StorageError(f"cannot delete {uri}: {e}") from e

    def upload_dir(self, local_dir: str | Path, uri: str) -> None:
        local_dir = Path(local_dir)
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                self.upload_file(path, join(uri, path.relative_to(local_dir).as_posix()))

    def download_dir(self, uri: str, local_dir: str | Path) -> Path:
        local_dir = Path(local_dir)
        base = self._key(uri).rstrip("/") + "/"
        objects = self._list(base)
        if not objects:
            raise StorageError(f"nothing stored under {uri}")
        for key in objects:
            self._download(key, local_dir / key[len(base) :])
        return local_dir

    def local_dir(self, uri: str, cache: str | Path) -> Path:
        """A local directory holding the objects under ``uri`` (no copy when already local)."""
        return self.download_dir(uri, Path(cache))

    def _key(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            raise StorageError(f"{uri!r} is not a {self.scheme}:// URI")
        return (parsed.netloc + parsed.path) if self.scheme == "s3" else parsed.path

    @abstractmethod
    def _uri(self, key: str) -> str: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _read(self, key: str) -> bytes: ...

    @abstractmethod
    def _upload(self, path: Path, key: str) -> None: ...

    @abstractmethod
    def _download(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _digest(self, key: str) -> str: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...


class LocalStore(ObjectStore):
    """``file://`` URIs; writes go through a temporary file and a rename so readers never see half."""

    scheme = "file"

    def _uri(self, key: str) -> str:
        return "file://" + key

    def _exists(self, key: str) -> bool:
        return Path(key).exists()

    def _read(self, key: str) -> bytes:
        return Path(key).read_bytes()

    def _delete(self, key: str) -> None:
        Path(key).unlink(missing_ok=True)

    def _upload(self, path: Path, key: str) -> None:
        dest = Path(key)
        if dest.resolve() == path.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def _download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if Path(key).resolve() != path.resolve():
            shutil.copyfile(key, path)

    def _list(self, prefix: str) -> list[str]:
        root = Path(prefix)
        if not root.is_dir():
            return []
        return [p.as_posix() for p in root.rglob("*") if p.is_file() and ".tmp" not in p.name]

    def _digest(self, key: str) -> str:
        return file_digest(key)

    def local_dir(self, uri: str, cache: str | Path) -> Path:
        path = Path(self._key(uri))
        if not path.is_dir():
            raise StorageError(f"nothing stored under {uri}")
        return path


class S3Store(ObjectStore):
    """``s3://bucket/key`` on MinIO or any S3-compatible endpoint, through the MinIO SDK."""

    scheme = "s3"

    def __init__(self, endpoint: str, *, secure: bool = True, region: str = "us-east-1") -> None:
        from minio import Minio

        access = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise StorageError(
                "s3:// storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment "
                "(on the cluster they come from the lmforge-s3 Secret)"
            )
        endpoint = endpoint or "s3.amazonaws.com"
        self._client = Minio(endpoint, access_key=access, secret_key=secret, secure=secure, region=region)
        self._buckets_seen: set[str] = set()

    def _split(self, key: str) -> tuple[str, str]:
        bucket, _, name = key.partition("/")
        return bucket, name

    def _uri(self, key: str) -> str:
        return "s3://" + key

    def _ensure_bucket(self, bucket: str) -> None:
        if bucket not in self._buckets_seen:
            if not self._client.bucket_exists(bucket):
                self._client.make_bucket(bucket)
            self._buckets_seen.add(bucket)

    def _exists(self, key: str) -> bool:
        from minio.error import S3Error

        bucket, name = self._split(key)
        try:
            self._client.stat_object(bucket, name)
            return True
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return False
            raise StorageError(f"cannot stat s3://{key}: {e}") from e

    def _read(self, key: str) -> bytes:
        from minio.error import S3Error

        bucket, name = self._split(key)
        try:
            resp = self._client.get_object(bucket, name)
        except S3Error as e:
            raise FileNotFoundError(key) from e
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def _upload(self, path: Path, key: str) -> None:
        bucket, name = self._split(key)
        self._ensure_bucket(bucket)
        self._client.fput_object(bucket, name, str(path))

    def _delete(self, key: str) -> None:
        bucket, name = self._split(key)
        self._client.remove_object(bucket, name)  # S3 DELETE of an absent key succeeds

    def _download(self, key: str, path: Path) -> None:
        from minio.error import S3Error

        bucket, name = self._split(key)
        try:
            self._client.fget_object(bucket, name, str(path))
        except S3Error as e:
            raise FileNotFoundError(key) from e

    def _digest(self, key: str) -> str:
        from minio.error import S3Error

        bucket, name = self._split(key)
        try:
            return "etag:" + self._client.stat_object(bucket, name).etag
        except S3Error as e:
            raise FileNotFoundError(key) from e

    def _list(self, prefix: str) -> list[str]:
        from minio.error import S3Error

        bucket, name = self._split(prefix)
        try:
            return [f"{bucket}/{o.object_name}" for o in self._client.list_objects(bucket, prefix=name, recursive=True)]
        except S3Error as e:
            if e.code == "NoSuchBucket":
                return []
            raise StorageError(f"cannot list s3://{prefix}: {e}") from e


def open_store(uri: str, *, s3_endpoint: str = "", s3_secure: bool = True, s3_region: str = "us-east-1") -> ObjectStore:
    """The backend for ``uri``'s scheme."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return LocalStore()
    if scheme == "s3":
        return S3Store(s3_endpoint, secure=s3_secure, region=s3_region)
    raise StorageError(f"unsupported storage URI {uri!r}: use file:///abs/path or s3://bucket/prefix")
