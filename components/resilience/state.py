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
import random
import struct
import warnings
from typing import Any

import numpy as np
import torch

from components.common.errors import RecoveryError
from components.resilience.layout import META_HEADER, SnapshotLayout
from components.training.checkpoint import restore_rng
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
    meta = _meta(state)
    if curve_tail > 0:
        meta["curve"] = {"loss": state.loss_curve[-curve_tail:], "lr": state.lr_curve[-curve_tail:]}
    return json.dumps(meta, separators=(",", ":")).encode()


class MetaEncoder:
    """:func:`capture_meta` for a caller that captures every step (the snapshot engine, on the trainer
    thread): a curve point is encoded once, then its JSON is reused while it stays in the tail.

    Measured in one process on the tiny test state with a curve tail of 51 steps (102 points), the
    meta took ~360 us to capture when the Mersenne Twister states (624 integers each for Python and
    NumPy) went as JSON lists and the whole tail was encoded each time; with those states as base64
    of their bytes (:func:`rng_meta`) and each point encoded once, ~130-180 us. A point is reused only
    while it is the same list with the same values, so a curve replaced on restore, or a point
    changed in place, is encoded again.
    """

    def __init__(self) -> None:
        self._points: dict[int, tuple[list, Any, Any, str]] = {}  # id(point) -> (point, step, value, JSON)

    def capture(self, state: Any, curve_tail: int = 0) -> bytes:
        """The bytes :func:`capture_meta` gives for the same state and ``curve_tail``."""
        text = json.dumps(_meta(state), separators=(",", ":"))
        if curve_tail > 0:
            kept: dict[int, tuple[list, Any, Any, str]] = {}
            loss = self._encoded(state.loss_curve[-curve_tail:], kept)
            lr = self._encoded(state.lr_curve[-curve_tail:], kept)
            self._points = kept  # only the current tail: the cache never grows past it
            # the same bytes json.dumps gives for meta["curve"] = {"loss": [...], "lr": [...]}
            text = f'{text[:-1]},"curve":{{"loss":[{",".join(loss)}],"lr":[{",".join(lr)}]}}}}'
        return text.encode()

    def _encoded(self, points: list, kept: dict) -> list[str]:
        out = []
        for point in points:
            hit = self._points.get(id(point))
            if hit is None or hit[0] is not point or hit[1] != point[0] or hit[2] != point[1]:
                hit = (point, point[0], point[1], json.dumps(point, separators=(",", ":")))
            kept[id(point)] = hit
            out.append(hit[3])
        return out


def _meta(state: Any) -> dict:
    return {
        "step": state.step,
        "data_position": state.step,  # batches are a pure function of (seed, step, rank)
        "scheduler": state.scheduler.state_dict(),
        "optimizer_groups": [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups],
        "rng": rng_meta(),
    }


def rng_meta() -> dict:
    """This process's RNG streams for the meta: Python's and NumPy's Mersenne Twister keys and torch's
    (and CUDA's) state as base64 of their bytes (little-endian uint32 words for the keys).

    The same streams as :func:`~components.training.checkpoint.capture_rng`; :func:`restore_meta` also
    reads the older form (the keys as lists of integers), so snapshots persisted before still restore.
    """
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    key = np_state["state"]["key"]
    rng = {
        "python": [version, base64.b64encode(struct.pack(f"<{len(internal)}I", *internal)).decode(), gauss],
        "numpy": {**np_state, "state": {**np_state["state"], "key": _b64_words(key)}},
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        rng["cuda"] = _b64(torch.cuda.get_rng_state())
    return rng


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
    """Copy live ``tensors`` into their buffer ``views`` (both in layout order).

    One ``_foreach_copy_`` call: the per-tensor loop runs in C++ (tiny's 80 tensors: 118 -> 76 us on
    the trainer thread, measured in one process).
    """
    if len(views) != len(tensors):
        raise ValueError(f"{len(views)} buffer views for {len(tensors)} tensors: the layout does not match the state")
    with torch.no_grad():
        torch._foreach_copy_(views, tensors, non_blocking=non_blocking)


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
    if isinstance(internal, str):  # base64 of uint32 words (rng_meta); older snapshots: a list of integers
        words = base64.b64decode(internal)
        internal = struct.unpack(f"<{len(words) // 4}I", words)
    rng["python"] = (version, tuple(internal), gauss)
    key = rng["numpy"]["state"]["key"]
    if isinstance(key, str):
        rng["numpy"]["state"]["key"] = np.frombuffer(base64.b64decode(key), dtype="<u4")
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


def _b64_words(words: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(words, dtype="<u4").tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
