"""What the snapshot benchmarks compare: ways of saving the training state every N steps, as callbacks,
and a Ray Train worker loop that measures each one in turn on the same workers.

- ``none``: no saving (the throughput baseline, measured first and last);
- ``torch_save``: rank 0 ``torch.save``s model + optimizer state to local disk and fsyncs it,
  synchronously (the classic checkpoint: every rank waits for it at the next all-reduce; without
  the fsync it would only reach the page cache, and a node loss would take it along);
- ``dcp_async``: ``torch.distributed.checkpoint.async_save`` to local disk (its FileSystemWriter
  fsyncs every file: ``sync_files=True``), on its own gloo group, at most one save in flight (the
  trainer waits for the previous one before starting the next);
- ``memory``: lmforge's in-memory, erasure-coded snapshots (``components/resilience``);
- ``coalesce``: the same with ``resilience.coalesce=true``: a due snapshot is skipped while a rank's
  previous one is still being handed off, so besides throughput the run reports how often snapshots
  were really taken and how many steps the newest committed version lagged behind training (rank 0's
  hand-off returns once its version is committed), averaged over the timed steps.

Stall = time the trainer thread spends in the method per save, on the critical path, the first save's
set-up included (the timed steps begin before a method's first save: the warm-up steps run without
it). Background CPU = CPU seconds of every process of the Ray cluster (trainers, keepers, raylets)
during the timed steps, minus the same for no saving. This module is pickled by value to the Ray
workers (see ``test_snapshot_cost.py``), so it imports lazily.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from components.training.callbacks import Callback


class TorchSaveEvery(Callback):
    def __init__(self, every: int, directory: str) -> None:
        self.every, self.directory = every, directory
        self.saves, self.stall = 0, 0.0

    def post_step(self, state: Any) -> None:
        import torch

        if state.step % self.every or state.rank != 0:
            return
        t0 = time.perf_counter()
        state_dict = {"model": state.module.state_dict(), "optimizer": state.optimizer.state_dict()}
        with open(Path(self.directory) / "checkpoint.pt", "wb") as f:
            torch.save(state_dict, f)
            f.flush()
            os.fsync(f.fileno())  # on disk, not only in the page cache
        self.stall += time.perf_counter() - t0
        self.saves += 1


class DcpAsyncSaveEvery(Callback):
    def __init__(self, every: int, directory: str) -> None:
        self.every, self.directory = every, directory
        self.saves, self.stall = 0, 0.0
        self._pending = None
        self._group = None

    def pre_train(self, state: Any) -> None:
        import torch.distributed as dist

        # async_save's background collectives need a group of their own (torch's recommendation)
        self._group = dist.new_group(backend="gloo") if dist.is_initialized() else None

    def post_step(self, state: Any) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        if state.step % self.every:
            return
        t0 = time.perf_counter()
        if self._pending is not None:
            self._pending.result()  # at most one save in flight
        model_state, optim_state = get_state_dict(state.module, state.optimizer)
        self._pending = dcp.async_save(
            {"model": model_state, "optimizer": optim_state},
            checkpoint_id=str(Path(self.directory) / f"step-{state.step:06d}"),
            process_group=self._group,
        )
        self.stall += time.perf_counter() - t0
        self.saves += 1

    def close(self) -> None:
        if self._pending is not None:
            self._pending.result()


class CommitLag(Callback):
    """After each step, how many steps the newest version this rank handed off lags behind (on rank 0:
    the newest committed version); before the first one, the steps since the timed run began."""

    def __init__(self) -> None:
        self.engine, self.lags, self.first_step = None, [], None

    def post_step(self, state: Any) -> None:
        if self.first_step is None:
            self.first_step = state.step - 1
        done = self.engine.newest_done if self.engine is not None else None
        self.lags.append(state.step - (done if done is not None else self.first_step))


def method_callbacks(method: str, every: int, cfg: Any, scratch: str, run: str) -> list[Callback]:
    """``cfg`` is the run config; for ``memory`` its ``resilience`` section (with ``snapshot_every = every``)."""
    if method == "none":
        return []
    if method == "torch_save":
        return [TorchSaveEvery(every, scratch)]
    if method == "dcp_async":
        return [DcpAsyncSaveEvery(every, scratch)]
    if method in ("memory", "coalesce"):
        from components.resilience.callback import ResilienceCallback, ResilienceTarget

        target = ResilienceTarget(
            run_name=run, snapshots_uri=f"file://{scratch}/snapshots", markers_uri=f"file://{scratch}/faults"
        )
        return [ResilienceCallback(cfg, target), CommitLag()]
    raise ValueError(f"unknown method {method!r}")


def bench_loop(config: dict) -> None:
    """Ray Train worker: for each (method, interval, cfg) of ``config["plan"]`` build a fresh model,
    warm up, then time ``config["steps"]`` steps; rank 0 writes the results to ``config["out"]``."""
    import tempfile

    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from components.resilience.keeper_actor import stop_keepers
    from components.training.loop import build_state, train_step

    spec, plan = config["spec"], config["plan"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    results = []
    for n, (method, every, cfg) in enumerate(plan):
        state, _ = build_state(spec, rank, world, None)
        run = f"bench-{config['tag']}-{n}"
        with tempfile.TemporaryDirectory(prefix="lmbench-") as scratch:
            if world > 1:
                # one directory for every rank (DCP writes from all of them): rank 0's
                box = [scratch]
                dist.broadcast_object_list(box, src=0)
                scratch = box[0] if rank else scratch
            callbacks = method_callbacks(method, every, cfg, scratch, run)
            for cb in callbacks:
                cb.pre_train(state)
            memory = method in ("memory", "coalesce")
            if memory:
                callbacks[1].engine = callbacks[0].engine
            for _ in range(config["warmup"]):  # without the method: its first save falls in the timed steps
                train_step(state, [], device=device, grad_clip=1.0)
            dist.barrier()
            cpu0, t0 = _cluster_cpu_seconds(config["driver_pid"]), time.perf_counter()
            for _ in range(config["steps"]):
                train_step(state, callbacks, device=device, grad_clip=1.0)
            dist.barrier()
            elapsed = time.perf_counter() - t0
            if memory:
                lag = callbacks[1].lags
                callbacks[0].engine.wait()  # the last snapshot's background work belongs to these steps
                dist.barrier()
            cpu1 = _cluster_cpu_seconds(config["driver_pid"])
            cpu = {kind: seconds - cpu0.get(kind, 0.0) for kind, seconds in cpu1.items()}
            saves, stall = _stall(callbacks)
            extra = _keeper_memory(callbacks, world) if memory else {}
            if memory:  # where the stall goes: set-up, begin (meta, a free buffer), fence
                cb = callbacks[0]
                s = cb.engine.stats
                cross = _cross_node_bytes(cb)
                extra |= {
                    "setup_ms": 1e3 * s.setup_seconds,
                    "first_begin_ms": 1e3 * s.first_begin_seconds,
                    "begin_ms": 1e3 * s.begin_seconds / s.snapshots,
                    "fence_ms": 1e3 * s.fence_seconds / s.snapshots,
                    "buffer_wait_ms": 1e3 * s.buffer_wait_seconds / s.snapshots,
                    "meta_ms": 1e3 * s.meta_seconds / s.snapshots,
                    "copy_ms": 1e3 * s.copy_seconds / max(s.completed, 1),
                    "inline_copies": s.inline_copies,
                    "bytes_per_rank": cb.engine.layout.total_bytes,
                    "handoff_ms": 1e3 * s.handoff_seconds / max(s.completed, 1),
                    "cross_node_bytes_per_rank": cross,
                    "handoff_calls_per_snapshot": cb.engine.sink.calls / max(s.completed, 1),
                    # hand-offs refused by a keeper still writing the previous version (back-pressure), all ranks
                    "busy_retries_per_snapshot": _sum_over_ranks(cb.engine.sink.retries) / max(s.completed, 1),
                    "handoff_link_calls_per_snapshot": cb.engine.sink.link_calls / max(s.completed, 1),
                    "pieces_sent_per_snapshot": cb.r.k + cb.r.m - 1,  # one per piece held on another node
                    "commit_calls_per_snapshot": cb.coordinator.calls / max(s.completed, 1) if cb.coordinator else 0,
                    "commit_link_calls_per_snapshot": (
                        cb.coordinator.link_calls / max(s.completed, 1) if cb.coordinator else 0
                    ),
                    "taken": s.snapshots,
                    "skipped": s.skipped,
                    "mean_lag_steps": sum(lag) / max(len(lag), 1),
                }
            for cb in callbacks:
                cb.close()
            dist.barrier()
            if memory and rank == 0:
                stop_keepers(run)
        results.append(
            {
                "method": method,
                "every": every,
                "steps_per_second": config["steps"] / elapsed,
                "saves": saves,
                "stall_ms": 1e3 * stall / saves if saves else 0.0,
                "cpu_seconds": cpu["total"],
                "cpu_seconds_by_kind": {kind: seconds for kind, seconds in cpu.items() if kind != "total"},
                "scheme": f"{cfg.resilience.scheme} k={cfg.resilience.k} m={cfg.resilience.m}" if cfg else "",
                **extra,
            }
        )
    if rank == 0:
        Path(config["out"]).write_text(json.dumps(results, indent=1))


def _sum_over_ranks(value: float) -> float:
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(total)
    return total.item()


def _stall(callbacks: list[Callback]) -> tuple[int, float]:
    for cb in callbacks:
        if hasattr(cb, "engine"):  # ResilienceCallback: set-up + begin + fence on the trainer thread
            s = cb.engine.stats
            return s.snapshots, s.setup_seconds + s.begin_seconds + s.fence_seconds
        return cb.saves, cb.stall
    return 0, 0.0


def _cluster_cpu_seconds(driver_pid: int) -> dict[str, float]:
    """User + system CPU seconds of the benchmark driver's process tree (the Ray cluster it started: GCS,
    raylets, trainers, keepers), by process kind (:func:`_kind`) and in all (``"total"``). Processes that
    exit meanwhile drop out: none does mid-run."""
    import psutil

    totals: dict[str, float] = {"total": 0.0}
    root = psutil.Process(driver_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t, kind = proc.cpu_times(), _kind(proc)
        except psutil.NoSuchProcess:
            continue
        totals[kind] = totals.get(kind, 0.0) + t.user + t.system
        totals["total"] += t.user + t.system
    return totals


def _kind(proc: Any) -> str:
    """What a cluster process is: a Ray actor's class from its title (``ray::NodeKeeper.put``), a Ray
    daemon by its executable (raylet, gcs_server), otherwise ``other`` (driver, dashboard, agents)."""
    args = proc.cmdline()
    head = args[0] if args else proc.name()
    if head.startswith("ray::"):
        return head[5:].split(".")[0].split(" ")[0] or "ray-worker"
    name = Path(head).name
    return name if name in ("raylet", "gcs_server") else "other"


def _cross_node_bytes(cb: Any) -> int:
    """Bytes one snapshot of this rank sends to other nodes: every piece but the one its home keeps."""
    k, m = cb.r.k, cb.r.m
    piece = -(-cb.engine.layout.total_bytes // k)  # (the frame header adds a few KB)
    return (k + m - 1) * piece


def _keeper_memory(callbacks: list[Callback], world: int) -> dict:
    """Keeper bytes per snapshot version vs the training state, once the last snapshot is committed."""
    import ray
    import torch.distributed as dist

    cb = callbacks[0]
    cb.engine.wait()
    payload = [cb.engine.layout.total_bytes]
    if world > 1:
        payload = [None] * world
        dist.all_gather_object(payload, cb.engine.layout.total_bytes)
    dist.barrier()  # every rank's last snapshot is committed (rank 0's wait covers the commit)
    if cb.coordinator is None:
        return {}
    statuses = ray.get([k.status.remote() for k in cb.keepers.values()])
    held = [s.bytes_used for s in statuses]
    training_nodes = len({nodes[0] for nodes in cb.placement.groups})
    return {
        "keeper_bytes_total": sum(held),
        "state_bytes_total": sum(payload),
        "keeper_bytes_max_node": max(held),
        "state_bytes_per_training_node": sum(payload) / training_nodes,
    }
