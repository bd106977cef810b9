"""The commit protocol: a snapshot version counts only once every piece of every group is stored.

Two phases, run by one coordinator (rank 0) over the keeper actors:

1. *Prepare*: ask every keeper which pieces of ``version`` it holds intact. If any expected piece is
   missing anywhere, or a keeper does not answer, abort: every keeper drops the partial version and
   keeps the previous committed one. When the writers can vouch for their pieces themselves (each
   rank's hand-off returns only once every piece of its group is stored and verified, and the ranks
   agree over a process group of their own that every hand-off returned: ``sink.py``), phase 1 asks
   no keeper at all (``stored=True``).
2. *Commit*: tell every keeper to commit ``version``. The decision is taken at the end of phase 1;
   a keeper whose commit then fails (a piece damaged in between) is rolled forward with the pieces it
   still holds, and the damaged piece counts as lost, to be decoded from parity like a lost node's.

A coordinator can die between the phases, leaving some keepers on ``v`` and others on ``v - 1``
with ``v`` fully written. ``newest_common_committed`` settles that on recovery: the newest version any
surviving keeper committed was decided (only phase 1 success leads to a commit), so keepers still
writing it are rolled forward; versions newer than it were never decided and are dropped, so a
rerun of that version starts clean. All ranks then restore one version.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

from components.common.log import get_logger
from components.resilience.dataplane import LinkLostError
from components.resilience.keeper import IncompleteVersionError, KeeperStatus
from components.resilience.keeper_client import KeeperClient, Pending, RayPending, client_of
from components.resilience.piece import PieceId
from components.resilience.remote import CONTROL_TIMEOUT_S

log = get_logger(__name__)

#: seconds a keeper may take to answer one round of protocol calls before it counts as lost
CALL_TIMEOUT_S = CONTROL_TIMEOUT_S
#: a keeper that is dead or silent: the protocol treats it as lost with its node
UNREACHABLE = (RayActorError, GetTimeoutError, LinkLostError)
#: a keeper as the protocol takes it: a client (data plane, then Ray) or a bare Ray actor handle
Keeper = KeeperClient | ActorHandle


@dataclass(frozen=True)
class CommitOutcome:
    version: int
    committed: bool
    #: node id -> expected pieces that keeper did not hold intact in phase 1
    missing: dict[str, list[PieceId]] = field(default_factory=dict)
    #: node ids whose keeper did not answer (dead, silent, or no keeper on that node)
    unreachable: list[str] = field(default_factory=list)
    #: node ids rolled forward in phase 2 because a piece was damaged after phase 1
    rolled_forward: list[str] = field(default_factory=list)


def _answers(calls: Mapping[str, Pending], timeout_s: float, call: str) -> tuple[dict, list[str]]:
    """Results of one round of keeper calls (one deadline for all), and the node ids whose keeper did not
    answer; each silent or dead keeper is logged with its node and the call."""
    answers, silent = {}, []
    deadline = time.monotonic() + timeout_s
    for node, pending in calls.items():
        try:
            answers[node] = pending.result(max(0.0, deadline - time.monotonic()))
        except GetTimeoutError:
            log.warning("keeper on node %s did not answer %s within %.0f s: counted as lost", node[:8], call, timeout_s)
            silent.append(node)
        except (RayActorError, LinkLostError):
            log.warning("keeper on node %s died before answering %s: counted as lost", node[:8], call)
            silent.append(node)
    return answers, silent


def _pending(answer: Pending | ray.ObjectRef, node: str, call: str) -> Pending:
    return RayPending(answer, node=node, call=call) if isinstance(answer, ray.ObjectRef) else answer


def commit_version(
    keepers: Mapping[str, Keeper],
    version: int,
    expected_by_keeper: Mapping[str, set[PieceId]],
    *,
    timeout_s: float = CALL_TIMEOUT_S,
    prepared: Mapping[str, Pending | ray.ObjectRef] | None = None,
    prepared_timeout_s: float | None = None,
    stored: bool = False,
) -> CommitOutcome:
    """Commit ``version`` on every keeper named in ``expected_by_keeper`` if all its pieces are stored.

    ``prepared``: phase 1 already asked, one call per involved keeper whose answer is the list of
    intact pieces it holds (``prepare``, which first waits for the expected ones): the commit then
    costs one round of calls fewer. Answers are awaited up to ``prepared_timeout_s``.

    ``stored=True``: phase 1 was settled by the writers themselves, without asking the keepers: every
    rank's hand-off returned only once each piece of its group was stored and verified by its holder,
    and the ranks agreed that all of them did (``sink.py``). Only keepers missing from ``keepers``
    still abort; a piece damaged since its put is caught by phase 2, as after ``prepare``.
    """
    absent = [node for node in expected_by_keeper if node not in keepers]
    involved = {node: client_of(keepers[node], node) for node in expected_by_keeper if node in keepers}
    if stored:
        held, silent = {node: expected_by_keeper[node] for node in involved}, []
    elif prepared is None:
        held, silent = _answers(
            {n: k.call("pieces", version) for n, k in involved.items()}, timeout_s, f"pieces(version {version})"
        )
    else:
        held, silent = _answers(
            {n: _pending(prepared[n], n, "prepare") for n in involved},
            prepared_timeout_s or timeout_s,
            f"prepare(version {version})",
        )
    missing = {
        node: sorted(expected_by_keeper[node] - set(held[node]), key=lambda p: (p.group, p.index))
        for node in held
        if not expected_by_keeper[node] <= set(held[node])
    }
    unreachable = absent + silent
    if missing or unreachable:
        # Abort: drop the partial version wherever a keeper still answers; the previous stays committed.
        _drop(involved, held, version, timeout_s)
        log.warning(
            "snapshot version %d aborted: %d piece(s) missing on %d keeper(s), %d keeper(s) unreachable",
            version,
            sum(len(ids) for ids in missing.values()),
            len(missing),
            len(unreachable),
        )
        return CommitOutcome(version, False, missing, unreachable)

    acked, rolled, lost = [], [], []
    calls = {n: k.call("commit", version, set(expected_by_keeper[n])) for n, k in involved.items()}
    for node, pending in calls.items():
        try:
            pending.result(timeout_s)
            acked.append(node)
        except IncompleteVersionError:
            (rolled if _roll_forward(involved[node], version, timeout_s) else lost).append(node)
        except UNREACHABLE:
            lost.append(node)
    if rolled or lost:
        log.warning("snapshot version %d committed; rolled forward on %s, keepers lost on %s", version, rolled, lost)
    return CommitOutcome(version, bool(acked or rolled), {}, lost, rolled)


def abort_version(
    keepers: Mapping[str, Keeper],
    version: int,
    expected_by_keeper: Mapping[str, set[PieceId]],
    *,
    timeout_s: float = CALL_TIMEOUT_S,
) -> CommitOutcome:
    """Drop ``version`` on every keeper named in ``expected_by_keeper``: a rank's hand-off of it failed
    (the ranks agreed so, ``sink.py``); the previous committed version stays."""
    involved = {node: client_of(keepers[node], node) for node in expected_by_keeper if node in keepers}
    _drop(involved, involved, version, timeout_s)
    log.warning("snapshot version %d aborted: a rank's hand-off of it failed (see that rank's log)", version)
    return CommitOutcome(version, False)


def _drop(involved: Mapping[str, KeeperClient], nodes: Collection[str], version: int, timeout_s: float) -> None:
    """One round of ``drop(version)`` to the keepers of ``nodes`` (silent or dead ones logged)."""
    _answers({n: involved[n].call("drop", version) for n in nodes}, timeout_s, f"drop(version {version})")


def _roll_forward(keeper: KeeperClient, version: int, timeout_s: float) -> bool:
    """Commit a decided ``version`` on ``keeper`` with whatever pieces of it the keeper still holds;
    False if the keeper is gone meanwhile."""
    try:
        intact = keeper.call("pieces", version).result(timeout_s)
        keeper.call("commit", version, set(intact)).result(timeout_s)
    except UNREACHABLE:
        return False
    return True


def newest_common_committed(keepers: Mapping[str, Keeper], *, timeout_s: float = CALL_TIMEOUT_S) -> int | None:
    """The newest version every surviving keeper holds as committed (after settling a half-done commit).

    Dead keepers are skipped, and so are empty ones (a fresh keeper on a replacement node has nothing
    to say). ``None`` means memory holds no version all agree on: recover from the persistent tier.
    """
    keepers = {n: client_of(k, n) for n, k in keepers.items()}
    statuses, _ = _answers({n: k.call("status") for n, k in keepers.items()}, timeout_s, "status()")
    voters: dict[str, KeeperStatus] = {
        n: s for n, s in statuses.items() if s.committed is not None or s.writing is not None
    }
    decided = max((s.committed for s in voters.values() if s.committed is not None), default=None)
    # Undecided versions (newer than any commit) are dropped, so a rerun of that version starts clean.
    undecided = {
        n: s.writing for n, s in voters.items() if s.writing is not None and (decided is None or s.writing > decided)
    }
    _answers({n: keepers[n].call("drop", v) for n, v in undecided.items()}, timeout_s, "drop(undecided version)")
    if decided is None:
        return None
    behind = [n for n, s in voters.items() if s.committed != decided and s.writing != decided]
    if behind:
        log.warning(
            "keepers disagree on the newest committed version: %s",
            {n[:8]: (s.committed, s.writing) for n, s in voters.items()},
        )
        return None
    for node, status in voters.items():
        if status.committed != decided and _roll_forward(keepers[node], decided, timeout_s):
            log.info("keeper on node %s rolled forward to version %d (its phase 2 was cut off)", node[:8], decided)
    return decided
