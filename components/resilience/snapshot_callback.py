"""The snapshot engine as a training-loop callback, and the default sink that keeps the last snapshot.

``post_step`` begins a snapshot every ``every`` steps; ``pre_optimizer_step`` fences, so the
optimizer never writes what a copy is still reading. Completed snapshots go to a ``sink``: the
keepers plug in there (``callback.py``, ``sink.py``); without a sink :class:`KeepLastSnapshot` holds the
newest one in this process's memory, which is enough to restore after an in-process error and to
test the round trip. ``state_dict`` reports the engine's timings, so the training summary shows
the stall each snapshot costs the critical path next to the time its copy took.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from components.common.log import get_logger
from components.resilience.layout import SnapshotLayout
from components.resilience.snapshot import Sink, SnapshotEngine
from components.training.callbacks import Callback, TrainState

log = get_logger(__name__)


class KeepLastSnapshot:
    """A sink holding a private copy of the newest snapshot (the engine's buffer is reused)."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.layout: SnapshotLayout | None = None
        self._data = np.empty(0, dtype=np.uint8)
        self._lock = threading.Lock()  # a reader never sees a half-written copy

    def __call__(self, version: int, data: memoryview, layout: SnapshotLayout) -> None:
        with self._lock:
            if self._data.size != len(data):
                self._data = np.empty(len(data), dtype=np.uint8)
            # np.copyto releases the GIL (a bytearray slice copy would hold it and stall the trainer).
            np.copyto(self._data, np.frombuffer(data, dtype=np.uint8))
            self.version, self.layout = version, layout

    def latest(self) -> tuple[int, memoryview, SnapshotLayout] | None:
        """``(version, a copy of its bytes, layout)`` of the newest snapshot, or None before the first."""
        with self._lock:
            return None if self.version is None else (self.version, memoryview(self._data.copy()), self.layout)


class SnapshotCallback(Callback):
    """Snapshot each rank's part of the training state every ``every`` steps, asynchronously."""

    def __init__(
        self, every: int = 1, max_in_flight: int = 1, sink: Sink | None = None, coalesce: bool = False
    ) -> None:
        # Plain values only: the callback is pickled to the Ray workers; the engine starts in pre_train.
        self.every, self.max_in_flight, self.sink = max(1, every), max_in_flight, sink
        self.coalesce = coalesce
        self.engine: SnapshotEngine | None = None
        self.kept: KeepLastSnapshot | None = None
        self._failed = False

    @classmethod
    def from_config(cls, resilience: Any, sink: Sink | None = None) -> SnapshotCallback:
        """From ``cfg.resilience`` (``snapshot_every``, ``max_in_flight``, ``coalesce``)."""
        return cls(
            every=resilience.snapshot_every,
            max_in_flight=resilience.max_in_flight,
            sink=sink,
            coalesce=resilience.coalesce,
        )

    def pre_train(self, state: TrainState) -> None:
        if self.sink is None:
            self.kept = KeepLastSnapshot()
        self.engine = SnapshotEngine(self.max_in_flight, self.sink or self.kept, coalesce=self.coalesce)

    def pre_optimizer_step(self, state: TrainState) -> None:
        self.engine.fence()

    def post_step(self, state: TrainState) -> None:
        if state.step % self.every == 0:
            self.engine.begin(state)

    def on_error(self, exc: BaseException) -> None:
        self._failed = True

    def close(self) -> None:
        if self.engine is None:
            return
        try:
            self.engine.close()
        except Exception:
            if not self._failed:
                raise
            # The loop is already failing with its own exception; raising here would hide it.
            log.exception("snapshot engine failed while the training loop was failing too")

    def state_dict(self) -> dict:
        return self.engine.stats.summary() if self.engine is not None else {}
