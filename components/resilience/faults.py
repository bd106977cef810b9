"""Injected faults: parse ``cfg.resilience.faults`` and crash a training worker on cue, once per run.

A fault spec is ``<kind>@step=<S>[,node=<N>]``:

- ``worker_crash@step=S``: rank 0's training process dies (``os._exit(1)``) right after step S.
  Executed by :class:`FaultInjector`.
- ``node_loss@step=S[,node=N]``: the node running rank N (default: the highest rank) dies right after
  step S: its raylet is killed, and with it every process of the node, the training worker and the
  snapshot keeper included. Several ``node_loss`` at one step lose several nodes at once.
- ``corrupt_piece@step=S``: once snapshot S is committed, one byte of its first data piece (group 0,
  index 0) is flipped in its keeper; the next recovery must notice and decode around it.

``node_loss`` and ``corrupt_piece`` act on snapshot keepers, so the resilience callback
(``components/resilience/callback.py``) executes them through the keepers (:class:`NodeKiller` is the
keeper's part). Every fault fires once per run: :func:`fire_once` records it in the object store.

Several faults in one string are separated by ``;``, because ``,`` already joins ``node=N`` to its
fault: ``--set "resilience.faults=worker_crash@step=4;node_loss@step=6,node=2"``. For forgiveness,
``,`` between two faults works too (a part without ``@`` continues the fault before it).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger
from components.common.storage import join, open_store
from components.training.callbacks import Callback, TrainState

log = get_logger(__name__)

KINDS = ("worker_crash", "node_loss", "corrupt_piece")
ACCEPTED = "worker_crash@step=S, node_loss@step=S[,node=N], corrupt_piece@step=S (several: separate with ';')"
_FAULT = re.compile(r"(?P<kind>[a-z_]+)@step=(?P<step>\d+)(?:,node=(?P<node>\d+))?")


@dataclass(frozen=True)
class Fault:
    kind: str
    #: optimizer steps completed when the fault strikes (>= 1)
    step: int
    #: node_loss only: which node to lose (None: the harness picks one that is not the head)
    node: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}@step={self.step}" + (f",node={self.node}" if self.node is not None else "")


def parse_fault(spec: str) -> Fault:
    """One spec, e.g. ``node_loss@step=6,node=2``; a malformed spec raises :class:`ConfigError`."""
    text = re.sub(r"\s+", "", spec)
    match = _FAULT.fullmatch(text)
    problem = ""
    if not match:
        problem = "not of the form kind@step=S"
    elif match["kind"] not in KINDS:
        problem = f"unknown kind {match['kind']!r}"
    elif int(match["step"]) < 1:
        problem = "step must be >= 1 (a fault strikes after a completed step)"
    elif match["node"] is not None and match["kind"] != "node_loss":
        problem = "only node_loss takes node=N"
    if problem:
        raise ConfigError(f"resilience.faults: cannot parse fault {spec!r}: {problem}; accepted forms: {ACCEPTED}")
    node = int(match["node"]) if match["node"] is not None else None
    return Fault(kind=match["kind"], step=int(match["step"]), node=node)


def parse_faults(specs: str | Iterable[str]) -> tuple[Fault, ...]:
    """All faults of ``cfg.resilience.faults`` (a list of specs, or one ``;``-separated string)."""
    items = [specs] if isinstance(specs, str) else list(specs)
    parts = [part.strip() for item in items for part in re.split(r"[;,]", item) if part.strip()]
    merged: list[str] = []
    for part in parts:
        if "@" in part or not merged:
            merged.append(part)
        else:  # "node=2" after "node_loss@step=6": an option of the fault before it
            merged[-1] += "," + part
    return tuple(parse_fault(spec) for spec in merged)


def faults_of_kind(faults: Iterable[Fault], kind: str) -> tuple[Fault, ...]:
    """The faults of one kind, in step order."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    return tuple(sorted((f for f in faults if f.kind == kind), key=lambda f: f.step))


def fire_once(marker_uri: str, fault: Fault, note: str, store_options: dict | None = None) -> bool:
    """True the first time ``fault`` is asked to fire in the run whose markers live at ``marker_uri``.

    After a failure Ray Train restarts the worker group from an earlier snapshot or checkpoint, so
    step S comes round again and the fault must not fire twice. The fact that it fired is a marker
    object in the object store, written *before* the fault strikes. The store rather than a named
    Ray actor: the fact must outlive the worker and, for ``node_loss``, the node; the store under the
    run's checkpoint URI is what the run resumes from, so wherever it can resume the marker is seen.
    """
    store = open_store(marker_uri, **(store_options or {}))
    marker = join(
        marker_uri,
        f"{fault.kind}-step{fault.step}" + (f"-node{fault.node}" if fault.node is not None else "") + ".fired",
    )
    if store.exists(marker):
        log.info("fault %s already fired in this run (%s); continuing", fault, marker)
        return False
    store.write_text(marker, note + "\n")
    return True


def local_marker_uri(path_or_uri: str) -> str:
    return path_or_uri if "://" in path_or_uri else "file://" + str(Path(path_or_uri).resolve())


class FaultInjector(Callback):
    """Kills rank 0's worker process after the step of each ``worker_crash`` fault, once per run.

    Give each run its own ``marker_uri`` (e.g. ``<checkpoint_uri>/<stage>/faults``): see :func:`fire_once`.
    """

    def __init__(self, faults: Sequence[Fault | str], marker_uri: str, store_options: dict | None = None) -> None:
        parsed = [f if isinstance(f, Fault) else parse_fault(f) for f in faults]
        self.crashes = {f.step: f for f in faults_of_kind(parsed, "worker_crash")}
        self.marker_uri = local_marker_uri(marker_uri)
        #: open_store keyword arguments (see components.common.artifacts.store_options) for an s3:// marker_uri
        self.store_options = dict(store_options or {})
        self._active = False

    @property
    def crash_steps(self) -> set[int]:
        return set(self.crashes)

    @classmethod
    def from_config(cls, cfg: LifecycleConfig, marker_uri: str) -> FaultInjector:
        """The injector of ``cfg.resilience.faults``, reaching ``marker_uri`` with ``cfg.storage``'s S3 settings."""
        return cls(parse_faults(cfg.resilience.faults), marker_uri, store_options(cfg))

    def pre_train(self, state: TrainState) -> None:
        self._active = state.rank == 0 and bool(self.crashes)

    def post_step(self, state: TrainState) -> None:
        fault = self.crashes.get(state.step) if self._active else None
        if fault is None:
            return
        if not fire_once(self.marker_uri, fault, f"rank {state.rank}, pid {os.getpid()}", self.store_options):
            return
        log.warning("injecting fault %s: exiting rank 0 (pid %d)", fault, os.getpid())
        exit_now()


def exit_now() -> None:
    """Die like a crashed process: no clean-up, but flush the logs first so the cause is on record."""
    logging.shutdown()  # os._exit skips interpreter clean-up
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class NodeKiller:
    """Keeper mixin for ``node_loss``: take down this keeper's whole node.

    Killing the raylet is what losing the machine looks like to Ray: the GCS marks the node dead,
    every process on it (training worker, this keeper) loses its raylet and exits, and its objects
    are gone. On KubeRay the pod then restarts and joins as a replacement node. Ray starts actor
    processes as descendants of their node's raylet, so the raylet is found among our ancestors.
    """

    def kill_node(self) -> None:
        import signal

        import psutil

        process = psutil.Process()
        while process is not None and "raylet" not in process.name():
            process = process.parent()
        if process is None:
            raise RuntimeError("node_loss: no raylet among this keeper's ancestor processes")
        log.warning("injecting node_loss: killing raylet pid %d of this node", process.pid)
        os.kill(process.pid, signal.SIGKILL)
        exit_now()
