"""Where the pieces of each rank's snapshot live: ``k + m`` distinct *hosts* per erasure-coding group.

Every rank is one group (its own disjoint part of the training state, see ``ownership.py``); the
group's payload is cut into ``k`` data and ``m`` parity pieces, placed on consecutive hosts of one
ring that starts at the rank's own host::

    ring:   [hosts of ranks 0, 1, ... in rank order (deduplicated)] + [other hosts, sorted]
    group g: host ring[home(g)], ring[home(g) + 1], ..., ring[home(g) + k + m - 1]   (indices mod len(ring))

The failure domain is the host, not the Ray node: two Ray nodes (pods) on one machine die together,
so a group never puts two pieces on one host while there are ``k + m`` hosts. On each host the piece
goes to one of its Ray nodes' keepers: piece 0 to the rank's own node (the hand-off stays local),
others rotate over the host's nodes by group, so no keeper of a multi-node host stores everything.

Which Ray nodes count, from their Ray node labels (:func:`eligible_nodes`):

- ``lmforge.io/host``: the host (Kubernetes node name; ``components/training/rayjob.py`` sets it). A
  node without it is its own host (the node id), with one warning: fine on a laptop, wrong on a
  cluster that packs several Ray pods on one machine.
- ``lmforge.io/role``: ``train`` (runs training ranks and a keeper) or ``keeper`` (holds pieces,
  runs no training) take part; any other value (``head``, ``cpu``: the head and CPU-only pools)
  holds no pieces. A node without the label takes part.

Consecutive placement spreads the pieces (and the parity) evenly over the keepers, and any ``m`` lost
hosts cost each group at most ``m`` pieces. It is a pure function of the ranks' nodes and the
eligible nodes, so every rank computes the same answer. With fewer than ``k + m`` hosts (nodes lost
and not replaced) :meth:`Placement.build` wraps the ring when asked to (``allow_fewer``): training goes
on, but a host then holds several pieces of a group, so one more loss can cost the in-memory tiers
(:attr:`Placement.short` says so; the persistent tier is unaffected).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from components.common.errors import ConfigError
from components.common.log import get_logger
from components.resilience.piece import PieceId
from components.training.rayjob import HOST_LABEL, PIECE_ROLES, ROLE_LABEL

log = get_logger(__name__)

_warned_unlabeled: set[str] = set()  # warn once per node and process, not at every restart


@dataclass(frozen=True)
class Placement:
    ring: tuple[str, ...]  # node ids, host by host in ring order
    #: node ids holding group g's pieces, in piece-index order (k data, then m parity)
    groups: tuple[tuple[str, ...], ...]
    hosts: int = 0  # distinct hosts in the ring
    #: fewer hosts than k + m: some host holds two pieces of a group (new snapshots less protected)
    short: bool = False

    @classmethod
    def build(
        cls,
        rank_nodes: Sequence[str],
        alive_nodes: Sequence[str] | Mapping[str, str],
        k: int,
        m: int,
        *,
        allow_fewer: bool = False,
    ) -> Placement:
        """Place every rank's group. ``alive_nodes``: eligible node ids, or ``{node id: host}``
        (a bare sequence makes every node its own host). Fewer than ``k + m`` hosts raise
        :class:`ConfigError` unless ``allow_fewer`` (a restart after losing nodes)."""
        host_of = dict(alive_nodes) if isinstance(alive_nodes, Mapping) else {n: n for n in alive_nodes}
        missing = [n[:8] for n in rank_nodes if n not in host_of]
        if missing:
            raise ConfigError(
                f"training ranks run on nodes {missing} that hold no snapshot pieces: they are not alive, or their "
                f"Ray node label {ROLE_LABEL} is not one of {', '.join(PIECE_ROLES)}. Label training nodes "
                f"{ROLE_LABEL}=train"
            )
        rank_hosts = [host_of[n] for n in rank_nodes]
        ring_hosts = list(dict.fromkeys(rank_hosts)) + sorted(set(host_of.values()) - set(rank_hosts))
        short = len(ring_hosts) < k + m
        if short and not allow_fewer:
            check_node_count(k, m, len(ring_hosts))
        # each host's nodes: those running ranks first (in rank order), then the others by id
        on_host: dict[str, list[str]] = {h: [] for h in ring_hosts}
        for node in list(dict.fromkeys(rank_nodes)) + sorted(set(host_of) - set(rank_nodes)):
            on_host[host_of[node]].append(node)
        home = {host: i for i, host in enumerate(ring_hosts)}
        groups = []
        for g, node in enumerate(rank_nodes):
            start = home[host_of[node]]
            nodes = [node]
            for j in range(1, k + m):
                candidates = on_host[ring_hosts[(start + j) % len(ring_hosts)]]
                nodes.append(candidates[(g + j // len(ring_hosts)) % len(candidates)])
            groups.append(tuple(nodes))
        ring = tuple(node for host in ring_hosts for node in on_host[host])
        return cls(ring, tuple(groups), hosts=len(ring_hosts), short=short)

    def expected(self, version: int) -> dict[str, set[PieceId]]:
        """``{node: piece ids it must hold}`` for ``version``; nodes holding none map to an empty set."""
        out: dict[str, set[PieceId]] = {node: set() for node in self.ring}
        for group, nodes in enumerate(self.groups):
            for index, node in enumerate(nodes):
                out[node].add(PieceId(version, group, index))
        return out

    def pieces_per_node(self) -> int:
        """The most pieces of one version any node holds (for the keeper budget)."""
        counts: dict[str, int] = {}
        for nodes in self.groups:
            for node in nodes:
                counts[node] = counts.get(node, 0) + 1
        return max(counts.values(), default=0)

    def to_dict(self) -> dict:
        return {
            "ring": list(self.ring),
            "groups": [list(g) for g in self.groups],
            "hosts": self.hosts,
            "short": self.short,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Placement:
        groups = tuple(tuple(g) for g in data["groups"])
        return cls(tuple(data["ring"]), groups, hosts=data.get("hosts", 0), short=data.get("short", False))


def check_node_count(k: int, m: int, nodes: int) -> None:
    """Each group's ``k + m`` pieces must sit on distinct hosts, or one host loss costs two pieces."""
    if k + m > nodes:
        raise ConfigError(
            f"resilience.k + resilience.m = {k} + {m} = {k + m} needs at least {k + m} Ray nodes on distinct hosts "
            f"(the pieces of a group live on distinct hosts, Ray node label {HOST_LABEL}), but the cluster has "
            f"{nodes}. Lower resilience.k or resilience.m, add nodes, or set resilience.enabled=false"
        )


def eligible_nodes(nodes: Iterable[Mapping]) -> dict[str, str]:
    """``{node id: host}`` of the alive nodes that may hold pieces, from ``ray.nodes()`` records.

    Nodes whose ``lmforge.io/role`` label is set to anything but ``train`` or ``keeper`` are left out;
    a node without a ``lmforge.io/host`` label is its own host, with one warning naming the nodes.
    """
    out: dict[str, str] = {}
    unlabeled = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        labels = node.get("Labels") or {}
        role = labels.get(ROLE_LABEL)
        if role is not None and role not in PIECE_ROLES:
            continue
        host = labels.get(HOST_LABEL)
        if not host:
            unlabeled.append(node["NodeID"])
            host = node["NodeID"]
        out[node["NodeID"]] = host
    unlabeled = [n for n in unlabeled if n not in _warned_unlabeled]
    _warned_unlabeled.update(unlabeled)
    if unlabeled:
        log.warning(
            "Ray nodes %s have no %s label: each counts as its own host, so two of them on one machine could hold "
            "two pieces of a snapshot group. Start Ray with --labels %s=<machine> (the RayJob builder does)",
            [n[:8] for n in unlabeled], HOST_LABEL, HOST_LABEL,
        )  # fmt: skip
    return out


def cluster_nodes() -> dict[str, str]:
    """:func:`eligible_nodes` of the connected Ray cluster."""
    import ray

    return eligible_nodes(ray.nodes())
