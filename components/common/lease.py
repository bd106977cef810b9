"""A lease in the object store: one holder at a time for a named critical section, across pods.

MLflow's registry has no compare-and-set on aliases, so two register steps finishing together could
both read champion v1, both judge their version better, and the later alias move would silently undo
the earlier one. The register step therefore holds a per-model lease while it re-reads and moves the
alias (``components/register/run.py``).

The lease is an object created with a *conditional write*: S3's ``If-None-Match: *`` PUT (honoured by
AWS S3 since 2024, MinIO, and the moto server the tests run), ``link()`` on a local directory. Of two
concurrent creators exactly one succeeds; the other sees 412 and waits. Release deletes the object
only while it still carries the holder's ETag (``If-Match``), so a holder that overran its time can
never delete the lease a successor took over. A lease records when it expires; a waiter that finds
an expired one (its holder died) breaks it with the same tag-conditional delete and races for it
again, so a crashed step blocks others for at most ``ttl_seconds``.

A lease is not a fence: a holder paused past its expiry (a long GC, a frozen node) may still act
after a successor took over. Keep the section short (a few registry calls) and the TTL generous.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from components.common.errors import LmforgeError
from components.common.log import get_logger
from components.common.storage import ObjectStore

log = get_logger("lmforge.lease")


class LeaseTimeout(LmforgeError):
    """The lease stayed held by someone else for longer than the caller would wait."""


@dataclass(frozen=True)
class Lease:
    uri: str
    holder: str
    tag: str  # the lease object's ETag (S3) or content hash (local): what release compares
    expires_at: float


def default_holder() -> str:
    """Who holds a lease: host, pid and a random part (two threads of one process differ too)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(
    store: ObjectStore,
    uri: str,
    *,
    ttl_seconds: float,
    wait_seconds: float,
    holder: str | None = None,
    poll_seconds: float = 0.2,
    wait_key: str = "wait_seconds",
) -> Lease:
    """Take the lease at ``uri``, waiting up to ``wait_seconds`` for its holder to release it.

    Raises:
        LeaseTimeout: naming the current holder and ``wait_key`` (the config key to raise).
    """
    holder = holder or default_holder()
    deadline = time.monotonic() + wait_seconds
    while True:
        now = time.time()
        record = {"holder": holder, "acquired_at": now, "expires_at": now + ttl_seconds}
        tag = store.create_exclusive(uri, json.dumps(record).encode())
        if tag is not None:
            return Lease(uri, holder, tag, record["expires_at"])
        current = _read(store, uri)
        if current is not None:
            data, current_tag = current
            if data.get("expires_at", 0) < time.time():
                # Its holder died or overran: remove exactly that lease (tag-conditional), then race again.
                if store.delete_if_tag(uri, current_tag):
                    log.warning("lease %s: broke the expired lease of %s", uri, data.get("holder", "?"))
                continue
        if time.monotonic() >= deadline:
            who = current[0].get("holder", "?") if current else "?"
            raise LeaseTimeout(
                f"lease {uri} is held by {who}; waited {wait_seconds:.0f}s. If that holder is gone the lease "
                f"expires by itself; otherwise raise {wait_key}"
            )
        time.sleep(poll_seconds)


def release(store: ObjectStore, lease: Lease) -> bool:
    """Give the lease back; False when it was no longer ours (expired and taken over)."""
    released = store.delete_if_tag(lease.uri, lease.tag)
    if not released:
        log.warning("lease %s: no longer held by %s at release (expired and taken over?)", lease.uri, lease.holder)
    return released


@contextmanager
def held(store: ObjectStore, uri: str, *, ttl_seconds: float, wait_seconds: float, **kw) -> Iterator[Lease]:
    """``with held(store, uri, ...) as lease:`` — the section runs while the lease is ours."""
    lease = acquire(store, uri, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, **kw)
    try:
        yield lease
    finally:
        release(store, lease)


def _read(store: ObjectStore, uri: str) -> tuple[dict, str] | None:
    try:
        data, tag = store.read_tagged(uri)
    except FileNotFoundError:
        return None  # released between our create and this read: just try again
    try:
        return json.loads(data), tag
    except ValueError:
        # Not a lease we wrote (truncated by hand?): treat as expired so it cannot block forever.
        return {"holder": "unreadable", "expires_at": 0}, tag
