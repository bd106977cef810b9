"""Injected faults: parse ``cfg.resilience.faults`` and strike on cue, each once per run.

A fault spec is ``<kind>@step=<S>[,node=<N>][,rank=<R>][,after_s=<T>]``; the fault strikes right after
step S (``worker_hang``: inside step S+1, before its optimizer step). With ``after_s=T`` it strikes
instead after the first step >= S that ends at least T seconds after the worker group that executes it
began training (its ``pre_train``): a fault that comes hours into a run, when whatever the run keeps
warm is warm (``pretrain.spare_workers``: spare worker processes are asked for after a group's first
step and take tens of seconds to import torch and transformers on a busy node; the recovery benchmark's
warm-spare cases). Such a fault fires at a step that depends on the speed of the run, so a test that
must replay a loss curve bitwise gives none.

- ``worker_crash@step=S[,rank=R]``: rank R's training process (default rank 0) dies (``os._exit(1)``).
  Executed by :class:`FaultInjector`.
- ``worker_hang@step=S[,rank=R]``: rank R (default 0) stops making progress inside the next step (it
  sleeps before its optimizer step, as a rank stuck in a kernel or a lost collective would); the
  other ranks then wait for it in the next collective. The hang watchdog (``watchdog.py``) must
  notice, log the hung rank and its stack, and end the worker group so Ray Train restarts it.
  Executed by :class:`FaultInjector`; needs the watchdog (``resilience.hang_factor > 0``).
- ``node_loss@step=S[,node=N]``: the node running rank N (default: the highest rank) dies: its raylet
  is killed, and with it every process of the node, the training worker and the snapshot keeper
  included. Several ``node_loss`` at one step lose several nodes at once.
- ``keeper_crash@step=S[,node=N]``: once snapshot S is committed, the snapshot keeper actor on the
  node running rank N (default: the highest rank) is killed; the node and its training worker live.
  The next snapshot's hand-off to that keeper fails, so the worker group restarts; recovery decodes
  around the pieces the keeper held, and a new keeper is started on that node for the new group.
- ``commit_cut@step=S``: rank 0 (the commit coordinator) dies in the middle of committing snapshot S,
  after some keepers committed it and before the others did. Recovery settles the half-done commit
  (``commit.py``: ``newest_common_committed`` rolls the others forward) and restores S.
- ``corrupt_piece@step=S``: once snapshot S is committed, one byte of its first data piece (group 0,
  index 0) is flipped in its keeper; the next recovery must notice and decode around it.

The faults acting on keepers and commits (``node_loss``, ``keeper_crash``, ``commit_cut``,
``corrupt_piece``) need ``resilience.enabled``; the resilience callback
(``components/resilience/callback.py``) executes them (:class:`NodeKiller` is the keeper's part of
``node_loss``, :func:`cut_commit` the coordinator's part of ``commit_cut``). Every fault fires once
per run: :func:`fire_once` records it in the object store before it strikes, and every firing is
logged as ``injecting fault <spec>``.

Several faults in one string are separated by ``;``, because ``,`` already joins ``node=N`` to its
fault: ``--set "resilience.faults=worker_crash@step=4,rank=1;node_loss@step=6,node=2"``. For
forgiveness, ``,`` between two faults works too (a part without ``@`` continues the fault before it).
:func:`draw_faults` draws a small plan of faults at random steps from a seed (property tests, drills).
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import time
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

KINDS = ("worker_crash", "worker_hang", "node_loss", "keeper_crash", "commit_cut", "corrupt_piece")
#: the kinds that take ``rank=R`` (a training rank) and ``node=N`` (the node running rank N)
TAKES_RANK = ("worker_crash", "worker_hang")
TAKES_NODE = ("node_loss", "keeper_crash")
ACCEPTED = (
    "worker_crash@step=S[,rank=R], worker_hang@step=S[,rank=R], node_loss@step=S[,node=N], "
    "keeper_crash@step=S[,node=N], commit_cut@step=S, corrupt_piece@step=S; any of them with ,after_s=T "
    "(several: separate with ';')"
)
_FAULT = re.compile(r"(?P<kind>[a-z_]+)@step=(?P<step>\d+)(?P<options>(?:,[a-z_]+=\d+)*)")
_OPTION = re.compile(r",(?P<key>[a-z_]+)=(?P<value>\d+)")


@dataclass(frozen=True)
class Fault:
    kind: str
    #: optimizer steps completed when the fault strikes (>= 1)
    step: int
    #: node_loss, keeper_crash: the node running this rank (None: the highest rank)
    node: int | None = None
    #: worker_crash, worker_hang: the rank that crashes or hangs (None: rank 0)
    rank: int | None = None
    #: strike only once the executing worker group has trained this many seconds (None: right at step S)
    after_s: int | None = None

    def __str__(self) -> str:
        return (
            f"{self.kind}@step={self.step}"
            + (f",node={self.node}" if self.node is not None else "")
            + (f",rank={self.rank}" if self.rank is not None else "")
            + (f",after_s={self.after_s}" if self.after_s is not None else "")
        )

    def due(self, step: int, trained_s: float) -> bool:
        """Whether the fault strikes now: ``step`` optimizer steps completed, ``trained_s`` seconds since the
        executing worker group began training. Without ``after_s`` only at step S itself (a group that resumes
        past S never sees it), with it at any step from S on once the time has come."""
        if self.after_s is None:
            return step == self.step
        return step >= self.step and self.waited(trained_s)

    def waited(self, trained_s: float) -> bool:
        """Whether ``after_s`` (if any) has passed, ``trained_s`` seconds after the worker group began training."""
        return self.after_s is None or trained_s >= self.after_s

    @property
    def marker(self) -> str:
        """The name of this fault's marker object (see :func:`fire_once`)."""
        return (
            f"{self.kind}-step{self.step}"
            + (f"-node{self.node}" if self.node is not None else "")
            + (f"-rank{self.rank}" if self.rank is not None else "")
            + (f"-after{self.after_s}s" if self.after_s is not None else "")
            + ".fired"
        )


def parse_fault(spec: str) -> Fault:
    """One spec, e.g. ``node_loss@step=6,node=2``; a malformed spec raises :class:`ConfigError`."""
    text = re.sub(r"\s+", "", spec)
    match = _FAULT.fullmatch(text)
    options: dict[str, int] = {}
    problem = ""
    if not match:
        problem = "not of the form kind@step=S"
    else:
        for option in _OPTION.finditer(match["options"]):
            if option["key"] in options:
                problem = f"{option['key']}= given twice"
            options[option["key"]] = int(option["value"])
    if problem:
        pass  # reported below
    elif match["kind"] not in KINDS:
        problem = f"unknown kind {match['kind']!r}"
    elif int(match["step"]) < 1:
        problem = "step must be >= 1 (a fault strikes after a completed step)"
    elif unknown := sorted(set(options) - {"node", "rank", "after_s"}):
        problem = f"unknown option {unknown[0]}=; options are node=N, rank=R and after_s=T"
    elif "node" in options and match["kind"] not in TAKES_NODE:
        problem = f"only {' and '.join(TAKES_NODE)} take node=N"
    elif "rank" in options and match["kind"] not in TAKES_RANK:
        problem = f"only {' and '.join(TAKES_RANK)} take rank=R"
    if problem:
        raise ConfigError(f"resilience.faults: cannot parse fault {spec!r}: {problem}; accepted forms: {ACCEPTED}")
    return Fault(
        kind=match["kind"],
        step=int(match["step"]),
        node=options.get("node"),
        rank=options.get("rank"),
        after_s=options.get("after_s"),
    )


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


#: the kinds :func:`draw_faults` draws from: each ends in a restart of the worker group
DRAWN_KINDS = ("worker_crash", "worker_hang", "keeper_crash", "commit_cut")


def draw_faults(
    seed: int, *, steps: int, world_size: int, count: int = 2, kinds: Sequence[str] = DRAWN_KINDS, gap: int = 3
) -> tuple[Fault, ...]:
    """A plan of ``count`` faults drawn from ``seed``: kinds, steps in ``[2, steps - 2]``, ranks and nodes.

    Steps are at least ``gap`` apart, so every fault fires: a fault's restart resumes at most one
    snapshot behind it, and the next fault is due after that. The same seed gives the same plan.
    """
    rng = random.Random(seed)
    first, last = 2, steps - 2
    slack = last - first - gap * (count - 1)  # room left once the gaps are laid out
    if count < 1 or slack < 0:
        raise ValueError(f"cannot place {count} faults {gap} steps apart in a run of {steps} steps")
    # sorted offsets drawn with replacement, then spread by the gaps: uniform over the valid placements
    offsets = sorted(rng.randint(0, slack) for _ in range(count))
    chosen = [first + offset + gap * i for i, offset in enumerate(offsets)]
    plan = []
    for step in sorted(chosen):
        kind = rng.choice(list(kinds))
        who = rng.randrange(world_size)
        plan.append(
            Fault(
                kind,
                step,
                node=who if kind in TAKES_NODE else None,
                rank=who if kind in TAKES_RANK else None,
            )
        )
    return tuple(plan)


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
    marker = join(marker_uri, fault.marker)
    if store.exists(marker):
        log.info("fault %s already fired in this run (%s); continuing", fault, marker)
        return False
    store.write_text(marker, note + "\n")
    log.warning("injecting fault %s (%s)", fault, note)
    return True


def fired_faults(marker_uri: str, store_options: dict | None = None) -> list[str]:
    """The marker names of every fault that fired in the run whose markers live at ``marker_uri``."""
    marker_uri = local_marker_uri(marker_uri)
    store = open_store(marker_uri, **(store_options or {}))
    return sorted(uri.rsplit("/", 1)[-1] for uri in store.list(marker_uri) if uri.endswith(".fired"))


def local_marker_uri(path_or_uri: str) -> str:
    return path_or_uri if "://" in path_or_uri else "file://" + str(Path(path_or_uri).resolve())


class FaultInjector(Callback):
    """Crashes or hangs a training rank on cue: ``worker_crash`` and ``worker_hang``, once per run each.

    A crash exits the process right after step S; a hang sleeps inside step S+1, before its optimizer
    step (the gradients are all-reduced, the other ranks go on to the next collective and wait there),
    until the hang watchdog ends the process. Give each run its own ``marker_uri`` (e.g.
    ``<checkpoint_uri>/<stage>/faults``): see :func:`fire_once`.
    """

    def __init__(self, faults: Sequence[Fault | str], marker_uri: str, store_options: dict | None = None) -> None:
        parsed = [f if isinstance(f, Fault) else parse_fault(f) for f in faults]
        self.crashes = faults_of_kind(parsed, "worker_crash")
        self.hangs = faults_of_kind(parsed, "worker_hang")
        self.marker_uri = local_marker_uri(marker_uri)
        #: open_store keyword arguments (see components.common.artifacts.store_options) for an s3:// marker_uri
        self.store_options = dict(store_options or {})
        self._crashes: list[Fault] = []  # this rank's, not yet tried by this worker group
        self._hangs: list[Fault] = []
        self._began = 0.0  # when this worker group began training (time.monotonic(): after_s counts from it)

    @property
    def crash_steps(self) -> set[int]:
        return {f.step for f in self.crashes}

    @classmethod
    def from_config(cls, cfg: LifecycleConfig, marker_uri: str) -> FaultInjector:
        """The injector of ``cfg.resilience.faults``, reaching ``marker_uri`` with ``cfg.storage``'s S3 settings."""
        return cls(parse_faults(cfg.resilience.faults), marker_uri, store_options(cfg))

    def pre_train(self, state: TrainState) -> None:
        for fault in (*self.crashes, *self.hangs):
            if (fault.rank or 0) >= state.world_size:
                raise ConfigError(
                    f"resilience.faults: {fault} names rank {fault.rank}; ranks are 0..{state.world_size - 1}"
                )
        # this rank's faults only; a later fault at the same step would never be reached
        self._crashes = [f for f in self.crashes if (f.rank or 0) == state.rank]
        self._hangs = [f for f in self.hangs if (f.rank or 0) == state.rank]
        self._began = time.monotonic()

    def pre_optimizer_step(self, state: TrainState) -> None:
        fault = take_due(self._hangs, state.step, time.monotonic() - self._began)  # this is step S + 1
        if fault is not None and self._fire(fault, state):
            hang_forever()

    def post_step(self, state: TrainState) -> None:
        fault = take_due(self._crashes, state.step, time.monotonic() - self._began)
        if fault is not None and self._fire(fault, state):
            log.warning("fault %s: exiting rank %d (pid %d)", fault, state.rank, os.getpid())
            exit_now()

    def _fire(self, fault: Fault, state: TrainState) -> bool:
        return fire_once(self.marker_uri, fault, f"rank {state.rank}, pid {os.getpid()}", self.store_options)


def take_due(pending: list[Fault], step: int, trained_s: float) -> Fault | None:
    """Remove from ``pending`` and return the first fault due now (:meth:`Fault.due`), if any. A worker group
    tries each fault once: the marker look-up of :func:`fire_once` is not repeated every step after S."""
    for i, fault in enumerate(pending):
        if fault.due(step, trained_s):
            return pending.pop(i)
    return None


def hang_forever() -> None:
    """Stop making progress, as a rank stuck in a kernel or a lost collective does (``worker_hang``).

    Only the hang watchdog (or a kill) ends it; the frames of this function are what its stack shows.
    """
    log.warning("fault worker_hang: this rank stops making progress (pid %d)", os.getpid())
    while True:
        time.sleep(1.0)


def exit_now(code: int = 1) -> None:
    """Die like a crashed process: no clean-up, but flush the logs first so the cause is on record."""
    logging.shutdown()  # os._exit skips interpreter clean-up
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cut_commit(keepers: dict, version: int, expected: dict) -> None:
    """``commit_cut``: commit ``version`` on some of its keepers, then kill this process (rank 0).

    Called by the commit coordinator (``sink.py``) once every piece of ``version`` is stored, in place
    of the two-phase commit: phase 1 is checked as ``commit.py`` does, phase 2 reaches only the first
    half of the keepers (at least one, never all), so the survivors disagree on the newest committed
    version exactly as after a coordinator that died between its phase-2 calls.
    """
    import ray

    involved = sorted(node for node in expected if node in keepers)
    held = ray.get([keepers[n].pieces.remote(version) for n in involved])
    if any(not expected[n] <= set(ids) for n, ids in zip(involved, held, strict=True)):
        log.warning("commit_cut: version %d is incomplete, so no commit would start; not cutting", version)
        return
    first = involved[: max(1, len(involved) // 2)]
    ray.get([keepers[n].commit.remote(version, set(expected[n])) for n in first])
    log.warning(
        "fault commit_cut: version %d committed on %d of %d keepers (%s); the coordinator dies now",
        version, len(first), len(involved), ", ".join(n[:8] for n in first),
    )  # fmt: skip
    exit_now()


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
