"""Object storage behind a few methods over ``str`` URIs: a local directory or S3/MinIO.

URIs are strings, not ``Path``s, because ``s3://bucket/key`` is not a filesystem path. Both backends
hold the same key layout (``<root>/<kind>/<content-hash>/...``), so a run on a laptop and a run on
the cluster differ only in ``storage.uri``. The public methods check the URI once and add it to
every error; a backend implements only the ``_``-prefixed hooks.

The S3 backend (:mod:`components.common.s3_store`) retries transient failures (connection resets,
timeouts, 5xx, throttling) inside its hooks with a bounded budget, so every caller of this seam
gets the same retry rules without knowing about them. Training workers stream token windows with
:meth:`ObjectStore.read_range`; whole objects and prefixes they need on disk come through the
per-node cache (:mod:`components.common.node_cache`). Ray Train writes checkpoints itself, through
the pyarrow filesystem :func:`s3_filesystem` builds with the same endpoint and retry budget.

Writes and downloads go through a temporary name and a rename, on both backends, so a reader (or a
retry after a crash) never finds half an object under its final name.

S3 credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, set from
a Kubernetes Secret on the cluster), never from config files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from components.common.errors import StorageError

#: Defaults of the ``storage.s3_*`` config keys, for callers without a config (tests, tools).
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BACKOFF_SECONDS = 0.5
DEFAULT_TIMEOUT_SECONDS = 60.0


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


def partial_path(path: Path) -> Path:
    """A unique hidden sibling of ``path`` to write into before renaming onto ``path``."""
    return path.with_name(f".{path.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")


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

    def read_range(self, uri: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of the object at ``uri`` from byte ``offset`` on.

        One ranged GET on S3 (retried like every request), so a training worker streams the token
        windows it needs instead of downloading whole shards. A range that runs past the end of the
        object is a :class:`StorageError`, never a short result.
        """
        if offset < 0 or length < 0:
            raise StorageError(f"read_range({uri}, offset={offset}, length={length}): both must be >= 0")
        if length == 0:
            return b""
        key = self._key(uri)
        try:
            data = self._read_range(key, offset, length)
        except FileNotFoundError as e:
            raise StorageError(f"no object at {uri}") from e
        except OSError as e:
            raise StorageError(f"cannot read bytes {offset}..{offset + length} of {uri}: {e}") from e
        if len(data) != length:
            raise StorageError(
                f"cannot read bytes {offset}..{offset + length} of {uri}: the object has {self.size(uri)} bytes"
            )
        return data

    def size(self, uri: str) -> int:
        """The object's length in bytes (a HEAD on S3, no download)."""
        try:
            return self._size(self._key(uri))
        except FileNotFoundError as e:
            raise StorageError(f"no object at {uri}") from e
        except OSError as e:
            raise StorageError(f"cannot stat {uri}: {e}") from e

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
        """Copy one object to ``path``; the file appears under its name only once it is complete."""
        self._download_key(self._key(uri), Path(path), uri)

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

    # --- conditional writes (leases: components/common/lease.py) ---------------------------------

    def create_exclusive(self, uri: str, data: bytes) -> str | None:
        """Write ``data`` at ``uri`` only if nothing is there; returns the new object's tag, or None
        when an object already exists. Atomic: of two concurrent callers exactly one gets a tag."""
        return self._create_exclusive(self._key(uri), data)

    def read_tagged(self, uri: str) -> tuple[bytes, str]:
        """(content, tag) of the object at ``uri``; the tag is what :meth:`delete_if_tag` compares."""
        return self._read_tagged(self._key(uri))

    def delete_if_tag(self, uri: str, tag: str) -> bool:
        """Delete the object at ``uri`` only while its tag is still ``tag``; returns whether it did."""
        return self._delete_if_tag(self._key(uri), tag)

    def _create_exclusive(self, key: str, data: bytes) -> str | None:
        raise StorageError(f"{type(self).__name__} has no conditional create (needed for leases)")

    def _read_tagged(self, key: str) -> tuple[bytes, str]:
        raise StorageError(f"{type(self).__name__} has no tagged read (needed for leases)")

    def _delete_if_tag(self, key: str, tag: str) -> bool:
        raise StorageError(f"{type(self).__name__} has no conditional delete (needed for leases)")

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
            self._download_key(key, local_dir / key[len(base) :], self._uri(key))
        return local_dir

    def local_dir(self, uri: str, cache: str | Path) -> Path:
        """A local directory holding the objects under ``uri`` (no copy when already local)."""
        return self.download_dir(uri, Path(cache))

    def _download_key(self, key: str, path: Path, uri: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._download(key, path)
        except FileNotFoundError as e:
            raise StorageError(f"no object at {uri}") from e
        except OSError as e:
            raise StorageError(f"cannot read {uri} into {path}: {e}") from e

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
    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; fewer only when the object ends first."""

    @abstractmethod
    def _size(self, key: str) -> int: ...

    @abstractmethod
    def _upload(self, path: Path, key: str) -> None: ...

    @abstractmethod
    def _download(self, key: str, path: Path) -> None:
        """Write the object to ``path`` through a temporary name; nothing under ``path`` on failure."""

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

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        with open(key, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def _size(self, key: str) -> int:
        return Path(key).stat().st_size

    def _delete(self, key: str) -> None:
        Path(key).unlink(missing_ok=True)

    def _upload(self, path: Path, key: str) -> None:
        dest = Path(key)
        if dest.resolve() == path.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._copy(path, dest)

    def _download(self, key: str, path: Path) -> None:
        if Path(key).resolve() != path.resolve():
            self._copy(Path(key), path)

    @staticmethod
    def _copy(src: Path, dest: Path) -> None:
        tmp = partial_path(dest)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def _list(self, prefix: str) -> list[str]:
        root = Path(prefix)
        if not root.is_dir():
            return []
        return [p.as_posix() for p in root.rglob("*") if p.is_file() and not _is_partial(p.name)]

    def _digest(self, key: str) -> str:
        return file_digest(key)

    def _create_exclusive(self, key: str, data: bytes) -> str | None:
        import hashlib

        path = Path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a private name, then hard-linked into place: link() fails if the name exists
        # (atomic create-if-absent), and a reader never sees a half-written object.
        tmp = partial_path(path)
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def _read_tagged(self, key: str) -> tuple[bytes, str]:
        import hashlib

        data = Path(key).read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    def _delete_if_tag(self, key: str, tag: str) -> bool:
        import hashlib

        path = Path(key)
        # Move it aside atomically first, so nobody can replace it between the check and the delete;
        # put it back (link: only if the name is still free) when it turns out to be another's.
        aside = partial_path(path)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            if hashlib.sha256(aside.read_bytes()).hexdigest() == tag:
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            return False
        finally:
            aside.unlink(missing_ok=True)

    def local_dir(self, uri: str, cache: str | Path) -> Path:
        path = Path(self._key(uri))
        if not path.is_dir():
            raise StorageError(f"nothing stored under {uri}")
        return path


def _is_partial(name: str) -> bool:
    # ".tmp" is what earlier versions of LocalStore wrote; ".part-" is partial_path's.
    return name.startswith(".") and (".part-" in name or ".tmp" in name)


def open_store(
    uri: str,
    *,
    s3_endpoint: str = "",
    s3_secure: bool = True,
    s3_region: str = "us-east-1",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> ObjectStore:
    """The backend for ``uri``'s scheme; the S3 options are ignored for ``file://``.

    With a config at hand, pass ``**components.common.artifacts.store_options(cfg)``.
    """
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return LocalStore()
    if scheme == "s3":
        from components.common.s3_store import S3Store

        return S3Store(
            s3_endpoint,
            secure=s3_secure,
            region=s3_region,
            max_attempts=max_attempts,
            backoff_seconds=backoff_seconds,
            timeout_seconds=timeout_seconds,
        )
    raise StorageError(f"unsupported storage URI {uri!r}: use file:///abs/path or s3://bucket/prefix")


def s3_filesystem(
    *,
    s3_endpoint: str = "",
    s3_secure: bool = True,
    s3_region: str = "us-east-1",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
):
    """The ``pyarrow.fs.S3FileSystem`` through which Ray Train reads and writes checkpoints.

    Same endpoint, TLS and region as :func:`open_store`; the AWS SDK inside pyarrow retries with its
    standard strategy, whose ``max_attempts`` counts the first attempt as ours does (its backoff is
    the SDK's own). Its defaults are tight for checkpoint-sized transfers: a 1 s connect timeout and
    a 3 s request timeout (on Linux, curl's "abort when below 1 byte/s for that long"), so both are
    raised to ``timeout_seconds`` here (connect: at most 10 s). Credentials are read from the
    environment here, never from ``~/.aws`` or instance metadata, so a pod without the Secret fails
    at once with a message instead of after the SDK's metadata probes time out.
    """
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise StorageError(
            "s3:// storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment "
            "(on the cluster they come from the lmforge-s3 Secret)"
        )
    return S3FileSystem(
        access_key=access,
        secret_key=secret,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        endpoint_override=s3_endpoint or None,
        scheme="https" if s3_secure else "http",
        region=s3_region,
        allow_bucket_creation=True,
        retry_strategy=AwsStandardS3RetryStrategy(max_attempts=max_attempts),
        connect_timeout=min(timeout_seconds, 10.0),
        request_timeout=timeout_seconds,
    )


def __getattr__(name: str):
    # S3Store lives in its own module (it imports minio and urllib3); keep `from storage import S3Store`.
    if name == "S3Store":
        from components.common.s3_store import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
