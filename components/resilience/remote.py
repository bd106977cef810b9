"""Waiting for keeper calls: every wait has a deadline, and a missed one names the keeper's node and the call.

A keeper that neither answers nor dies (a hung process, a node cut off the network without Ray
noticing yet) would otherwise block its caller forever: the trainer's hand-off, rank 0's commit, a
recovery. Ray's own ``GetTimeoutError`` says only that *something* did not answer in time;
:class:`KeeperTimeoutError` says which keeper and which call. It is a ``GetTimeoutError`` too, so
code that treats a silent keeper like a lost one (``commit.UNREACHABLE``) keeps doing so.

The deadlines, by kind of call:

- :data:`CONTROL_TIMEOUT_S`: calls that only read or switch keeper state under its lock (status,
  inventory, commit, drop, new generation, blob listings). They are served by the keeper's
  ``control`` threads (``keeper_actor.py``), so they never queue behind data transfers; a minute
  without an answer means the keeper is gone in all but name.
- :data:`DATA_TIMEOUT_S`: calls that move a rank's share of the state (hand-off with its encoding
  and spreading, piece and blob transfers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from components.common.errors import RecoveryError

#: seconds a keeper may take to answer a control call (state under its lock, no bulk bytes)
CONTROL_TIMEOUT_S = 60.0
#: seconds a keeper may take to answer a data call (a rank's share encoded, spread or read back)
DATA_TIMEOUT_S = 600.0


class KeeperTimeoutError(RecoveryError, GetTimeoutError):
    """A keeper did not answer a call within its deadline; the message names the node and the call."""


def wait_for(ref: ray.ObjectRef, *, node: str, call: str, timeout_s: float) -> Any:
    """``ray.get(ref)`` within ``timeout_s``; a miss raises :class:`KeeperTimeoutError` naming ``node`` and ``call``."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError as e:
        raise KeeperTimeoutError(
            f"the snapshot keeper on node {node[:8]} did not answer {call} within {timeout_s:.0f} s: the keeper "
            "process is hung or its node is cut off; check that node (`ray status`, and the keeper actor's log)"
        ) from e


def wait_for_all(refs: Mapping[str, ray.ObjectRef], *, call: str, timeout_s: float) -> dict[str, Any]:
    """``{node: result}`` of one call made to several keepers, all within one ``timeout_s`` deadline.

    The first keeper that misses the deadline raises :class:`KeeperTimeoutError`; an error raised
    by a keeper (or its death) propagates as ``ray.get`` raises it.
    """
    if not refs:
        return {}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    for node, ref in refs.items():
        if ref not in done:
            wait_for(ref, node=node, call=call, timeout_s=0)  # raises, naming the first silent keeper
    return {node: ray.get(ref) for node, ref in refs.items()}
