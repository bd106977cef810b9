"""Where each piece of a rank's training state lives inside its flat snapshot buffer.

A :class:`SnapshotLayout` is computed once, from the parameters a rank owns
(:mod:`components.resilience.ownership`) and their optimizer state, and then reused for every
snapshot: the buffer is allocated once at ``total_bytes`` and every snapshot writes the same
tensors at the same offsets. Buffer map::

    [tensor 0][pad][tensor 1][pad] ... [meta length: u64 LE][meta JSON][zeros up to meta_capacity]

Tensors are aligned to 64 bytes (a cache line; also any dtype can then be viewed in place). The
meta region holds the small, non-tensor state (LR scheduler, RNG streams, step): see
:mod:`components.resilience.state`.

AdamW creates its state (``step``, ``exp_avg``, ``exp_avg_sq``) lazily, at a parameter's first
``optimizer.step()``: build the layout *after* the first optimizer step (``post_step`` always is).
On restore into a fresh optimizer, :meth:`SnapshotLayout.live_tensors` creates the missing state
tensors so the snapshot's values land in them and AdamW continues as if it had never stopped.

Under FSDP2 a parameter and its ``exp_avg``/``exp_avg_sq`` are DTensors: an entry then holds this
rank's *local shard* (``to_local()``, shape and bytes of the shard) and is marked ``sharded``. Such a
layout only fits the same sharding, so it records the world size it was taken at and
:meth:`SnapshotLayout.check_world` refuses a restore into another one (or into DDP replicas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from components.common.errors import RecoveryError
from components.training.parallel import local_tensor

ALIGN = 64
META_HEADER = 8  # u64 little-endian length of the meta JSON
#: RNG states take ~14 KB of the meta as base64 (Python's and NumPy's MT19937 keys are 624 words each,
#: torch's state 5 KB); as JSON integer lists, before, ~25 KB: the capacity fits either
DEFAULT_META_CAPACITY = 64 * 1024
PARAM = "param"


def _aligned(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorEntry:
    name: str  # the parameter's name in module.named_parameters()
    part: str  # "param", or the optimizer state key ("exp_avg", "exp_avg_sq", "step")
    dtype: str  # torch dtype without the "torch." prefix
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    on_param_device: bool  # False for AdamW's CPU "step" scalars next to GPU parameters
    sharded: bool = False  # the live tensor is a DTensor (FSDP) and this entry holds its local shard

    @property
    def key(self) -> str:
        return f"{self.name}[{self.part}]"

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class SnapshotLayout:
    entries: tuple[TensorEntry, ...]
    meta_offset: int
    meta_capacity: int
    world_size: int = 0  # ranks of the worker group that took the snapshot (0: not recorded)
    sharded: bool = False  # FSDP shards (each rank its own part of every tensor), not DDP replicas

    @property
    def total_bytes(self) -> int:
        return self.meta_offset + META_HEADER + self.meta_capacity

    @property
    def tensor_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @classmethod
    def build(
        cls,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        owned: Sequence[str],
        meta_capacity: int = DEFAULT_META_CAPACITY,
        *,
        world_size: int = 0,
    ) -> SnapshotLayout:
        """The layout of the parameters named ``owned`` and of their optimizer state (local shards of
        DTensors), taken by one rank of a ``world_size``-rank worker group."""
        params = dict(module.named_parameters())
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        entries, offset = [], 0
        for name in owned:
            if name not in params:
                raise ValueError(f"owned parameter {name!r} is not in the model")
            p = params[name]
            tensors = [(PARAM, p)]
            if id(p) in optimized:
                state = optimizer.state.get(p, {})
                if not state:
                    raise ValueError(
                        f"the optimizer has no state for {name!r} yet: AdamW creates it at the first "
                        "optimizer.step(); build the snapshot layout after the first step"
                    )
                for part in sorted(state):
                    if not isinstance(state[part], torch.Tensor):
                        raise ValueError(
                            f"optimizer state {name}[{part}] is not a tensor; the layout holds tensors only"
                        )
                    tensors.append((part, state[part]))
            for part, t in tensors:
                local = local_tensor(t)
                nbytes = local.numel() * local.element_size()
                entries.append(
                    TensorEntry(
                        name,
                        part,
                        _dtype_name(local.dtype),
                        tuple(local.shape),
                        offset,
                        nbytes,
                        t.device == p.device,
                        sharded=local is not t,
                    )
                )
                offset = _aligned(offset + nbytes)
        sharded = any(e.sharded for e in entries)
        return cls(tuple(entries), offset, meta_capacity, world_size=world_size, sharded=sharded)

    def check_world(self, world_size: int, sharded: bool) -> None:
        """Refuse, with :class:`RecoveryError`, a restore into a worker group this snapshot does not fit:
        another parallelism (FSDP shards vs DDP replicas) or, for a recorded world size, another one."""
        if sharded != self.sharded:
            raise RecoveryError(
                f"snapshot holds {'FSDP shards' if self.sharded else 'DDP replicas'} but this worker group trains "
                f"with pretrain.parallelism={'fsdp' if sharded else 'ddp'}; restore with the parallelism the "
                "snapshot was taken with (recovery falls back to the next tier)"
            )
        if self.world_size and self.world_size != world_size:
            what = "its own shard of every tensor" if self.sharded else "its share of the parameters"
            raise RecoveryError(
                f"snapshot was taken by {self.world_size} ranks, this worker group has {world_size}: each rank's "
                f"in-memory snapshot holds {what} at that world size and is not re-sharded; restore with "
                f"pretrain.num_workers={self.world_size} (recovery falls back to the next tier, down to the Ray "
                "Train checkpoint, which under pretrain.parallelism=fsdp holds the full state)"
            )

    def live_tensors(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, *, create_missing: bool = False
    ) -> list[torch.Tensor]:
        """The live tensors behind the entries, in order; a mismatch raises :class:`RecoveryError`.

        Every entry is checked before anything is created, so a mismatch leaves the optimizer
        untouched. ``create_missing`` adds absent optimizer state (a fresh optimizer restoring a
        snapshot); without it, absent state is a mismatch.
        """
        params = dict(module.named_parameters())
        found: list[torch.Tensor | None] = []
        for e in self.entries:
            p = params.get(e.name)
            live = p if e.part == PARAM or p is None else optimizer.state.get(p, {}).get(e.part)
            live = None if live is None else local_tensor(live)
            if live is None and not (create_missing and p is not None and e.part != PARAM):
                self._mismatch(e, "none")
            if live is not None and (_dtype_name(live.dtype), tuple(live.shape)) != (e.dtype, e.shape):
                self._mismatch(e, f"{_dtype_name(live.dtype)}{list(live.shape)}")
            found.append(live)
        tensors = []
        for e, live in zip(self.entries, found, strict=True):
            if live is None:
                p = params[e.name]
                if e.sharded:  # a DTensor with the parameter's placements, as AdamW would create it
                    state = torch.zeros_like(p, dtype=getattr(torch, e.dtype))
                    live = local_tensor(state)
                else:
                    live = state = torch.zeros(
                        e.shape, dtype=getattr(torch, e.dtype), device=p.device if e.on_param_device else "cpu"
                    )
                optimizer.state[p][e.part] = state
            tensors.append(live)
        return tensors

    def _mismatch(self, entry: TensorEntry, live: str) -> None:
        raise RecoveryError(
            f"snapshot does not fit this model: first differing tensor {entry.key} is {entry.describe()} in the "
            f"snapshot but {live} here; restore into the same architecture and optimizer the snapshot was taken from"
        )

    def byte_views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Typed, shaped views of every entry inside the uint8 ``buffer`` (no copies)."""
        return [
            buffer[e.offset : e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape) for e in self.entries
        ]

    def to_dict(self) -> dict:
        """JSON-ready form, to travel with the snapshot bytes to keepers and back."""
        return {
            # vars, not dataclasses.asdict: asdict deep-copies every field, ~1 ms for tiny's 80 entries,
            # paid in the first snapshot's set-up (handoff.py frames each buffer with this layout)
            "entries": [dict(vars(e)) for e in self.entries],
            "meta_offset": self.meta_offset,
            "meta_capacity": self.meta_capacity,
            "world_size": self.world_size,
            "sharded": self.sharded,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SnapshotLayout:
        entries = tuple(TensorEntry(**{**e, "shape": tuple(e["shape"])}) for e in data["entries"])
        return cls(
            entries,
            meta_offset=data["meta_offset"],
            meta_capacity=data["meta_capacity"],
            world_size=data.get("world_size", 0),
            sharded=data.get("sharded", False),
        )
