"""Which rank snapshots which parameter: disjoint parts that together cover the whole model.

With DDP every rank holds a full replica of the parameters and of the optimizer state, so if every
rank snapshotted everything the keepers would hold ``world_size`` identical copies. Instead each
parameter gets exactly one *owner*, and a rank snapshots only the parameters it owns (plus their
optimizer state). After a restore, the owners broadcast their parts so every replica is whole again.

The partition is the classic greedy "largest first to the least-loaded rank" (LPT scheduling): it
needs no communication, because every rank computes the same answer from the same
``named_parameters()`` sizes, and its largest part exceeds the mean by at most one parameter's size.
Ties are broken by name and by rank index, so the result does not depend on the input order.

FSDP2 (``pretrain.parallelism=fsdp``): with ``fully_shard`` each rank already holds a distinct shard of
every parameter (the local tensor of a ``DTensor``) and of its AdamW state, so no partition is needed:
a rank snapshots *all* names (:func:`snapshot_names`), and the layout reads ``param.to_local()``
(``components.resilience.layout``). Nobody else holds a rank's shards, so nothing is broadcast after
a restore either: each rank restores its own group.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import torch

from components.training.parallel import is_sharded


def parameter_sizes(module: torch.nn.Module) -> list[tuple[str, int]]:
    """``(name, bytes)`` of every parameter, in ``named_parameters()`` order.

    ``named_parameters()`` lists a tied parameter once (e.g. ``lm_head.weight`` shares
    ``model.embed_tokens.weight`` in the tiny preset), so shared storage is never owned twice.
    """
    return [(name, p.numel() * p.element_size()) for name, p in module.named_parameters()]


def partition(named_sizes: Iterable[tuple[str, int]], world_size: int) -> list[list[str]]:
    """Parameter names per rank: disjoint, covering, deterministic, balanced by bytes.

    Each rank's names keep the order they had in ``named_sizes`` (model order), so a rank's
    snapshot reads its tensors in the same order as the model holds them.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    named_sizes = list(named_sizes)
    names = [name for name, _ in named_sizes]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"parameter names must be unique; repeated: {', '.join(duplicates)}")
    order = {name: i for i, name in enumerate(names)}
    loads = [
        (0, rank) for rank in range(world_size)
    ]  # (bytes owned, rank): heap pops the least loaded, then lowest rank
    owner: dict[str, int] = {}
    for name, size in sorted(named_sizes, key=lambda item: (-item[1], item[0])):
        load, rank = heapq.heappop(loads)
        owner[name] = rank
        heapq.heappush(loads, (load + size, rank))
    parts: list[list[str]] = [[] for _ in range(world_size)]
    for name in sorted(owner, key=order.__getitem__):
        parts[owner[name]].append(name)
    return parts


def owned_names(named_sizes: Iterable[tuple[str, int]], rank: int, world_size: int) -> list[str]:
    """The parameter names ``rank`` snapshots, in model order (see :func:`partition`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of size {world_size}")
    return partition(named_sizes, world_size)[rank]


def owners(named_sizes: Iterable[tuple[str, int]], world_size: int) -> dict[str, int]:
    """``{name: owning rank}``: who broadcasts each parameter after a restore."""
    return {name: rank for rank, names in enumerate(partition(named_sizes, world_size)) for name in names}


def snapshot_names(module: torch.nn.Module, rank: int, world_size: int) -> list[str]:
    """The parameter names ``rank`` snapshots, in model order: every name when ``module`` is FSDP-sharded
    (the rank holds its own shard of each), else its DDP share (:func:`owned_names`)."""
    if is_sharded(module):
        return [name for name, _ in module.named_parameters()]
    return owned_names(parameter_sizes(module), rank, world_size)
