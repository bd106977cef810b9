"""Flatten a rank's training state into a snapshot buffer, and restore it from one.

What a snapshot holds (the complete resume state, nothing the run can recompute):

* tensors, at the offsets of a :class:`~components.resilience.layout.SnapshotLayout`: the owned
  parameters and their optimizer state;
* a JSON *meta* region: the step (which is also the data-loader position, since a batch is a pure
  function of ``(seed, step, rank)``), the LR scheduler's ``state_dict``, the optimizer's per-group
  hyperparameters (the scheduler writes ``lr`` into them), and the Python, NumPy, torch and CUDA RNG
  states of this process;
* the tail of the loss and LR curves (``curve_tail`` steps), so a run restored from a snapshot newer
  than its last persistent checkpoint still reports every step's loss.

JSON rather than pickle: a snapshot comes back from another process (a keeper) and unpickling
would run whatever code those bytes name; JSON round-trips Python floats exactly. The unused tail
of the meta region is zeroed, so equal states give byte-equal buffers (and equal checksums).

:func:`pack_into` is the synchronous path; :class:`~components.resilience.snapshot.SnapshotEngine`
splits it in two (meta on the training thread, tensors in the background) with the same helpers.
"""

from __future__ import annotations

import base64
import json
import struct
import warnings
from typing import Any

import numpy as np
import torch

from components.common.errors import RecoveryError
from components.resilience.layout import META_HEADER, SnapshotLayout
from components.training.checkpoint import capture_rng, restore_rng
from components.training.parallel import is_sharded

Buffer = torch.Tensor | memoryview | bytearray | bytes


def as_byte_tensor(buffer: Buffer) -> torch.Tensor:
    """A 1-D uint8 tensor over ``buffer``'s memory (no copy)."""
    if isinstance(buffer, torch.Tensor):
        if buffer.dtype != torch.uint8 or buffer.dim() != 1:
            raise ValueError(f"snapshot buffer must be a 1-D uint8 tensor, got {buffer.dtype}{list(buffer.shape)}")
        return buffer
    with warnings.catch_warnings():
        # A read-only buffer (bytes from a keeper) is only ever read by unpack_from.
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(buffer, dtype=torch.uint8)


def capture_meta(state: Any, curve_tail: int = 0) -> bytes:
    """The non-tensor state of a ``TrainState`` at this instant, as JSON bytes (plus the newest
    ``curve_tail`` loss and LR curve points)."""
    rng = capture_rng()
    rng["torch"] = _b64(rng["torch"])
    if "cuda" in rng:
        rng["cuda"] = _b64(rng["cuda"])
    meta = {
        "step": state.step,
        "data_position": state.step,  # batches are a pure function of (seed, step, rank)
        "scheduler": state.scheduler.state_dict(),
        "optimizer_groups": [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups],
        "rng": rng,
    }
    if curve_tail > 0:
        meta["curve"] = {"loss": state.loss_curve[-curve_tail:], "lr": state.lr_curve[-curve_tail:]}
    return json.dumps(meta, separators=(",", ":")).encode()


def write_meta(buffer: torch.Tensor, layout: SnapshotLayout, meta: bytes) -> None:
    if len(meta) > layout.meta_capacity:
        raise ValueError(
            f"snapshot meta is {len(meta)} bytes, above the layout's meta_capacity={layout.meta_capacity}; "
            "build the layout with a larger meta_capacity"
        )
    region = buffer[layout.meta_offset : layout.total_bytes].numpy()
    region[:META_HEADER] = np.frombuffer(struct.pack("<Q", len(meta)), dtype=np.uint8)
    region[META_HEADER : META_HEADER + len(meta)] = np.frombuffer(meta, dtype=np.uint8)
    region[META_HEADER + len(meta) :] = 0


def read_meta(buffer: torch.Tensor, layout: SnapshotLayout) -> dict:
    region = buffer[layout.meta_offset : layout.total_bytes].numpy()
    (length,) = struct.unpack("<Q", region[:META_HEADER].tobytes())
    if length > layout.meta_capacity:
        raise RecoveryError(
            f"snapshot meta claims {length} bytes in a region of {layout.meta_capacity}: the buffer is damaged"
        )
    return json.loads(region[META_HEADER : META_HEADER + length].tobytes())


def copy_tensors(views: list[torch.Tensor], tensors: list[torch.Tensor], *, non_blocking: bool = False) -> None:
    """Copy live ``tensors`` into their buffer ``views`` (both in layout order)."""
    with torch.no_grad():
        for view, tensor in zip(views, tensors, strict=True):
            view.copy_(tensor, non_blocking=non_blocking)


def pack_into(buffer: Buffer, layout: SnapshotLayout, state: Any) -> None:
    """Write ``state`` (a ``TrainState``) into ``buffer`` synchronously, at ``layout``'s offsets."""
    buf = _checked(buffer, layout)
    copy_tensors(layout.byte_views(buf), layout.live_tensors(state.module, state.optimizer))
    write_meta(buf, layout, capture_meta(state))


def unpack_from(buffer: Buffer, layout: SnapshotLayout, state: Any) -> int:
    """Restore this rank's part of the training state from ``buffer`` into the live ``state``.

    Writes the owned parameters and their optimizer state in place (creating optimizer state a
    fresh optimizer does not have yet), then :func:`restore_meta`. Returns the restored step.

    With DDP, parameters this rank does not own keep their old values here: restore the other
    ranks' snapshots with :func:`restore_tensors` (``ownership.owners`` says who owns what). With FSDP
    the snapshot is this rank's own shards, complete. A snapshot taken from a different model, with
    another parallelism or at another world size raises :class:`RecoveryError` (naming the first
    differing tensor, or the sizes), before anything changes.
    """
    buf = _checked(buffer, layout)
    layout.check_world(state.world_size, is_sharded(state.module))
    meta = read_meta(buf, layout)
    _check_groups(meta, state)
    restore_tensors(buf, layout, state)
    return restore_meta(buf, layout, state, meta)


def restore_tensors(buffer: Buffer, layout: SnapshotLayout, state: Any) -> None:
    """Copy the snapshot's tensors (one rank's parameters and their optimizer state) into ``state``."""
    buf = _checked(buffer, layout)
    tensors = layout.live_tensors(state.module, state.optimizer, create_missing=True)
    with torch.no_grad():
        for tensor, view in zip(tensors, layout.byte_views(buf), strict=True):
            tensor.copy_(view)


def restore_meta(buffer: Buffer, layout: SnapshotLayout, state: Any, meta: dict | None = None) -> int:
    """Restore the non-tensor state: optimizer hyperparameters, LR scheduler, this process's RNG
    streams, the step, and the loss/LR curve tail (merged after the points ``state`` already has).
    Returns the restored step."""
    meta = meta if meta is not None else read_meta(_checked(buffer, layout), layout)
    _check_groups(meta, state)
    for live, saved in zip(state.optimizer.param_groups, meta["optimizer_groups"], strict=True):
        for key, value in saved.items():
            live[key] = tuple(value) if isinstance(live.get(key), tuple) else value  # JSON turned betas into a list
    state.scheduler.load_state_dict(meta["scheduler"])
    rng = meta["rng"]
    version, internal, gauss = rng["python"]
    rng["python"] = (version, tuple(internal), gauss)
    rng["torch"] = _unb64(rng["torch"])
    if "cuda" in rng:
        rng["cuda"] = _unb64(rng["cuda"])
    restore_rng(rng)
    state.step = meta["step"]
    curve = meta.get("curve")
    if curve:
        state.loss_curve = _merged(state.loss_curve, curve["loss"], state.step)
        state.lr_curve = _merged(state.lr_curve, curve["lr"], state.step)
    return state.step


def _merged(known: list, tail: list, step: int) -> list:
    """``known`` up to the tail's first step, then the tail: one point per step up to ``step``."""
    first = tail[0][0] if tail else step + 1
    return [p for p in known if p[0] < first] + [list(p) for p in tail if p[0] <= step]


def _check_groups(meta: dict, state: Any) -> None:
    groups = meta["optimizer_groups"]
    if len(groups) != len(state.optimizer.param_groups):
        raise RecoveryError(
            f"snapshot has {len(groups)} optimizer parameter groups, this optimizer {len(state.optimizer.param_groups)}; "
            "restore with the optimizer the snapshot was taken from"
        )


def _checked(buffer: Buffer, layout: SnapshotLayout) -> torch.Tensor:
    buf = as_byte_tensor(buffer)
    if buf.numel() < layout.total_bytes:
        raise RecoveryError(f"snapshot buffer holds {buf.numel()} bytes, its layout needs {layout.total_bytes}")
    return buf


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
