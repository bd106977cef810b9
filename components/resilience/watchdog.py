"""The hang watchdog: a rank whose step takes far longer than its recent steps is declared hung.

Most incidents on large runs are hangs and stragglers, not crashes (MegaScale): a rank stuck in a
kernel, a lost collective, a dead NIC. Nothing crashes, so Ray Train never notices; the job burns
its allocation until a human looks. :class:`HangWatchdog` is a training callback, so the engine is
untouched: the loop's events (``pre_optimizer_step``, ``post_step``) are its heartbeats, and a
daemon thread checks that the next one comes in time.

- **Timeout from recent step times.** ``resilience.hang_factor`` × the median of the last
  :data:`WINDOW` step times (post_step to post_step), but never below ``resilience.hang_min_seconds``,
  which also covers the steps not yet measured (the first steps of every worker group pay for lazy
  init and DDP buckets). The gap after a step that is followed by a checkpoint is not timed until the
  next optimizer step (an upload is not a step), and after the last step the watchdog stands down.
- **Which rank is hung.** When one rank stops, the others soon wait for it inside a collective, and
  their steps overrun too. A rank whose training thread is inside ``torch.distributed`` is waiting
  for a peer: it gives the peer one more timeout before it gives up itself, so the first rank to be
  declared hung is the one that stopped on its own, and its stack says where.
- **What it does.** It logs the rank, the step, how long it ran against the timeout, the training
  thread's stack (``sys._current_frames``), then every thread's stack through ``faulthandler``, and
  ends its process with exit code :data:`HANG_EXIT_CODE`. To Ray Train that is a dead worker like
  any crash (its controller logs "A worker health check failed ... The actor died unexpectedly",
  exit type ``SYSTEM_ERROR``; Ray does not pass the exit code on, hence the log line first): its
  ``FailurePolicy`` counts it against ``pretrain.max_failures``, tears the group down and restarts
  it, and recovery proceeds from the keepers as after a crash. Exiting rather than raising into the
  training thread: a thread stuck in a kernel or a collective never returns to Python to see an
  exception.
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

from components.common.log import get_logger
from components.resilience.faults import exit_now
from components.training.callbacks import Callback, TrainState

log = get_logger(__name__)

#: the exit code of a process ended by the watchdog (as timeout(1)'s)
HANG_EXIT_CODE = 124
#: step times the median is taken over
WINDOW = 20
#: a rank waiting inside a collective gives its peers this many timeouts before it gives up itself
COLLECTIVE_PATIENCE = 2


def in_collective(stack: list[traceback.FrameSummary]) -> bool:
    """True if a frame of ``stack`` is inside ``torch.distributed``: the rank waits for its peers."""
    return any("torch/distributed/" in frame.filename.replace(os.sep, "/") for frame in stack)


class HangWatchdog(Callback):
    """Declare this rank hung when a step overruns ``factor`` × recent step times; log its stack; exit."""

    def __init__(self, factor: float, min_seconds: float, *, poll_seconds: float = 0.5) -> None:
        # Plain values only: the callback is pickled to the Ray workers; the thread starts in pre_train.
        self.factor, self.min_seconds, self.poll_seconds = factor, min_seconds, poll_seconds
        self.step_times: deque[float] = deque(maxlen=WINDOW)
        self._lock = threading.Lock()
        self._beat: float | None = None  # monotonic time of the last heartbeat; None: not watching
        self._last_step_end: float | None = None
        self._step = 0
        self._rank = 0
        self._thread_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> HangWatchdog:
        """From ``cfg.resilience`` (``hang_factor``, ``hang_min_seconds``)."""
        return cls(cfg.resilience.hang_factor, cfg.resilience.hang_min_seconds)

    def __getstate__(self) -> dict:  # locks, events and threads do not pickle; pre_train makes new ones
        state = self.__dict__.copy()
        for key in ("_lock", "_stop", "_thread"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._stop, self._thread = threading.Lock(), threading.Event(), None

    # ------------------------------------------------------------------ loop events (heartbeats)

    def pre_train(self, state: TrainState) -> None:
        self._rank, self._thread_id = state.rank, threading.get_ident()
        spec = state.spec  # None in a bare loop (tests): no checkpoints, no known end
        self._checkpoint_every = spec.cfg.pretrain.checkpoint_every if spec is not None else 0
        self._total_steps = spec.steps if spec is not None else None
        self._thread = threading.Thread(target=self._watch, name="lmforge-hang-watchdog", daemon=True)
        self._thread.start()

    def pre_optimizer_step(self, state: TrainState) -> None:
        with self._lock:
            self._step, self._beat = state.step + 1, time.monotonic()

    def post_step(self, state: TrainState) -> None:
        now = time.monotonic()
        if self._last_step_end is not None:
            self.step_times.append(now - self._last_step_end)
        last = self._total_steps is not None and state.step >= self._total_steps
        checkpoint_next = bool(self._checkpoint_every) and state.step % self._checkpoint_every == 0
        with self._lock:
            self._step = state.step + 1
            # a checkpoint (or the publish after the last step) follows: not a step, not timed
            self._beat = None if (last or checkpoint_next) else now
        self._last_step_end = None if checkpoint_next else now

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def state_dict(self) -> dict:
        return {"timeout_seconds": round(self.timeout(), 3), "median_step_seconds": round(self._median(), 4)}

    # ------------------------------------------------------------------ the watching thread

    def timeout(self) -> float:
        """Seconds a step may take before this rank is declared hung."""
        return max(self.min_seconds, self.factor * self._median())

    def _median(self) -> float:
        return statistics.median(self.step_times) if self.step_times else 0.0

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            with self._lock:
                beat, step = self._beat, self._step
            if beat is None:
                continue
            elapsed, timeout = time.monotonic() - beat, self.timeout()
            if elapsed <= timeout:
                continue
            stack = self._training_stack()
            if in_collective(stack) and elapsed <= COLLECTIVE_PATIENCE * timeout:
                continue  # waiting for a peer: let the peer's own watchdog speak first
            self._declare_hung(step, elapsed, timeout, stack)

    def _training_stack(self) -> list[traceback.FrameSummary]:
        frame = sys._current_frames().get(self._thread_id)
        return traceback.extract_stack(frame) if frame is not None else []

    def _declare_hung(self, step: int, elapsed: float, timeout: float, stack: list[traceback.FrameSummary]) -> None:
        waiting = " (waiting inside a collective: a peer is hung too)" if in_collective(stack) else ""
        log.error(
            "hang watchdog: rank %d is hung in step %d: no progress for %.1f s, timeout %.1f s "
            "(resilience.hang_factor=%g x median step %.3f s, at least resilience.hang_min_seconds=%g)%s; "
            "exiting with code %d so Ray Train restarts the worker group. Stack of rank %d's training thread "
            "(most recent call last):\n%s",
            self._rank, step, elapsed, timeout, self.factor, self._median(), self.min_seconds, waiting,
            HANG_EXIT_CODE, self._rank, "".join(traceback.format_list(stack)).rstrip(),
        )  # fmt: skip
        sys.stderr.write(f"hang watchdog: stacks of every thread of rank {self._rank} (pid {os.getpid()}):\n")
        faulthandler.dump_traceback(all_threads=True)
        exit_now(HANG_EXIT_CODE)
