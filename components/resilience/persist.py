"""The persistent tier: keepers copy every Nth committed snapshot to the object store, in the background.

Layout under ``<checkpoint_uri>/<stage>/snapshots``::

    v000000000040/g00001-i002-p123456-<xxh3>.piece     piece (version 40, group 1, index 2)

Everything a reader needs is in the object name (group, index, payload size, checksum), so no
index file has to be written last or kept consistent: a reader lists a version, verifies every
piece against the checksum in its name, and decodes each group from any ``k`` intact pieces, as
it would from keepers. A piece cut short by a crash mid-upload fails its checksum and is simply
one lost piece. Each keeper writes only the pieces it holds, so persistence is spread over the
nodes exactly like the parity, and the trainers never wait for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from components.common.errors import StorageError
from components.common.log import get_logger
from components.common.storage import ObjectStore, join, open_store
from components.resilience.piece import Piece, PieceId

log = get_logger(__name__)

_PIECE = re.compile(r"g(?P<group>\d+)-i(?P<index>\d+)-p(?P<size>\d+)-(?P<checksum>[0-9a-f]+)\.piece$")
_VERSION = re.compile(r"/v(?P<version>\d{12})/")
#: persisted versions kept; older ones are deleted by the coordinator
KEEP_VERSIONS = 3


def version_uri(root: str, version: int) -> str:
    return join(root, f"v{version:012d}")


def piece_uri(root: str, piece: Piece) -> str:
    pid = piece.id
    name = f"g{pid.group:05d}-i{pid.index:03d}-p{piece.payload_size}-{piece.checksum}.piece"
    return join(version_uri(root, pid.version), name)


def write_pieces(store: ObjectStore, root: str, pieces: Iterable[Piece]) -> int:
    """Upload ``pieces`` under ``root``; returns how many were written."""
    count = 0
    for piece in pieces:
        store.write_bytes(piece_uri(root, piece), piece.data)
        count += 1
    return count


def persisted_versions(store: ObjectStore, root: str) -> list[int]:
    """Versions with at least one persisted piece, newest first."""
    found = {int(m["version"]) for uri in store.list(root) if (m := _VERSION.search(uri))}
    return sorted(found, reverse=True)


def read_group(store: ObjectStore, root: str, version: int, group: int, k: int | None = None) -> list[Piece]:
    """Persisted pieces of (``version``, ``group``), damaged ones included (the decoder skips them).

    With ``k``, only as many as it takes to hold ``k`` intact ones: data pieces first, then one more
    (parity) for each piece missing, unreadable or failing its checksum; so a recovery reads ``k``
    pieces of its group, not ``k + m``. Without ``k``, every piece.
    """
    found = []
    for uri in store.list(version_uri(root, version)):
        match = _PIECE.search(uri)
        if match and int(match["group"]) == group:
            found.append((int(match["index"]), uri, match))
    pieces, intact = [], 0
    for index, uri, match in sorted(found, key=lambda item: item[0]):  # data pieces have the low indices
        if k is not None and intact >= k:
            break
        try:
            data = store.read_bytes(uri)
        except StorageError as e:
            log.warning("persisted snapshot piece unreadable, treated as lost: %s", e)
            continue
        piece = Piece(PieceId(version, group, index), data, match["checksum"], int(match["size"]))
        pieces.append(piece)
        if k is not None and piece.is_intact():
            intact += 1
    return pieces


def prune(store: ObjectStore, root: str, keep: int = KEEP_VERSIONS) -> list[int]:
    """Delete persisted versions beyond the newest ``keep``; returns the versions deleted."""
    doomed = persisted_versions(store, root)[keep:]
    for version in doomed:
        for uri in store.list(version_uri(root, version)):
            store.delete(uri)
    return doomed


class PersistingKeeper:
    """Keeper mixin: ``persist(version, ...)`` uploads this keeper's pieces of a committed version.

    One background thread per keeper, so uploads happen in version order and never hold the
    keeper's lock: the pieces are taken under the lock (``bytes`` are immutable, so a later commit
    that drops them from the keeper cannot change what is being uploaded), then written without it.
    """

    def persist(self, version: int, root: str, store_options: dict | None = None) -> bool:
        """Queue the upload of this keeper's pieces of committed ``version``; False if it is not committed."""
        with self._lock:
            if self._committed != version:
                return False
            pieces = [self._read_piece(pid) for pid in self._sizes.get(version, {})]
        if not hasattr(self, "_uploader"):
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix="keeper-persist")
        self._uploader.submit(self._upload, root, pieces, dict(store_options or {}), version)
        return True

    def wait_persisted(self) -> None:
        """Block until every queued upload has finished (tests, and a clean shutdown)."""
        if hasattr(self, "_uploader"):
            self._uploader.submit(lambda: None).result()

    def _upload(self, root: str, pieces: list[Piece], store_options: dict, version: int) -> None:
        try:
            written = write_pieces(open_store(root, **store_options), root, pieces)
            log.info("persisted %d piece(s) of snapshot version %d to %s", written, version, root)
        except Exception:  # the memory tiers still hold the version: a failed upload must not kill the keeper
            log.exception("persisting snapshot version %d to %s failed", version, root)
