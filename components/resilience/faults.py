"""Injected faults: parse ``cfg.resilience.faults`` and crash a training worker on cue, once per run.

A fault spec is ``<kind>@step=<S>[,node=<N>]``:

- ``worker_crash@step=S``: rank 0's training process dies (``os._exit(1)``) right after step S.
  Executed here, by :class:`FaultInjector`.
- ``node_loss@step=S[,node=N]``: a whole node (the N-th, default chosen by the test harness) is lost.
- ``corrupt_piece@step=S``: one stored snapshot piece of step S gets a flipped byte.

``node_loss`` and ``corrupt_piece`` are only parsed and exposed (:func:`faults_of_kind`) for now: they
act on nodes and snapshot keepers, so they are executed by the keepers and the cluster test harness
once those exist, not by a training-loop callback.

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

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger
from components.common.storage import join, open_store
from components.pretrain.callbacks import Callback, TrainState

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


class FaultInjector(Callback):
    """Kills rank 0's worker process after the step of each ``worker_crash`` fault, once per run.

    After the crash Ray Train restarts the worker group from an earlier checkpoint (or snapshot),
    so step S comes round again; the fault must not fire twice. The fact that it fired is kept as a
    marker object under ``marker_uri`` in the object store (``file://`` or ``s3://``, or a local
    directory), written before the process dies. The store rather than a named detached Ray actor,
    because the fact must outlive more than the worker: an actor lives on one node and dies with it
    under ``node_loss``, and it needs its own clean-up; the store under the run's checkpoint URI is
    what Ray Train itself resumes from, so wherever the run can resume the marker is visible, and it
    disappears with the run's checkpoints. Give each run its own ``marker_uri`` (e.g.
    ``<checkpoint_uri>/<stage>/faults``).
    """

    def __init__(self, faults: Sequence[Fault | str], marker_uri: str, store_options: dict | None = None) -> None:
        parsed = [f if isinstance(f, Fault) else parse_fault(f) for f in faults]
        self.crash_steps = {f.step for f in faults_of_kind(parsed, "worker_crash")}
        self.marker_uri = marker_uri if "://" in marker_uri else "file://" + str(Path(marker_uri).resolve())
        #: open_store keyword arguments (s3_endpoint, s3_secure, s3_region) for an s3:// marker_uri
        self.store_options = dict(store_options or {})
        self._active = False

    @classmethod
    def from_config(cls, cfg: LifecycleConfig, marker_uri: str) -> FaultInjector:
        """The injector of ``cfg.resilience.faults``, reaching ``marker_uri`` with ``cfg.storage``'s S3 settings."""
        options = {"s3_endpoint": cfg.storage.s3_endpoint, "s3_secure": cfg.storage.s3_secure}
        return cls(parse_faults(cfg.resilience.faults), marker_uri, {**options, "s3_region": cfg.storage.s3_region})

    def pre_train(self, state: TrainState) -> None:
        self._active = state.rank == 0 and bool(self.crash_steps)

    def marker(self, step: int) -> str:
        return join(self.marker_uri, f"worker_crash-step{step}.fired")

    def post_step(self, state: TrainState) -> None:
        if not self._active or state.step not in self.crash_steps:
            return
        store = open_store(self.marker_uri, **self.store_options)
        marker = self.marker(state.step)
        if store.exists(marker):
            log.info("fault worker_crash@step=%d already fired in this run (%s); continuing", state.step, marker)
            return
        store.write_text(marker, f"rank {state.rank}, pid {os.getpid()}\n")
        log.warning("injecting fault worker_crash@step=%d: exiting rank 0 (pid %d)", state.step, os.getpid())
        logging.shutdown()  # flush every handler: os._exit skips interpreter clean-up
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
