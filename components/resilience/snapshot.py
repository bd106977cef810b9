"""Asynchronous in-memory snapshots of a rank's training state, overlapped with the next step.

Timeline of one snapshot at step S (``begin`` is called from ``post_step``)::

    trainer:  opt.step(S) | begin: RNG+scheduler -> meta | fwd/bwd(S+1) ........ | fence | opt.step(S+1)
    copier:                       | copy params + optimizer state -> buffer |
    hand-off:                                                                 | checksum, sink(S) | free buffer

The trainer thread captures the small meta state itself (the RNG streams move on during the next
forward), then returns at once; the tensors are copied by a background thread (on GPU: queued on a
side CUDA stream into pinned memory). Forward and backward only *read* parameters and optimizer
state, so they overlap the copy; ``fence`` (from ``pre_optimizer_step``) makes the optimizer wait
until the copy has read everything, so a snapshot never mixes two steps. On GPU ``fence`` does not
block the CPU: it makes the compute stream wait on the copy's event.

Small states are copied inline (``inline_copy_bytes``, default :data:`INLINE_COPY_BYTES`): on a CPU
box a background copy of a few MB costs more than it saves. The copier thread takes the GIL back
after every tensor it copies, while the trainer runs the next forward in Python, so each tensor costs
two GIL hand-overs (futex wake-ups, context switches on cores the ranks already fill) on top of its
bytes: measured in one process on tiny's whole state (80 tensors, 2 MB), the copier took 1.3-1.6 ms
of wall time for a copy that takes ~0.1 ms of CPU on its own. Below the threshold ``begin`` copies on
the trainer thread (one memcpy's worth of stall, no thread woken, ``fence`` has nothing to wait for);
above it the copy overlaps the next step.

Buffers are allocated once (``max_in_flight`` of them, pinned when CUDA is present) and reused. A
snapshot is *in flight* from ``begin`` until its hand-off (checksum, then the sink, e.g. a transfer
to a keeper) has returned; ``begin`` blocks while ``max_in_flight`` snapshots are in flight, which
bounds both memory and how far the hand-off may fall behind. Two single-thread executors keep the
order: copies in step order, hand-offs in step order, a copy of S+1 may run during the hand-off of S.

Coalescing (``coalesce=True``, ``resilience.coalesce``): instead of making the trainer wait for a
free buffer, ``begin`` skips the snapshot when any rank's previous one is still in flight, so the
snapshots actually taken follow the hand-off's pace ("every step, or as often as the hand-off keeps
up") and training never queues behind it. Every rank must take the same versions (rank 0 commits a
version only once every rank's pieces of it are stored), so the ranks agree: one all-reduce (MIN of
"my buffer is free") of one integer on a gloo group of the engine's own, at each due snapshot.
A skipped snapshot costs that call and no copy; ``stats.skipped`` counts them, and
``newest_done`` (the newest version whose hand-off returned; on rank 0 that is the commit) lets a
caller measure how far the protected state lags behind training.

Errors of the background threads are never lost: they surface from the next ``fence``, ``begin``,
``wait`` or ``close`` on the trainer thread.

The GPU path (side stream, pinned buffers, event fence) is written for CUDA but untested here: this
machine has no GPU.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

from components.common.errors import ConfigError
from components.resilience.layout import DEFAULT_META_CAPACITY, PARAM, SnapshotLayout
from components.resilience.ownership import snapshot_names
from components.resilience.piece import checksum
from components.resilience.state import MetaEncoder, copy_tensors, write_meta
from components.training.parallel import min_over_ranks

#: states up to this many bytes are copied on the trainer thread in ``begin`` (see the module
#: docstring): 4 MiB is ~0.5 ms of memcpy, about what the copier thread's GIL hand-overs cost for
#: tiny's ~40 tensors; a larger state (mini: 157 MB, ~30 ms of copying) overlaps the next step
INLINE_COPY_BYTES = 4 << 20

#: Receives each completed snapshot: (version = step, the buffer's bytes, layout). It must be done
#: with the bytes when it returns: the buffer is reused by a later snapshot. A sink may also offer
#: ``allocate_buffer(layout) -> uint8 tensor`` (the engine's buffers then live in its memory),
#: ``join_ranks(world_size)`` (called at the first snapshot, on every rank's trainer thread: a
#: collective set-up), ``abandon(version)`` (the snapshot of ``version`` failed before it reached the
#: sink, e.g. its copy) and ``close()`` (called once the engine has finished).
Sink = Callable[[int, memoryview, SnapshotLayout], None]


@dataclass(frozen=True)
class Snapshot:
    version: int  # the step the state was taken at
    data: memoryview  # layout.total_bytes bytes of a reused buffer: valid until that buffer is reused
    layout: SnapshotLayout
    checksum: str  # piece.checksum (xxh3-128) of data; "" when the engine leaves checksums to the sink


@dataclass
class SnapshotStats:
    snapshots: int = 0
    completed: int = 0
    bytes_per_snapshot: int = 0
    setup_seconds: float = 0.0  # layout and buffer allocation, once, at the first begin()
    begin_seconds: float = 0.0  # trainer thread in begin(): meta capture, waiting for a free buffer, inline copy
    buffer_wait_seconds: float = 0.0  # the part of begin_seconds spent waiting for a free buffer
    first_begin_seconds: float = 0.0  # the first begin (part of begin_seconds): its copy touches fresh pages
    meta_seconds: float = 0.0  # the part of begin_seconds spent capturing and writing the meta (RNG, curve tail)
    fence_seconds: float = 0.0  # trainer thread waiting for a copy before the optimizer step
    copy_seconds: float = 0.0  # tensors into the buffer: copier thread, or trainer thread when inline
    inline_copies: int = 0  # snapshots copied on the trainer thread in begin() (small states)
    handoff_seconds: float = 0.0  # hand-off thread: checksum and sink
    skipped: int = 0  # due snapshots not taken because a rank's previous one was still in flight (coalesce)

    def summary(self) -> dict[str, float]:
        """Totals plus per-snapshot means in milliseconds; stall = begin + fence (the critical path)."""
        n = max(self.snapshots, 1)
        return {
            **asdict(self),
            "stall_ms_per_snapshot": 1e3 * (self.begin_seconds + self.fence_seconds) / n,
            "copy_ms_per_snapshot": 1e3 * self.copy_seconds / max(self.completed, 1),
        }


class SnapshotEngine:
    def __init__(
        self,
        max_in_flight: int = 1,
        sink: Sink | None = None,
        curve_tail: int = 0,
        whole_checksum: bool = True,
        coalesce: bool = False,
        inline_copy_bytes: int = INLINE_COPY_BYTES,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigError(f"resilience.max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight, self.sink = max_in_flight, sink
        self.curve_tail = curve_tail  # loss/LR curve points carried in each snapshot's meta
        self._meta = MetaEncoder()  # encodes each curve point once, not at every snapshot it is in
        # A checksum of the whole buffer; off when the sink checksums pieces itself (one hash pass less).
        self.whole_checksum = whole_checksum
        # Skip a due snapshot while any rank's previous one is in flight, instead of waiting (see above).
        self.coalesce = coalesce
        # A state up to this size is copied in begin(), on the trainer thread (0: always in the background).
        self.inline_copy_bytes = inline_copy_bytes
        self._group: Any = None  # gloo group the ranks agree on a skip in (coalesce, world size > 1)
        self.newest_done: int | None = None  # newest version whose hand-off (sink) returned
        self.layout: SnapshotLayout | None = None
        self.stats = SnapshotStats()
        self._buffers: list[torch.Tensor] = []
        self._views: list[list[torch.Tensor]] = []
        self._free: queue.Queue[int] = queue.Queue()  # buffers not in flight; get() blocks at the bound
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="snapshot-copy")
        self._handoff = ThreadPoolExecutor(1, thread_name_prefix="snapshot-handoff")
        self._copying: Future | None = None
        self._gpu_copied: Any = None  # torch.cuda.Event of the latest side-stream copy
        self._stream: Any = None
        self._in_flight: list[Future[Snapshot]] = []
        self._latest: Future[Snapshot] | None = None
        # (module, optimizer, [(param, part, optimizer-state tensor)], live tensors): see _live_tensors
        self._live: tuple[Any, Any, list, list[torch.Tensor]] | None = None

    @property
    def in_flight(self) -> int:
        return self.max_in_flight - self._free.qsize() if self.layout else 0

    def begin(self, state: Any) -> None:
        """Start a snapshot of ``state`` (a ``TrainState``) at ``state.step``; returns once it is queued."""
        t0 = time.perf_counter()
        self._raise_background_failure()
        if self.layout is None:
            self._allocate(state)
            t1 = time.perf_counter()
            self.stats.setup_seconds += t1 - t0
            t0 = t1
        elif self.coalesce and not self._every_rank_free():
            self.stats.skipped += 1
            self.stats.begin_seconds += time.perf_counter() - t0
            return
        tensors = self._live_tensors(state)
        t_wait = time.perf_counter()
        slot = self._free.get()  # blocks while max_in_flight snapshots are in flight
        self.stats.buffer_wait_seconds += time.perf_counter() - t_wait
        t_meta = time.perf_counter()
        write_meta(self._buffers[slot], self.layout, self._meta.capture(state, self.curve_tail))
        self.stats.meta_seconds += time.perf_counter() - t_meta
        if self._stream is not None:
            copying = self._queue_gpu_copy(self._views[slot], tensors)
        elif self.layout.total_bytes <= self.inline_copy_bytes:
            copying = Future()  # done before begin returns: nothing for fence or the copier thread
            try:
                self._copy(self._views[slot], tensors)
            except BaseException:
                self._free.put(slot)
                # on the hand-off thread: in order with the other ranks' agreements
                self._handoff.submit(self._abandon, state.step)
                raise
            copying.set_result(None)
            self.stats.inline_copies += 1
        else:
            copying = self._copier.submit(self._copy, self._views[slot], tensors)
        self._copying = copying
        self._latest = self._handoff.submit(self._hand_off, state.step, slot, copying)
        self._in_flight.append(self._latest)
        self.stats.snapshots += 1
        elapsed = time.perf_counter() - t0
        self.stats.begin_seconds += elapsed
        if self.stats.snapshots == 1:
            self.stats.first_begin_seconds = elapsed

    def fence(self) -> None:
        """Return once no copy reads the live tensors any more: call right before ``optimizer.step()``."""
        t0 = time.perf_counter()
        if self._gpu_copied is not None:
            torch.cuda.current_stream().wait_event(self._gpu_copied)  # optimizer kernels queue after the copy
        elif self._copying is not None:
            self._copying.result()  # re-raises a failed copy here, on the trainer thread
        self.stats.fence_seconds += time.perf_counter() - t0

    def wait(self) -> Snapshot:
        """The newest begun snapshot once copied, checksummed and handed to the sink."""
        if self._latest is None:
            raise RuntimeError("no snapshot has been begun; call begin(state) first")
        return self._latest.result()

    def close(self) -> None:
        """Finish every snapshot in flight, stop the threads, raise the first background error."""
        try:
            for future in self._in_flight:
                future.result()
        finally:
            self._in_flight = []
            self._copier.shutdown(wait=True)
            self._handoff.shutdown(wait=True)
            if hasattr(self.sink, "close"):  # e.g. KeeperSink: release its shared buffers
                self.sink.close()

    def _every_rank_free(self) -> bool:
        """True if every rank has a buffer free now (this rank's answer alone without a process group)."""
        free = int(self._free.qsize() > 0)
        if self._group is None:
            return bool(free)
        return bool(min_over_ranks([free], self._group)[0])

    def _allocate(self, state: Any) -> None:
        # DDP: this rank's share of the replicated parameters; FSDP: all names (its own local shards)
        owned = snapshot_names(state.module, state.rank, state.world_size)
        # ~80 bytes of JSON per curve point (two curves), on top of the RNG streams
        capacity = DEFAULT_META_CAPACITY + 80 * self.curve_tail
        self.layout = SnapshotLayout.build(
            state.module, state.optimizer, owned, meta_capacity=capacity, world_size=state.world_size
        )
        cuda = torch.cuda.is_available()
        # A sink may provide the buffers, in memory it can hand on without a copy (KeeperSink: shared
        # with the node's keeper, its frame header in front); otherwise pinned host memory, which
        # lets the GPU DMA engine copy while compute kernels run.
        allocate = getattr(self.sink, "allocate_buffer", None)
        self._buffers = [
            allocate(self.layout)
            if allocate
            else torch.zeros(self.layout.total_bytes, dtype=torch.uint8, pin_memory=cuda)
            for _ in range(self.max_in_flight)
        ]
        self._views = [self.layout.byte_views(b) for b in self._buffers]
        for slot in range(self.max_in_flight):
            self._free.put(slot)
        if cuda and any(t.is_cuda for t in self._live_tensors(state)):
            self._stream = torch.cuda.Stream()
        self.stats.bytes_per_snapshot = self.layout.total_bytes
        join = getattr(self.sink, "join_ranks", None)  # a sink whose ranks agree after each hand-off (KeeperSink)
        if join is not None:
            join(state.world_size)
        if self.coalesce and state.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():  # every rank is here, at its first snapshot: new_group is collective
                self._group = dist.new_group(backend="gloo")

    def _live_tensors(self, state: Any) -> list[torch.Tensor]:
        """``layout.live_tensors``, re-derived only when the optimizer's state tensors are no longer those
        seen last time (a ``load_state_dict``, a new optimizer or module).

        Deriving them walks the module tree and checks every entry's dtype and shape (on tiny ~0.1 ms
        of trainer time per snapshot, most of ``begin``'s own work); checking that each optimizer
        state tensor is still the same object is a dict lookup per entry. Parameters are the objects
        the optimizer steps, so they are not looked up again. FSDP shards always re-derive: their
        local tensors are views FSDP manages.
        """
        opt_state = state.optimizer.state
        live = self._live
        if (
            live is not None
            and live[0] is state.module
            and live[1] is state.optimizer
            and all(opt_state.get(p, {}).get(part) is t for p, part, t in live[2])
        ):
            return live[3]
        tensors = self.layout.live_tensors(state.module, state.optimizer)
        if not self.layout.sharded:
            params = dict(state.module.named_parameters())
            watched = [
                (params[e.name], e.part, opt_state[params[e.name]][e.part])
                for e in self.layout.entries
                if e.part != PARAM
            ]
            self._live = (state.module, state.optimizer, watched, tensors)
        return tensors

    def _copy(self, views: list[torch.Tensor], tensors: list[torch.Tensor]) -> None:
        t0 = time.perf_counter()
        copy_tensors(views, tensors)
        self.stats.copy_seconds += time.perf_counter() - t0

    def _queue_gpu_copy(self, views: list[torch.Tensor], tensors: list[torch.Tensor]) -> Future:
        # Untested here (no GPU). The side stream first waits for the optimizer step's kernels.
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            copy_tensors(views, tensors, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(self._stream)
        self._gpu_copied = copied
        return self._copier.submit(self._await_gpu_copy, copied, time.perf_counter())

    def _await_gpu_copy(self, copied: Any, queued_at: float) -> None:
        copied.synchronize()  # the hand-off must see the bytes landed in host memory
        self.stats.copy_seconds += time.perf_counter() - queued_at

    def _hand_off(self, version: int, slot: int, copying: Future) -> Snapshot:
        try:
            try:
                copying.result()
            except BaseException:
                self._abandon(version)
                raise
            t0 = time.perf_counter()
            data = memoryview(self._buffers[slot].numpy())
            snapshot = Snapshot(version, data, self.layout, checksum(data) if self.whole_checksum else "")
            if self.sink is not None:
                self.sink(version, data, self.layout)
            self.newest_done = version
            self.stats.handoff_seconds += time.perf_counter() - t0
            self.stats.completed += 1
            return snapshot
        finally:
            self._free.put(slot)

    def _abandon(self, version: int) -> None:
        """Tell a sink whose ranks wait for every rank's word on ``version`` (``abandon``) that it failed here."""
        abandon = getattr(self.sink, "abandon", None)
        if abandon is not None:
            abandon(version)

    def _raise_background_failure(self) -> None:
        done = [f for f in self._in_flight if f.done()]
        self._in_flight = [f for f in self._in_flight if not f.done()]
        for future in done:
            future.result()  # raises the copy's or the sink's exception
