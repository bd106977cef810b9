"""Where a worker-group restart goes, seen from Ray Train's controller.

The workers know when their training loop began and when the first step ended
(``loop.startup_phases``), but not what came before: Ray Train noticing the failure, stopping the
failed group, getting a placement group and creating the new worker actors, setting up their
training context and torch process group. :class:`WorkerGroupTimeline` is a Ray Train callback that
runs in the controller and notes the wall-clock time of each of those events for every worker group
of the fit. After each group's training function is launched it logs the phases of that start and
writes the whole timeline as JSON to ``uri`` (``<checkpoint_uri>/<stage>/worker_groups.json``), where
a benchmark or an operator reads it next to the workers' own marks.

Events of a group (``time.time()``, the controller's clock): ``failure_noticed`` (the poll that
first saw a failed worker of the previous group), ``stopped`` (the previous group shut down),
``start`` (this group's start began: resources checked, placement group asked for),
``actors_created`` (placement group ready, the worker actors and Ray Train's synchronization actor
created and answering), ``actors_up`` (their training context and the torch process group set up),
``launched`` (the training function runs on every worker).

The callback base classes are Ray Train internals (``ray.train.v2._internal``), which a Ray upgrade may
move. The driver asks :func:`timeline_callbacks` rather than building the callback itself: without
those internals the timeline is off, said once in the log, and training runs as before.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from components.common.log import get_logger
from components.common.storage import open_store

log = get_logger("lmforge.training")

try:
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
except ImportError as e:  # moved or gone in this Ray: a diagnostic must not stop every training start
    CALLBACK_BASES: tuple[type, ...] = ()
    MISSING: str | None = f"{type(e).__name__}: {e}"
else:
    CALLBACK_BASES, MISSING = (ControllerCallback, WorkerGroupCallback), None

#: whether the warning that the timeline is off was logged already in this process
_warned = [False]


def timeline_callbacks(uri: str, store_options: dict[str, Any]) -> list[Any]:
    """The Ray Train callbacks that time the fit's worker groups into ``uri``: one :class:`WorkerGroupTimeline`,
    or none (with one warning per process) when this Ray lacks the internals it hooks into."""
    if MISSING is None:
        return [WorkerGroupTimeline(uri, store_options)]
    if not _warned[0]:
        _warned[0] = True
        log.warning(
            "worker-group timeline off: this Ray has no ray.train.v2._internal.execution.callback (%s); "
            "training runs, but %s is not written",
            MISSING,
            uri,
        )
    return []


class WorkerGroupTimeline(*CALLBACK_BASES):
    """Ray Train callback (controller side) timing each worker-group start; see the module docstring."""

    def __init__(self, uri: str, store_options: dict[str, Any]) -> None:
        self.uri, self.store_options = uri, store_options
        self.groups: list[dict[str, float]] = []
        self.pending: dict[str, float] = {}  # events of the next group, before it starts

    def after_worker_group_poll_status(self, worker_group_status) -> None:
        if worker_group_status.errors and "failure_noticed" not in self.pending:
            self.pending["failure_noticed"] = time.time()

    def after_worker_group_shutdown(self, worker_group_context) -> None:
        self.pending.setdefault("stopped", time.time())

    def after_worker_group_abort(self, worker_group_context) -> None:
        self.pending.setdefault("stopped", time.time())

    def before_worker_group_start(self, worker_group_context) -> None:
        self.groups.append({**self.pending, "start": time.time()})
        self.pending = {}

    def before_init_train_context(self, workers) -> dict:
        if self.groups:
            self.groups[-1]["actors_created"] = time.time()
        return {}

    def after_worker_group_start(self, worker_group) -> None:
        if self.groups:
            self.groups[-1]["actors_up"] = time.time()

    def after_worker_group_training_start(self, worker_group) -> None:
        if not self.groups:
            return
        group = self.groups[-1]
        group["launched"] = time.time()
        log.info("worker group %d started: %s", len(self.groups), describe(group))
        try:
            open_store(self.uri, **self.store_options).write_text(self.uri, json.dumps(self.groups))
        except Exception as e:  # a diagnostic: never fail the fit over it
            log.warning("could not write the worker-group timeline to %s: %s", self.uri, e)


def describe(group: dict[str, float]) -> str:
    """The phases of one group start, in seconds, from its events."""
    order = ("failure_noticed", "stopped", "start", "actors_created", "actors_up", "launched")
    names = {
        "stopped": "previous group stopped",
        "start": "start began",
        "actors_created": "placement group and worker actors",
        "actors_up": "train context and process group",
        "launched": "training function launched",
    }
    seen = [name for name in order if name in group]
    parts = [f"{names[b]} +{group[b] - group[a]:.2f} s" for a, b in itertools.pairwise(seen)]
    return ", ".join(parts) or "first start"
