"""The S3/MinIO backend of the object store, and the retry loop every one of its requests runs in.

Every hook of :class:`S3Store` runs its request through :meth:`S3Store._retrying`, one HTTP request
per *attempt* (a multipart upload, or a bucket's check-then-create, is retried as one unit):

- **Transient** failures are retried up to ``max_attempts`` in all (``storage.s3_max_attempts``),
  waiting ``backoff_seconds·2^(n-1)`` (capped at 20 s) times a random factor in [½, 1] before retry
  n, so workers that failed together do not come back together. Transient means the network or a
  busy server: connection reset/refused/aborted, a connect or read timeout, a body cut short
  (incomplete read, a GET answered without ``Content-Length``), HTTP 5xx or 429, and the throttling
  and busy codes (``SlowDown``, ``RequestTimeout``, ``InternalError``, ``ServiceUnavailable``, ...).
  Each retry is logged at WARNING with the URI and the error; no error minio or urllib3 raise holds
  the credentials. :attr:`S3Store.retries` counts them for reports.
- **Anything else** fails at once: a missing object becomes ``FileNotFoundError`` (which the public
  methods turn into "no object at <uri>"), ``AccessDenied`` and the rest a :class:`StorageError`
  naming the URI. A spent budget is a :class:`StorageError` giving the attempts and the last error.

The budget is exact because nothing below retries: minio's default HTTP client is a urllib3
``PoolManager`` with ``Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])``
and 5-minute timeouts, which would multiply every attempt by up to six and hide a dead endpoint for
half an hour. :func:`http_client` gives minio its own pool with urllib3's retries off and timeouts
from ``storage.s3_timeout_seconds`` (connect: at most 10 s; read: the longest silence on a socket).

Retrying is safe because every operation is idempotent: a PUT of the same bytes, a DELETE, a GET.
A download streams into a hidden temporary file renamed onto the target only when complete (each
attempt starts that file afresh), so neither a retry nor a crash leaves half a file under the final
name. An upload retried after a multipart upload failed half-way may leave an unfinished multipart
upload on the server; it holds no visible object, and a bucket lifecycle rule reclaims it.
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import urllib3

from components.common.errors import StorageError
from components.common.log import get_logger
from components.common.storage import (
    DEFAULT_BACKOFF_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_SECONDS,
    ObjectStore,
    partial_path,
)

log = get_logger(__name__)
T = TypeVar("T")

#: Longest wait between two attempts, whatever the backoff has grown to.
BACKOFF_CAP_SECONDS = 20.0

#: S3 error codes that mean "busy or briefly broken, try again" (AWS S3 and MinIO spellings).
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "SlowDownRead",
        "SlowDownWrite",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "XMinioServerNotInitialized",
    }
)

#: S3 error codes that mean the object (or its bucket) is not there.
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})

_NETWORK_ERRORS = (
    ConnectionError,  # reset, refused, aborted, broken pipe
    TimeoutError,  # socket timeouts
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    urllib3.exceptions.ProtocolError,  # "Connection aborted/broken" around the above
    urllib3.exceptions.TimeoutError,  # connect and read timeouts; NewConnectionError (refused, DNS) too
    urllib3.exceptions.IncompleteRead,
    urllib3.exceptions.InvalidChunkLength,
)


def http_client(timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> urllib3.PoolManager:
    """minio's HTTP pool: no retries of its own (ours count every attempt) and bounded waits."""
    import certifi

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout_seconds, 10.0), read=timeout_seconds),
        retries=False,
        # Connections kept per host: a worker's loader threads issue range reads side by side.
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


def _transient_status(status: int | None) -> bool:
    # 501 Not Implemented is the server saying "never", not "not now".
    return status is not None and (status == 429 or (status >= 500 and status != 501))


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` from minio/urllib3 is worth another attempt (see the module docstring)."""
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, S3Error):
        status = error.response.status if error.response is not None else None
        return error.code in TRANSIENT_CODES or _transient_status(status)
    if isinstance(error, ServerError):
        return _transient_status(error.status_code)
    if isinstance(error, InvalidResponseError):  # a 5xx page from a proxy or load balancer, not S3 XML
        return _transient_status(getattr(error, "_code", None))
    if isinstance(error, urllib3.exceptions.SSLError):
        return False  # a certificate or TLS-version mismatch does not heal by waiting
    return isinstance(error, _NETWORK_ERRORS)


def backoff_delay(retry: int, backoff_seconds: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1 = the first retry, after attempt 1 failed)."""
    ceiling = min(BACKOFF_CAP_SECONDS, backoff_seconds * 2 ** (retry - 1))
    return ceiling * (rng or random).uniform(0.5, 1.0)


class S3Store(ObjectStore):
    """``s3://bucket/key`` on MinIO or any S3-compatible endpoint, through the MinIO SDK."""

    scheme = "s3"

    def __init__(
        self,
        endpoint: str,
        *,
        secure: bool = True,
        region: str = "us-east-1",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        from minio import Minio

        if max_attempts < 1:
            raise StorageError(f"S3 max_attempts must be >= 1 (storage.s3_max_attempts), got {max_attempts}")
        access = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise StorageError(
                "s3:// storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment "
                "(on the cluster they come from the lmforge-s3 Secret)"
            )
        endpoint = endpoint or "s3.amazonaws.com"
        self._client = Minio(
            endpoint,
            access_key=access,
            secret_key=secret,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            secure=secure,
            region=region,
            http_client=http_client(timeout_seconds),
        )
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        #: retries made so far by this store (attempts beyond the first of each operation)
        self.retries = 0
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._buckets_seen: set[str] = set()

    def _retrying(self, what: str, key: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, fails for good, or ``max_attempts`` are spent."""
        from minio.error import S3Error

        uri = "s3://" + key
        for n in range(1, self.max_attempts + 1):
            try:
                return attempt()
            except Exception as e:  # sorted below: retried, missing, or a StorageError naming the URI
                if isinstance(e, S3Error) and e.code in MISSING_CODES:
                    raise FileNotFoundError(uri) from e
                if not is_transient(e):
                    hint = " (check the S3 credentials and the bucket policy)" if _code(e) == "AccessDenied" else ""
                    raise StorageError(f"cannot {what} {uri}: {_describe(e)}{hint}") from e
                if n == self.max_attempts:
                    raise StorageError(
                        f"cannot {what} {uri}: gave up after {n} attempt{'s' * (n > 1)} "
                        f"(storage.s3_max_attempts={self.max_attempts}); last error: {_describe(e)}"
                    ) from e
                delay = backoff_delay(n, self.backoff_seconds, self._rng)
                with self._lock:
                    self.retries += 1
                log.warning(
                    "S3 %s %s: attempt %d/%d failed (%s); retrying in %.2f s",
                    what, uri, n, self.max_attempts, _describe(e), delay,
                )  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _split(self, key: str) -> tuple[str, str]:
        bucket, _, name = key.partition("/")
        return bucket, name

    def _uri(self, key: str) -> str:
        return "s3://" + key

    def _ensure_bucket(self, bucket: str) -> None:
        from minio.error import S3Error

        if bucket in self._buckets_seen:
            return

        def create() -> None:
            if self._client.bucket_exists(bucket):
                return
            try:
                self._client.make_bucket(bucket)
            except S3Error as e:
                # Another worker created it first, or our earlier attempt did and its answer was lost.
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._retrying("create bucket", bucket, create)
        self._buckets_seen.add(bucket)

    def _get(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        """One GET of the object (or of a range of it), checked to be complete."""
        from minio.error import S3Error

        bucket, name = self._split(key)
        try:
            resp = self._client.get_object(bucket, name, offset=offset, length=length)
        except S3Error as e:
            if e.code == "InvalidRange":  # the range starts past the end: an empty answer
                return b""
            raise
        try:
            data = resp.read()
            _check_length(resp, len(data))
            return data
        finally:
            resp.close()
            resp.release_conn()

    def _exists(self, key: str) -> bool:
        try:
            self._size(key)
            return True
        except FileNotFoundError:
            return False

    def _size(self, key: str) -> int:
        bucket, name = self._split(key)
        return self._retrying("stat", key, lambda: self._client.stat_object(bucket, name).size)

    def _read(self, key: str) -> bytes:
        return self._retrying("read", key, lambda: self._get(key))

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        return self._retrying(f"read bytes {offset}..{offset + length} of", key, lambda: self._get(key, offset, length))

    def _upload(self, path: Path, key: str) -> None:
        bucket, name = self._split(key)
        self._ensure_bucket(bucket)
        self._retrying("upload to", key, lambda: self._client.fput_object(bucket, name, str(path)))

    def _delete(self, key: str) -> None:
        bucket, name = self._split(key)
        # S3 DELETE of an absent key succeeds, so a retry after a lost answer is harmless.
        self._retrying("delete", key, lambda: self._client.remove_object(bucket, name))

    def _download(self, key: str, path: Path) -> None:
        bucket, name = self._split(key)
        tmp = partial_path(path)

        def attempt() -> None:
            resp = self._client.get_object(bucket, name)
            try:
                with open(tmp, "wb") as f:  # "wb": a retry starts the file afresh
                    for block in resp.stream(1 << 20):
                        f.write(block)
                    _check_length(resp, f.tell())
            finally:
                resp.close()
                resp.release_conn()
            os.replace(tmp, path)

        try:
            self._retrying("download", key, attempt)
        finally:
            tmp.unlink(missing_ok=True)

    def _digest(self, key: str) -> str:
        bucket, name = self._split(key)
        return "etag:" + self._retrying("stat", key, lambda: self._client.stat_object(bucket, name).etag)

    def _list(self, prefix: str) -> list[str]:
        bucket, name = self._split(prefix)

        def attempt() -> list[str]:
            # A listing broken off between pages starts over: a partial one would look complete.
            # Keys ending in '/' are directory markers (pyarrow, hence Ray Train, writes them): no data.
            objects = self._client.list_objects(bucket, prefix=name, recursive=True)
            return [f"{bucket}/{o.object_name}" for o in objects if not o.object_name.endswith("/")]

        try:
            return self._retrying("list", prefix, attempt)
        except FileNotFoundError:  # no such bucket: nothing stored there yet
            return []

    # Conditional writes. The MinIO SDK's public put_object turns unknown headers into user metadata
    # (x-amz-meta-if-none-match), so these go through its _put_object/_execute, which send headers
    # as given. S3 (since 2024), MinIO and moto answer 412 PreconditionFailed when the condition fails.

    def _create_exclusive(self, key: str, data: bytes) -> str | None:
        from minio.error import S3Error

        bucket, name = self._split(key)
        self._ensure_bucket(bucket)

        def attempt() -> str | None:
            try:
                return self._client._put_object(bucket, name, data, headers={"If-None-Match": "*"}).etag
            except S3Error as e:
                # 409 ConditionalRequestConflict: a concurrent conditional write to the key is in flight.
                if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return None
                raise

        return self._retrying("create (if absent)", key, attempt)

    def _read_tagged(self, key: str) -> tuple[bytes, str]:
        bucket, name = self._split(key)

        def attempt() -> tuple[bytes, str]:
            resp = self._client.get_object(bucket, name)
            try:
                data = resp.read()
                _check_length(resp, len(data))
                return data, resp.headers.get("ETag", "").strip('"')
            finally:
                resp.close()
                resp.release_conn()

        return self._retrying("read", key, attempt)

    def _delete_if_tag(self, key: str, tag: str) -> bool:
        from minio.error import S3Error

        bucket, name = self._split(key)

        def attempt() -> bool:
            try:
                self._client._execute("DELETE", bucket, name, headers={"If-Match": f'"{tag}"'})
                return True
            except S3Error as e:
                if e.code in ("PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"):
                    return False
                raise

        return self._retrying("delete (if unchanged)", key, attempt)


def _check_length(resp, received: int) -> None:
    """Refuse a body shorter than announced, or one with no length at all (headers cut by a reset)."""
    announced = resp.headers.get("Content-Length")
    if announced is None:
        raise urllib3.exceptions.ProtocolError("S3 answered a GET without Content-Length (response cut short?)")
    if received != int(announced):
        raise urllib3.exceptions.IncompleteRead(received, int(announced) - received)


def _code(error: BaseException) -> str | None:
    return getattr(error, "code", None)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
