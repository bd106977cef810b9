"""A spare process for Ray Train's synchronization actor, so a restarted worker group starts no cold process.

Every worker-group start, Ray Train's controller creates a new ``SynchronizationActor`` (its collective
barrier) on the driver's node, and Ray starts a new Python process for it: interpreter, ``import ray``, core
worker, ~1.5 s of CPU that, during a recovery, competes with the new workers' set-up, restore and first
step (on the recovery benchmark's 2-core box, its core worker came up 1.65 s after the process started).
The controller runs with its own runtime environment (Ray Train's propagated env vars), which the
synchronization actor inherits, so an idle process the raylet prestarted with that environment and job
takes it, as the training workers' spares take theirs (:mod:`components.training.spares`).

:class:`SyncActorSpare` is a Ray Train callback running in the controller: :data:`DELAY_S` after each worker
group's training started (not during its start-up), and then every half keep-alive, it asks its raylet for
one such process (``PrestartWorkers``). It costs the driver's node one idle process with Ray imported; on a
node without CPUs (the RayJob head) the raylet reaps it after the keep-alive, hence the renewal. Like the
timeline it hooks into Ray Train internals: without them it is off, and training runs as before.
"""

from __future__ import annotations

import time
from typing import Any

from components.common.log import get_logger
from components.training.timeline import CALLBACK_BASES, MISSING

log = get_logger("lmforge.training")

#: seconds after a worker group's training started before the spare is asked for: a recovery's first step
#: must not share the CPU with a process start
DELAY_S = 10.0


def sync_spare_callbacks(keep_alive_s: float) -> list[Any]:
    """The controller callback that keeps a spare for the synchronization actor, or none without Ray Train's
    callback internals (the timeline warns about those once)."""
    return [SyncActorSpare(keep_alive_s)] if MISSING is None else []


class SyncActorSpare(*CALLBACK_BASES):
    """Ray Train callback (controller side): keep one idle process for the next synchronization actor."""

    def __init__(self, keep_alive_s: float) -> None:
        self.keep_alive_s = keep_alive_s
        self.due_at: float | None = None  # None: no group is training
        self.warned = False

    def after_worker_group_training_start(self, worker_group) -> None:
        self.due_at = time.monotonic() + DELAY_S

    def after_worker_group_poll_status(self, worker_group_status) -> None:
        if self.due_at is None or time.monotonic() < self.due_at:
            return
        # renewed before the raylet may reap it (a node whose CPUs are all taken keeps it keep_alive_s)
        self.due_at = time.monotonic() + max(DELAY_S, self.keep_alive_s / 2)
        try:
            from components.training.spares import prestart_workers

            prestart_workers(1, self.keep_alive_s)
        except Exception as e:  # an optimisation: the next restart starts its actor cold, as before
            if not self.warned:
                self.warned = True
                log.warning("could not prestart a process for Ray Train's synchronization actor: %s", e)

    def after_worker_group_shutdown(self, worker_group_context) -> None:
        self.due_at = None

    def after_worker_group_abort(self, worker_group_context) -> None:
        self.due_at = None
