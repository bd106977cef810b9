"""A per-node cache of objects and prefixes from the object store, shared by the processes of a node.

Several training workers on one host ask for the same base model or tokenizer at the same moment.
Exactly one of them downloads it; the others wait and then use the same local copy:

1. **Fast path, no lock**: the entry is already there (and, when the caller gives a ``sha256``, it
   was verified against that digest before) → return it.
2. Otherwise take the entry's exclusive lock (``fcntl.flock``, blocking) and look again: whoever
   held the lock before us may have just finished it.
3. Download into the entry's temporary directory, verify, and rename onto the entry. The rename
   is the completion mark: an entry exists only whole. For a prefix the whole directory is renamed,
   only after *every* object under the prefix arrived, so a crash half-way leaves no entry and the
   next caller starts again (after removing the leftovers, which only the lock holder touches).

A process that dies holding a lock loses it with its life (the kernel releases flock locks of a
dead process), so a crashed downloader never blocks the node. A ``sha256`` mismatch downloads once
more (a copy damaged in flight), then raises :class:`DataError` naming the object.

Layout under ``cache_root``::

    objects/<bucket>/<key>              cached_object
    prefixes/<bucket>/<prefix>/...      cached_prefix
    .state/<id>.lock                    one lock per entry
    .state/<id>.sha256                  the digest an object entry was verified against
    .state/<id>.tmp/                    the entry's download in progress (same filesystem: rename is atomic)

Lock files are never deleted: removing a lock file that a process holds would let the next process
lock a fresh file and download side by side. Entries are never refreshed either: the cache relies on
lmforge's content-addressed layout (``<kind>/<content-hash>/...``), where the bytes under a URI do
not change. ``cache_root`` must be node-local (an ``emptyDir`` or ``hostPath``): flock does not
coordinate processes on different hosts sharing a network filesystem, and does not need to here.
A ``file://`` URI is already local: its path is returned as it is, no copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from components.common.errors import DataError, StorageError
from components.common.log import get_logger
from components.common.storage import ObjectStore, file_digest

log = get_logger(__name__)


def cached_object(store: ObjectStore, uri: str, cache_root: str | Path, *, sha256: str | None = None) -> Path:
    """A local path holding the object at ``uri``, downloaded once per node (see the module docstring)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        if not path.is_file():
            raise StorageError(f"no object at {uri}")
        if sha256 and (got := file_digest(path)) != sha256:
            raise DataError(f"{uri}: sha256 is {got}, expected {sha256}")
        return path
    root = Path(cache_root)
    entry = _entry_path(root, "objects", uri)
    digest_file = _state_path(root, "object", uri, ".sha256")
    if entry.is_file() and (sha256 is None or _read(digest_file) == sha256):
        return entry
    with _locked(root, "object", uri):
        # Finished meanwhile by the process that held the lock before us, or cached earlier without a
        # digest and matching it now: no download.
        done = entry.is_file() and (sha256 is None or _read(digest_file) == sha256 or file_digest(entry) == sha256)
        if not done:
            with _scratch(root, "object", uri) as scratch:
                _download_verified(store, uri, entry, scratch / "object", sha256)
        if sha256:
            digest_file.write_text(sha256)
    return entry


def cached_prefix(store: ObjectStore, prefix_uri: str, cache_root: str | Path) -> Path:
    """A local directory holding every object under ``prefix_uri``, downloaded once per node."""
    parsed = urlparse(prefix_uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        if not path.is_dir():
            raise StorageError(f"nothing stored under {prefix_uri}")
        return path
    root = Path(cache_root)
    entry = _entry_path(root, "prefixes", prefix_uri)
    if entry.is_dir():
        return entry
    with _locked(root, "prefix", prefix_uri):
        if entry.is_dir():
            return entry
        with _scratch(root, "prefix", prefix_uri) as scratch:
            log.info("node cache: downloading %s", prefix_uri)
            store.download_dir(prefix_uri, scratch / "prefix")
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.rename(scratch / "prefix", entry)  # the completion mark: every object is in
    return entry


def _download_verified(store: ObjectStore, uri: str, entry: Path, tmp: Path, sha256: str | None) -> None:
    got = ""
    for attempt in (1, 2):
        log.info("node cache: downloading %s", uri)
        store.download_file(uri, tmp)
        got = file_digest(tmp) if sha256 else ""
        if got == (sha256 or ""):
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, entry)
            return
        if attempt == 1:
            log.warning("node cache: %s arrived with sha256 %s, expected %s; downloading it again", uri, got, sha256)
    raise DataError(
        f"{uri}: sha256 is {got} in two downloads, expected {sha256}; the stored object is not the one "
        "the caller expects (rewritten or damaged in the store)"
    )


@contextlib.contextmanager
def _locked(cache_root: Path, kind: str, uri: str) -> Iterator[None]:
    path = _state_path(cache_root, kind, uri, ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("node cache: waiting for another process of this node to fetch %s", uri)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _entry_path(cache_root: Path, area: str, uri: str) -> Path:
    parsed = urlparse(uri)
    parts = [parsed.netloc, *parsed.path.strip("/").split("/")]
    if any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"{uri}: cannot cache a URI with an empty, '.' or '..' path segment")
    return cache_root.joinpath(area, *parts)


def _state_path(cache_root: Path, kind: str, uri: str, suffix: str) -> Path:
    name = hashlib.sha256(f"{kind}:{uri.rstrip('/')}".encode()).hexdigest()[:24]
    return cache_root / ".state" / f"{name}{suffix}"


@contextlib.contextmanager
def _scratch(cache_root: Path, kind: str, uri: str) -> Iterator[Path]:
    """The entry's empty temporary directory; call with the entry's lock held. Whatever a crashed
    holder of the lock left there is removed first, and everything is removed afterwards."""
    path = _state_path(cache_root, kind, uri, ".tmp")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
