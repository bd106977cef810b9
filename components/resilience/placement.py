"""Where the pieces of each rank's snapshot live: ``k + m`` distinct nodes per erasure-coding group.

Every rank is one group (its own disjoint part of the training state, see ``ownership.py``); the
group's payload is cut into ``k`` data and ``m`` parity pieces, placed on consecutive nodes of one
ring that starts at the rank's own node::

    ring:   [nodes of ranks 0, 1, ... in rank order (deduplicated)] + [other nodes, sorted by id]
    group g: ring[home(g)], ring[home(g) + 1], ..., ring[home(g) + k + m - 1]   (indices mod len(ring))

Consecutive placement spreads the pieces (and the parity) evenly over the keepers, so no keeper
encodes or stores everything, and any ``m`` lost nodes cost each group at most ``m`` pieces. It is
a pure function of the ranks' nodes and the alive nodes, so every rank computes the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components.common.errors import ConfigError
from components.resilience.piece import PieceId


@dataclass(frozen=True)
class Placement:
    ring: tuple[str, ...]  # node ids
    #: node ids holding group g's pieces, in piece-index order (k data, then m parity)
    groups: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, rank_nodes: Sequence[str], alive_nodes: Sequence[str], k: int, m: int) -> Placement:
        missing = [n[:8] for n in rank_nodes if n not in alive_nodes]
        if missing:
            raise ConfigError(f"training ranks run on nodes {missing} that have no snapshot keeper")
        ring = list(dict.fromkeys(rank_nodes)) + sorted(set(alive_nodes) - set(rank_nodes))
        check_node_count(k, m, len(ring))
        home = {node: i for i, node in enumerate(ring)}
        groups = tuple(tuple(ring[(home[node] + j) % len(ring)] for j in range(k + m)) for node in rank_nodes)
        return cls(tuple(ring), groups)

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


def check_node_count(k: int, m: int, nodes: int) -> None:
    """Each group's ``k + m`` pieces must sit on distinct nodes, or one node loss costs two pieces."""
    if k + m > nodes:
        raise ConfigError(
            f"resilience.k + resilience.m = {k} + {m} = {k + m} needs at least {k + m} Ray nodes (the pieces of "
            f"a group live on distinct nodes), but the cluster has {nodes}. Lower resilience.k or resilience.m, "
            "add nodes, or set resilience.enabled=false"
        )
