"""Snapshot keepers: the memory that holds training snapshots outside the training workers.

Design
------
``Keeper`` is a guarded template, as torchtitan's ``BaseCheckpointManager``: its public methods
enforce every rule once, under one lock, and a backend implements only the three storage hooks
``_write_piece``, ``_read_piece`` and ``_delete`` (never the public methods). The rules:

- **Checksums.** A piece that fails ``Piece.is_intact()`` is refused on ``put``; one found damaged
  later (on ``get``, ``pieces`` or ``commit``) is forgotten and from then on reported missing, so the
  recovery tiers treat it exactly like a piece lost with its node.
- **Commit rule.** ``commit(v, expected)`` succeeds only if every expected piece is stored and intact;
  otherwise it raises and the previous committed version stays untouched and readable.
- **Double buffering.** A keeper holds at most two versions: the newest committed one (the only one
  readers see) and the one being written. Committing ``v`` drops the older one; a piece of a third
  version is refused until the one being written is committed or dropped, so an in-flight snapshot
  is never silently thrown away.
- **Idempotent retries.** A hand-off refused part-way (``BusyError`` from one holder) is retried
  whole, so a holder may get a piece again after the version was committed with it; the same piece
  (same id and checksum) is then accepted as a no-op, any other piece of an old version refused.
- **Memory budget.** ``resilience.keeper_memory_mb`` must fit two versions of the declared snapshot
  size (checked at construction with a ``ConfigError`` that names the fix) and is enforced on ``put``.
- **Back-pressure.** A piece of a newer version than the one being written is refused with
  :class:`BusyError` ("retry later"), and :meth:`busy_with` answers the same question without a
  piece. The keeper actor's callers never wait inside the keeper: a rank's hand-off (``sink.py``)
  asks, backs off and retries until its deadline, so a fast rank's next snapshot queues behind the
  slowest rank's current one without holding one of the keeper's threads. (``put(..., wait_s=T)``
  still waits up to ``T`` seconds in the keeper, for in-process use.)
- **Generations (fencing).** Every restart of the worker group starts a new generation
  (:meth:`start_generation`); pieces from an older generation are refused. A dead trainer's hand-off
  can still be in flight inside a keeper when the new group restores; without the fence its stale
  piece could become "the version being written" and block the new group's snapshots.

``MemoryKeeper`` keeps pieces in a dict in its own process. On a cluster it runs as one detached Ray
actor per node (``keeper_actor.py``), so a crashed training worker loses nothing.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import astuple, dataclass

from components.common.errors import ConfigError, DataError, RecoveryError
from components.common.log import get_logger
from components.resilience.piece import Piece, PieceId

log = get_logger(__name__)

MIB = 1024 * 1024
#: the newest committed version plus the one being written
VERSIONS_HELD = 2


class MissingPieceError(RecoveryError):
    """A piece is not held intact by this keeper: never stored, not committed, dropped or damaged."""


class IncompleteVersionError(RecoveryError):
    """A commit named pieces this keeper does not hold intact; nothing changed."""


class BusyError(RecoveryError):
    """Back-pressure: another version is still being written here; retry the piece once it is decided."""


class StaleWriterError(RecoveryError):
    """A piece from a worker group older than the keeper's current generation (fenced off)."""


@dataclass(frozen=True)
class KeeperStatus:
    committed: int | None
    writing: int | None
    bytes_used: int
    pieces: int
    generation: int = 0
    #: the newest step this keeper received a snapshot piece of, and when (epoch seconds)
    progress_step: int | None = None
    progress_time: float | None = None


def check_keeper_budget(budget_mb: int, expected_version_bytes: int) -> None:
    """Fail at start-up, not mid-run, if a keeper cannot hold two versions of its share of a snapshot."""
    need = VERSIONS_HELD * expected_version_bytes
    if need > budget_mb * MIB:
        need_mb = -(-need // MIB)
        raise ConfigError(
            f"resilience.keeper_memory_mb={budget_mb} is too small: a keeper holds {VERSIONS_HELD} snapshot "
            f"versions (the newest committed one and the one being written) of "
            f"{expected_version_bytes / MIB:.1f} MiB each, {need / MIB:.1f} MiB in all. Raise "
            f"resilience.keeper_memory_mb to at least {need_mb}, or spread the state thinner: more nodes, "
            f"or a larger resilience.k (each keeper then holds a smaller share of each group)."
        )


def _by_position(piece_id: PieceId) -> tuple:
    return astuple(piece_id)


def _describe(ids: list[PieceId], limit: int = 5) -> str:
    shown = ", ".join(f"(group {p.group}, index {p.index})" for p in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


class Keeper(ABC):
    """Holds snapshot pieces; the public methods enforce the rules, backends store bytes."""

    def __init__(self, budget_mb: int, expected_version_bytes: int) -> None:
        check_keeper_budget(budget_mb, expected_version_bytes)
        self.budget_bytes = budget_mb * MIB
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every put, commit and drop
        self._sizes: dict[int, dict[PieceId, int]] = {}  # version -> piece -> bytes held
        self._committed: int | None = None
        self._writing: int | None = None
        self._used = 0
        self._generation = 0
        self._progress: tuple[int, float] | None = None

    # ------------------------------------------------------------------ storage hooks (backends)

    @abstractmethod
    def _write_piece(self, piece: Piece) -> None:
        """Store ``piece`` (replacing any piece with the same id)."""

    @abstractmethod
    def _read_piece(self, piece_id: PieceId) -> Piece:
        """Return the stored piece as written, without checking it."""

    @abstractmethod
    def _delete(self, piece_id: PieceId) -> None:
        """Free the stored piece."""

    # ------------------------------------------------------------------ public, guarded API

    def put(self, piece: Piece, *, generation: int | None = None, wait_s: float = 0.0, made_here: bool = False) -> None:
        """Store a piece of the version being written (which becomes ``piece.id.version`` if none is).

        ``generation`` (when given) must not be older than the keeper's; ``wait_s`` is how long to
        wait for another version being written to end before refusing this one. ``made_here``: the
        piece was encoded in this process from bytes it owns (``spread.py``), and its checksum was
        computed from those very bytes, so it is not hashed again; pieces from elsewhere always are.
        """
        # A view (snapshot buffer, object store) is not the keeper's to keep: it is copied, and the
        # checksum is verified on the copy in the same pass. Hashed outside the lock: the slow part.
        checked = piece.owned() if made_here else piece.owned_checked()
        if checked is None:
            raise DataError(f"keeper refused piece {piece.id}: its bytes do not match its checksum")
        piece = checked
        version, size = piece.id.version, len(piece.data)
        with self._lock:
            if wait_s > 0:
                self._changed.wait_for(
                    lambda: self._writing in (None, version) or self._fenced(generation), timeout=wait_s
                )
            if self._fenced(generation):
                raise StaleWriterError(
                    f"keeper refused piece {piece.id}: it comes from worker-group generation {generation}, "
                    f"the keeper serves generation {self._generation} (a writer from before a restart)"
                )
            if version == self._committed and self._holds_same_locked(piece):
                return  # a retried hand-off re-sends a piece its first attempt stored: already committed
            if self._committed is not None and version <= self._committed:
                raise RecoveryError(
                    f"keeper refused piece {piece.id}: version {version} is not newer than the committed "
                    f"version {self._committed} (a writer from before a restart?)"
                )
            if self._writing is not None and version != self._writing:
                raise BusyError(
                    f"keeper refused piece {piece.id}: version {self._writing} is still being written; "
                    f"commit or drop it first (a keeper holds only {VERSIONS_HELD} versions)"
                )
            replaced = self._sizes.get(version, {}).get(piece.id, 0)
            if self._used - replaced + size > self.budget_bytes:
                raise ConfigError(
                    f"keeper memory budget exceeded storing piece {piece.id} ({size / MIB:.1f} MiB): "
                    f"{self._used / MIB:.1f} of resilience.keeper_memory_mb={self.budget_bytes // MIB} in use. "
                    f"Raise resilience.keeper_memory_mb, or use more nodes or a larger resilience.k"
                )
            self._write_piece(piece)
            self._sizes.setdefault(version, {})[piece.id] = size
            self._used += size - replaced
            self._writing = version
            # A piece of step `version` exists, so the run got that far: every holder of a piece
            # remembers it, and a recovery learns the failed run's progress from any survivor.
            if self._progress is None or version > self._progress[0]:
                self._progress = (version, time.time())
            self._changed.notify_all()

    def busy_with(self, version: int, generation: int | None = None) -> int | None:
        """The version whose writing makes a put of ``version`` wait (back-pressure), or None if it would not.

        None also when the put would be refused for another reason (fenced generation, not newer
        than the committed version): the put then says why, so a retrying caller stops at once.
        """
        with self._lock:
            if self._writing in (None, version) or self._fenced(generation):
                return None
            return self._writing

    def get(self, piece_id: PieceId) -> Piece:
        """Return an intact piece of the committed version, else raise ``MissingPieceError``."""
        with self._lock:
            if piece_id.version != self._committed:
                raise MissingPieceError(
                    f"piece {piece_id}: version {piece_id.version} is not committed here (committed: {self._committed})"
                )
            if piece_id not in self._sizes.get(piece_id.version, {}):
                raise MissingPieceError(f"piece {piece_id} is not held by this keeper")
            piece = self._read_piece(piece_id)
        if not piece.is_intact():
            self._forget_damaged([piece_id])
            raise MissingPieceError(f"piece {piece_id} failed its checksum and is treated as lost")
        return piece

    def held(self, version: int) -> list[PieceId]:
        """Ids of the pieces of ``version`` stored here, not hashed again: each was verified when it
        was stored (``put``) and :meth:`commit` verifies it once more under the lock, so phase 1 of a
        snapshot's commit (``prepare``, ``spread.py``) need not read every byte in between."""
        with self._lock:
            return sorted(self._sizes.get(version, {}), key=_by_position)

    def pieces(self, version: int) -> list[PieceId]:
        """Ids of the pieces of ``version`` held intact (damaged ones are forgotten on the way)."""
        with self._lock:
            stored = [self._read_piece(pid) for pid in self._sizes.get(version, {})]
        damaged = [p.id for p in stored if not p.is_intact()]
        self._forget_damaged(damaged)
        return sorted((p.id for p in stored if p.id not in set(damaged)), key=_by_position)

    def commit(self, version: int, expected: set[PieceId]) -> None:
        """Make ``version`` the committed one if every expected piece is held intact, else raise."""
        foreign = [p for p in expected if p.version != version]
        if foreign:
            raise ValueError(f"commit of version {version} names pieces of other versions: {foreign[:3]}")
        with self._lock:
            if version == self._committed:
                return  # a repeated phase two (a retrying coordinator): already done
            if self._committed is not None and version < self._committed:
                raise RecoveryError(f"cannot commit version {version}: version {self._committed} is newer")
            held = self._sizes.get(version, {})
            # Verified under the lock so no put or drop slips between the check and the switch; xxh3
            # runs at many GB/s, and readers only wait during recovery, not during training.
            damaged = [pid for pid in expected & held.keys() if not self._read_piece(pid).is_intact()]
            for pid in damaged:
                self._remove_locked(pid)
            missing = sorted(expected - held.keys(), key=_by_position)
            if missing:
                raise IncompleteVersionError(
                    f"version {version} not committed: {len(missing)} of {len(expected)} expected pieces "
                    f"missing or damaged: {_describe(missing)}; version {self._committed} stays committed"
                )
            for other in [v for v in self._sizes if v != version]:
                self._drop_locked(other)
            self._committed, self._writing = version, None
            self._changed.notify_all()

    def wait_for_pieces(self, version: int, expected: set[PieceId], timeout_s: float) -> bool:
        """Block until every ``expected`` piece of ``version`` is stored (True) or ``timeout_s`` passes.

        The commit coordinator waits here instead of polling: a put wakes it.
        """
        with self._lock:
            return self._changed.wait_for(lambda: expected <= self._sizes.get(version, {}).keys(), timeout=timeout_s)

    def newest_committed(self) -> int | None:
        with self._lock:
            return self._committed

    def drop(self, version: int) -> None:
        """Forget every piece of ``version`` (an aborted snapshot, or a committed one given up)."""
        with self._lock:
            self._drop_locked(version)

    def memory_used(self) -> int:
        """Bytes of piece data held (both versions)."""
        with self._lock:
            return self._used

    def status(self) -> KeeperStatus:
        with self._lock:
            count = sum(len(ids) for ids in self._sizes.values())
            step, at = self._progress or (None, None)
            return KeeperStatus(self._committed, self._writing, self._used, count, self._generation, step, at)

    def start_generation(self, generation: int, keep: int | None) -> None:
        """Fence off writers older than ``generation`` and keep only version ``keep`` (if committed).

        Called by a restarted worker group once it has restored: ``keep`` is the version it restored
        from memory (``None`` after restoring from elsewhere), and every other version goes, so the
        group's next snapshots (``keep + 1`` onwards) are newer than anything held.
        """
        with self._lock:
            if generation < self._generation:
                raise StaleWriterError(f"generation {generation} is older than the keeper's {self._generation}")
            self._generation = generation
            for version in [v for v in self._sizes if not (v == keep and v == self._committed)]:
                self._drop_locked(version)  # dropping the committed version also clears it
            if self._committed != keep:
                # committed while holding none of its pieces (a node no group placed a piece on, such as
                # a standby node): no piece to drop, but the group's next versions may be older
                self._committed = None
            self._changed.notify_all()

    def inject_corruption(self, piece_id: PieceId) -> None:
        """Flip one byte of a stored piece, keeping its old checksum (fault injection: corrupt_piece)."""
        with self._lock:
            if piece_id not in self._sizes.get(piece_id.version, {}):
                raise MissingPieceError(f"cannot corrupt piece {piece_id}: not held by this keeper")
            piece = self._read_piece(piece_id)
            data = bytearray(piece.data)
            data[len(data) // 2] ^= 0xFF
            self._write_piece(Piece(piece.id, bytes(data), piece.checksum, piece.payload_size))

    # ------------------------------------------------------------------ internals (*_locked: lock held)

    def _forget_damaged(self, damaged: list[PieceId]) -> None:
        if not damaged:
            return
        log.warning("keeper dropped %d damaged piece(s): %s", len(damaged), _describe(damaged))
        with self._lock:
            for pid in damaged:
                # checked again: a put may have replaced the piece since it was read without the lock
                if pid in self._sizes.get(pid.version, {}) and not self._read_piece(pid).is_intact():
                    self._remove_locked(pid)

    def _remove_locked(self, piece_id: PieceId) -> None:
        size = self._sizes.get(piece_id.version, {}).pop(piece_id, None)
        if size is not None:
            self._delete(piece_id)
            self._used -= size

    def _drop_locked(self, version: int) -> None:
        for pid in list(self._sizes.get(version, {})):
            self._remove_locked(pid)
        self._sizes.pop(version, None)
        if self._committed == version:
            self._committed = None
        if self._writing == version:
            self._writing = None
        self._changed.notify_all()

    def _holds_same_locked(self, piece: Piece) -> bool:
        held = piece.id in self._sizes.get(piece.id.version, {})
        return held and self._read_piece(piece.id).checksum == piece.checksum

    def _fenced(self, generation: int | None) -> bool:
        return generation is not None and generation < self._generation


class MemoryKeeper(Keeper):
    """Pieces in a dict of this process: the backend of the per-node keeper actor."""

    def __init__(self, budget_mb: int, expected_version_bytes: int) -> None:
        super().__init__(budget_mb, expected_version_bytes)
        self._store: dict[PieceId, Piece] = {}

    def _write_piece(self, piece: Piece) -> None:
        self._store[piece.id] = piece

    def _read_piece(self, piece_id: PieceId) -> Piece:
        return self._store[piece_id]

    def _delete(self, piece_id: PieceId) -> None:
        del self._store[piece_id]
