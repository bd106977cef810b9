"""The persistent tier: keepers copy every Nth committed snapshot to the object store, in the background.

Layout under ``<checkpoint_uri>/<stage>/snapshots``::

    v000000000040/g00001-i002-p123456-<xxh3>.piece     piece (version 40, group 1, index 2)
    v000000000040/manifest-<keeper>.json               what one keeper uploaded of version 40

Everything a reader needs to decode is in a piece's object name (group, index, payload size,
checksum): a reader verifies every piece against the checksum in its name and decodes each group
from any ``k`` intact pieces, as it would from keepers. A piece cut short by a crash mid-upload fails
its checksum and is simply one lost piece.

Whether a version is *complete* is what the manifests say. Each keeper writes its manifest only
after all its pieces of the version are uploaded, listing them together with the version's shape
(groups, ``k``, ``m``). A version is complete once, over all its manifests, every group has at least
``k`` pieces persisted (all ``k + m`` are expected; fewer than ``k + m`` but at least ``k`` is still
decodable). Only complete versions are listed for recovery, and pruning keeps the newest complete
one, so a version whose uploads are still under way (or were cut off by a failure) can neither be
restored half-written nor push out the last restorable one. Each keeper writes only the pieces it
holds, so persistence is spread over the nodes exactly like the parity, and the trainers never wait
for it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from components.common.errors import StorageError
from components.common.log import get_logger
from components.common.storage import ObjectStore, join, open_store
from components.resilience.piece import Piece, PieceId

log = get_logger(__name__)

_PIECE = re.compile(r"g(?P<group>\d+)-i(?P<index>\d+)-p(?P<size>\d+)-(?P<checksum>[0-9a-f]+)\.piece$")
_MANIFEST = re.compile(r"manifest-[0-9A-Za-z_-]+\.json$")
_VERSION = re.compile(r"/v(?P<version>\d{12})/")
#: complete persisted versions kept; older ones are deleted by the coordinator
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class VersionShape:
    """What a complete version consists of: ``groups`` EC groups of ``k`` data + ``m`` parity pieces.

    ``k=None`` (the writer did not know the codec) makes the rule strict: every one of the
    ``pieces_per_group`` pieces of every group must be persisted.
    """

    groups: int
    pieces_per_group: int  # k + m
    k: int | None = None

    @property
    def needed_per_group(self) -> int:
        return self.pieces_per_group if self.k is None else self.k


def version_uri(root: str, version: int) -> str:
    return join(root, f"v{version:012d}")


def piece_name(piece: Piece) -> str:
    pid = piece.id
    return f"g{pid.group:05d}-i{pid.index:03d}-p{piece.payload_size}-{piece.checksum}.piece"


def piece_uri(root: str, piece: Piece) -> str:
    return join(version_uri(root, piece.id.version), piece_name(piece))


def write_pieces(store: ObjectStore, root: str, pieces: Iterable[Piece]) -> int:
    """Upload ``pieces`` under ``root``; returns how many were written."""
    count = 0
    for piece in pieces:
        store.write_bytes(piece_uri(root, piece), piece.data)
        count += 1
    return count


def write_manifest(
    store: ObjectStore, root: str, version: int, pieces: Iterable[Piece], shape: VersionShape, writer: str
) -> str:
    """Record that ``pieces`` of ``version`` are uploaded (call it after :func:`write_pieces`); returns its URI.

    ``writer`` names the keeper (letters, digits, ``-`` and ``_``): one manifest per keeper and
    version, so keepers never write the same object.
    """
    if not re.fullmatch(r"[0-9A-Za-z_-]+", writer):
        raise ValueError(f"manifest writer {writer!r}: use letters, digits, '-' and '_' only")
    pieces = list(pieces)
    foreign = [p.id for p in pieces if p.id.version != version]
    if foreign:
        raise ValueError(f"manifest of version {version} lists pieces of other versions: {foreign[:3]}")
    uri = join(version_uri(root, version), f"manifest-{writer}.json")
    manifest = {
        "version": version,
        "groups": shape.groups,
        "pieces_per_group": shape.pieces_per_group,
        "k": shape.k,
        "pieces": sorted(piece_name(p) for p in pieces),
    }
    store.write_text(uri, json.dumps(manifest, indent=1) + "\n")
    return uri


def _by_version(store: ObjectStore, root: str) -> dict[int, list[str]]:
    """Every object under ``root``, by the version directory it is in."""
    found: dict[int, list[str]] = {}
    for uri in store.list(root):
        if m := _VERSION.search(uri):
            found.setdefault(int(m["version"]), []).append(uri)
    return found


def _is_complete(store: ObjectStore, version: int, uris: list[str]) -> bool:
    """Every group of ``version`` has enough pieces both listed in a manifest and present in the store."""
    present = {uri.rsplit("/", 1)[-1] for uri in uris}
    shapes, listed = [], set()
    for uri in (u for u in uris if _MANIFEST.search(u)):
        try:
            manifest = json.loads(store.read_text(uri))
            shapes.append(VersionShape(manifest["groups"], manifest["pieces_per_group"], manifest["k"]))
            listed.update(manifest["pieces"])
        except (StorageError, ValueError, KeyError, TypeError) as e:  # unreadable: as if never written
            log.warning("persisted snapshot manifest %s unreadable, ignored: %s", uri, e)
    if not shapes:
        return False
    # Writers of one version agree on its shape; should they not, the strictest reading wins.
    known_k = [s.k for s in shapes if s.k is not None]
    shape = VersionShape(
        max(s.groups for s in shapes),
        max(s.pieces_per_group for s in shapes),
        max(known_k) if len(known_k) == len(shapes) else None,
    )
    per_group: dict[int, set[int]] = {}
    for name in listed & present:
        if m := _PIECE.fullmatch(name):
            per_group.setdefault(int(m["group"]), set()).add(int(m["index"]))
    counts = [len(per_group.get(g, ())) for g in range(shape.groups)]
    if min(counts, default=0) < shape.needed_per_group:
        return False
    if min(counts) < shape.pieces_per_group:
        log.info("persisted snapshot version %d is complete but degraded: %s pieces per group", version, counts)
    return True


def persisted_versions(store: ObjectStore, root: str) -> list[int]:
    """Complete persisted versions (see the module docstring), newest first."""
    by_version = _by_version(store, root)
    complete = [v for v, uris in by_version.items() if _is_complete(store, v, uris)]
    return sorted(complete, reverse=True)


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
    """Delete persisted versions the newest ``keep`` complete ones make useless; returns them, newest first.

    Kept: the newest ``keep`` complete versions, and every version newer than the oldest of them
    (complete or not: it may still be uploading). Deleted: older complete versions, and incomplete
    ones older than every kept complete version (uploads abandoned by a failure). With no complete
    version at all nothing is deleted: whatever is there may be all that will ever be restorable.
    """
    if keep < 1:
        raise ValueError(f"prune must keep at least one complete version, got keep={keep}")
    by_version = _by_version(store, root)
    complete = sorted((v for v, uris in by_version.items() if _is_complete(store, v, uris)), reverse=True)
    if not complete:
        return []
    oldest_kept = complete[:keep][-1]
    doomed = sorted((v for v in by_version if v < oldest_kept), reverse=True)
    for version in doomed:
        for uri in by_version[version]:
            store.delete(uri)
    return doomed


class PersistingKeeper:
    """Keeper mixin: ``persist(version, ...)`` uploads this keeper's pieces of a committed version.

    One background thread per keeper, so uploads happen in version order and never hold the
    keeper's lock: the pieces are taken under the lock (``bytes`` are immutable, so a later commit
    that drops them from the keeper cannot change what is being uploaded), then written without it,
    and the keeper's manifest goes last.
    """

    def persist(self, version: int, root: str, store_options: dict | None, shape: VersionShape) -> bool:
        """Queue the upload of this keeper's pieces of committed ``version``; False if it is not committed.

        ``shape`` (the version's groups, ``k`` and ``m``, known to the coordinator) goes into the
        manifest: one keeper's pieces cannot tell how many groups the version has.
        """
        with self._lock:
            if self._committed != version:
                return False
            pieces = [self._read_piece(pid) for pid in self._sizes.get(version, {})]
        if not hasattr(self, "_uploader"):
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix="keeper-persist")
            self._writer_id = uuid.uuid4().hex[:16]  # names this keeper's manifests
        self._uploader.submit(self._upload, root, pieces, dict(store_options or {}), version, shape)
        return True

    def wait_persisted(self) -> None:
        """Block until every queued upload has finished (tests, and a clean shutdown)."""
        if hasattr(self, "_uploader"):
            self._uploader.submit(lambda: None).result()

    def _upload(self, root: str, pieces: list[Piece], store_options: dict, version: int, shape: VersionShape) -> None:
        if not pieces:
            return  # this keeper holds nothing of the version: nothing to vouch for
        try:
            store = open_store(root, **store_options)
            written = write_pieces(store, root, pieces)
            write_manifest(store, root, version, pieces, shape, self._writer_id)
            log.info("persisted %d piece(s) of snapshot version %d to %s", written, version, root)
        except Exception:  # the memory tiers still hold the version: a failed upload must not kill the keeper
            log.exception("persisting snapshot version %d to %s failed", version, root)
