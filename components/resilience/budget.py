"""How much memory a snapshot keeper needs, from the real layout of the ranks' shares.

A keeper holds :data:`~components.resilience.keeper.VERSIONS_HELD` versions of the pieces placed on
its node, and while its node's ranks hand off it also holds, for each of them, the framed payload
that arrived as the call's argument and the pieces the codec made from it that go to other nodes
(they live until Ray has sent them). So per node::

    need = VERSIONS_HELD × (bytes of one version's pieces held here) + (transient bytes of a hand-off)

Two estimates of it, both checked against ``resilience.keeper_memory_mb`` with :data:`HEADROOM`:

- *before the fit* (``driver.py``): from the model built on the meta device, partitioned exactly as
  the ranks will (``ownership.py``: balanced by bytes, yet its largest part can exceed the mean by one
  parameter, and the embedding dominates small models), each share laid out as the snapshot will be
  (``layout.py``, alignment and meta region included), framed (``payload.py``) and cut into pieces
  by the configured codec. The placement is not known yet, so every group counts at the largest
  share's size.
- *after the first snapshot* (``sink.py``): every keeper reports what it really holds of the
  committed version and what its hand-offs held in transit (``spread.py``), so the actual sizes
  (optimizer state included) are checked before a later version can overflow the budget mid-run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from components.common.errors import ConfigError
from components.resilience.codec import make_codec
from components.resilience.keeper import MIB, VERSIONS_HELD
from components.resilience.layout import DEFAULT_META_CAPACITY, SnapshotLayout
from components.resilience.ownership import parameter_sizes, partition
from components.resilience.payload import frame

#: share of the keeper budget left free by the measured need: the actor's own Python heap, Ray's
#: argument buffers and allocator fragmentation are not counted in it
HEADROOM = 0.10


@dataclass(frozen=True)
class KeeperNeed:
    """One keeper's memory need for a run: bytes held per version, and bytes alive during hand-offs."""

    stored: int
    transient: int = 0

    @property
    def total(self) -> int:
        return VERSIONS_HELD * self.stored + self.transient

    @property
    def with_headroom(self) -> int:
        return math.ceil(self.total / (1 - HEADROOM))

    def describe(self) -> str:
        return (
            f"{VERSIONS_HELD} versions × {self.stored / MIB:.1f} MiB of pieces + {self.transient / MIB:.1f} MiB in "
            f"transit during hand-offs = {self.total / MIB:.1f} MiB, plus {HEADROOM:.0%} headroom"
        )


def check_need(budget_mb: int, need: KeeperNeed, where: str) -> None:
    """Raise a :class:`ConfigError` naming ``resilience.keeper_memory_mb`` and the MiB needed if ``need`` does not fit."""
    if need.with_headroom <= budget_mb * MIB:
        return
    raise ConfigError(
        f"resilience.keeper_memory_mb={budget_mb} is too small: {where}, a snapshot keeper needs "
        f"{need.describe()}. Set resilience.keeper_memory_mb to at least {-(-need.with_headroom // MIB)}, or spread "
        "the state thinner: more nodes, or a larger resilience.k (each keeper then holds less of each group)"
    )


def framed_share_bytes(
    module: torch.nn.Module, world_size: int, meta_capacity: int = DEFAULT_META_CAPACITY
) -> list[int]:
    """Bytes of every rank's framed snapshot payload (layout header + buffer), rank by rank.

    Works on a module built on the meta device: AdamW's state is described, not allocated, the way
    AdamW creates it at the first step (``step`` a float32 scalar on the CPU, the moments like the
    parameter). The layout's JSON then says ``"on_param_device": false`` for every ``step``, as on a
    GPU; on a CPU run it says ``true``, one byte shorter per parameter, so the estimate errs high.
    """
    optimized = [p for p in module.parameters() if p.requires_grad]
    optimizer = SimpleNamespace(
        param_groups=[{"params": optimized}],
        state={
            p: {"exp_avg": torch.empty_like(p), "exp_avg_sq": torch.empty_like(p), "step": torch.tensor(0.0)}
            for p in optimized
        },
    )
    sizes = []
    for names in partition(parameter_sizes(module), world_size):
        layout = SnapshotLayout.build(module, optimizer, names, meta_capacity=meta_capacity)
        sizes.append(len(frame(layout, b"")) + layout.total_bytes)  # frame() of an empty buffer: the header alone
    return sizes


def piece_bytes(scheme: str, k: int, m: int, payload_bytes: int) -> int:
    """Bytes of each of the ``k + m`` pieces the codec of ``scheme`` makes from ``payload_bytes``."""
    return make_codec(scheme, k, m).piece_size(payload_bytes)


def estimate_before_fit(payloads: Sequence[int], *, nodes: int, codec: tuple[str, int, int]) -> KeeperNeed:
    """The most loaded keeper's need, before the placement is known: every group at the largest share.

    Each node holds at most one piece per group, about ``(k + m) / nodes`` of all pieces; the ranks
    are assumed spread evenly over the nodes (those on one node hand off at the same time).
    """
    scheme, k, m = codec
    groups = len(payloads)
    largest = max(payloads)
    piece = piece_bytes(scheme, k, m, largest)
    pieces_per_node = min(groups, -(-groups * (k + m) // nodes))
    ranks_per_node = -(-groups // nodes)
    # a hand-off holds its payload and the pieces bound for other nodes (one of k + m stays here)
    transient = ranks_per_node * (largest + (k + m - 1) * piece)
    return KeeperNeed(stored=pieces_per_node * piece, transient=transient)
