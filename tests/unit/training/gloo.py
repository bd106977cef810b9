"""Run a function on N real ``torch.distributed`` ranks (gloo, CPU, 127.0.0.1) without Ray.

FSDP2 needs a process group; Ray Train would give one, but starting Ray costs seconds a unit test does
not need. ``run_ranks`` spawns ``world_size`` processes, each joins a gloo group, calls
``fn(rank, world_size, *args)`` and sends back what it returns (anything ``torch.save`` takes). A
rank that raises fails the call with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(rank: int, world_size: int, port: int) -> None:
    """Join a fresh gloo group of ``world_size`` ranks on 127.0.0.1:``port``."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def _entry(rank: int, world_size: int, port: int, out: str, fn: Callable, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on a shared 2-core box
    init_group(rank, world_size, port)
    try:
        result = fn(rank, world_size, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_ranks(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, ...)]``, each run on its own gloo rank."""
    with tempfile.TemporaryDirectory(prefix="lmforge-gloo-") as out:
        mp.spawn(_entry, args=(world_size, free_port(), out, fn, args), nprocs=world_size, join=True)
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
