"""Benchmark: background CPU of one snapshot hand-off, without training, split into per-byte and fixed.

Two ranks on two 1-CPU nodes of a 4-node Ray cluster (as ``test_snapshot_cost.py``: two training
nodes, a keeper-only node, a head without pieces) hand off snapshots of two sizes through the
product's path: ``KeeperSink`` (shared buffer, rank 0 commits) → the home keeper encodes (XOR, k=2,
m=1) → pieces on three keepers → two-phase commit. Nothing trains, so the CPU every process of the
cluster spends (minus its idle rate, measured just before) is the snapshot's alone; a line through
the two sizes gives the per-byte part (target <= 3x one memcpy of those bytes, memcpy measured in
the same run) and the fixed part per snapshot (target <= 10 ms). Printed per process kind, so the
cost can be traced to keepers, raylets (object transfer) or ranks, and split into user and kernel
(sys) CPU: the per-byte kernel part is mostly loopback TCP (a send and a receive copy per byte that
crosses nodes), which a real NIC's DMA replaces; the user part is ours (encode, hashing, copies).

This is the cleaner split of the figure ``test_snapshot_cost.py`` fits over two training runs
(there, idle processes and a slowed trainer blur it). No timed assertion: the check is that every
version committed.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.unit.resilience.cluster import training_cluster

SIZES = (4 << 20, 64 << 20)  # bytes per rank: about tiny's and half of mini's state per rank
SNAPSHOTS = 12
CODEC = ("xor", 2, 1)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _cpu_by_process(root_pid: int) -> dict[int, tuple[str, float, float]]:
    """pid -> (kind, user CPU seconds, system CPU seconds) of the benchmark's process tree (the Ray cluster)."""
    import psutil

    out = {}
    root = psutil.Process(root_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmd, t = " ".join(proc.cmdline()), proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        kind = next((k for k in ("raylet", "gcs_server", "NodeKeeper", "Rank") if k in cmd), "other")
        if kind == "other" and "plasma_store" in cmd:
            kind = "raylet"
        out[proc.pid] = (kind, t.user, t.system)
    return out


def _delta(before: dict, after: dict, part: slice = slice(1, 3)) -> dict[str, float]:
    """CPU seconds per process kind between two samples: user + system, or ``part`` (slice(1, 2):
    user only, slice(2, 3): system only)."""
    by_kind: dict[str, float] = {}
    for pid, (kind, *_) in after.items():
        if pid in before:
            now, then = sum(after[pid][part]), sum(before[pid][part])
            by_kind[kind] = by_kind.get(kind, 0.0) + now - then
    return by_kind


def _rank_class():
    import ray

    @ray.remote(num_cpus=1)
    class Rank:
        """One training rank's snapshot side: a shared buffer and the product's KeeperSink."""

        def setup(self, rank: int, nbytes: int, run: str, nodes: list[str]) -> None:
            from components.resilience.keeper_actor import keeper_name, keeper_namespace
            from components.resilience.layout import SnapshotLayout
            from components.resilience.placement import Placement, cluster_nodes
            from components.resilience.sink import Coordinator, KeeperSink

            placement = Placement.build(nodes, cluster_nodes(), CODEC[1], CODEC[2])
            namespace = keeper_namespace(run)
            keepers = {n: ray.get_actor(keeper_name(run, n), namespace=namespace) for n in placement.ring}
            self.coordinator = Coordinator(keepers, placement, None) if rank == 0 else None
            self.sink = KeeperSink(
                rank=rank, keepers=keepers, placement=placement, codec=CODEC, generation=1,
                coordinator=self.coordinator,
            )  # fmt: skip
            self.layout = SnapshotLayout((), meta_offset=0, meta_capacity=nbytes - 8)
            self.buffer = self.sink.allocate_buffer(self.layout).numpy()
            self.buffer[:] = np.random.default_rng(rank).integers(0, 256, self.buffer.size, dtype=np.uint8)

        def hand_off(self, first: int, count: int) -> dict:
            for version in range(first, first + count):
                self.buffer[:8] = version % 256  # a new state each time
                self.sink(version, memoryview(self.buffer), self.layout)
            c = self.coordinator
            calls = self.sink.calls + (c.calls if c else 0)  # rank 0 also runs the commit (prepare, commit)
            links = self.sink.link_calls + (c.link_calls if c else 0)
            return {
                "calls": calls,
                "link_calls": links,
                "retries": self.sink.retries,
                "committed": c.committed if c else None,
            }

        def close(self) -> None:
            self.sink.close()

    return Rank


@pytest.fixture(scope="module")
def cluster():
    with training_cluster(object_store_mb=1024) as started:
        yield started


def test_handoff_cpu_per_snapshot_splits_into_per_byte_and_fixed(cluster):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from components.common.config import load_config
    from components.resilience.keeper_actor import start_keepers, stop_keepers

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)[:2]
    Rank = _rank_class()
    cpu, cpu_sys, lines = {}, {}, []
    for nbytes in SIZES:
        run = f"handoff-{nbytes >> 20}"
        start_keepers(run, load_config("tiny", ["resilience.keeper_memory_mb=4096"]), expected_version_bytes=nbytes)
        ranks = [
            Rank.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            for node in nodes
        ]
        ray.get([r.setup.remote(i, nbytes, run, nodes) for i, r in enumerate(ranks)])
        ray.get([r.hand_off.remote(1, 3) for r in ranks])  # warm-up: first mappings, first allocations
        idle0, t_idle = _cpu_by_process(os.getpid()), time.perf_counter()
        time.sleep(2.0)
        idle = sum(_delta(idle0, _cpu_by_process(os.getpid())).values()) / (time.perf_counter() - t_idle)
        before, t0 = _cpu_by_process(os.getpid()), time.perf_counter()
        outs = ray.get([r.hand_off.remote(10, SNAPSHOTS) for r in ranks])
        wall = time.perf_counter() - t0
        after = _cpu_by_process(os.getpid())
        by_kind = _delta(before, after)
        sys_by_kind = _delta(before, after, slice(2, 3))
        per = (sum(by_kind.values()) - idle * wall) / (2 * SNAPSHOTS)
        cpu[nbytes] = per
        # kernel time of the idle rate is small next to a snapshot's; not subtracted from this part
        cpu_sys[nbytes] = sum(sys_by_kind.values()) / (2 * SNAPSHOTS)
        assert outs[0]["committed"] == 3 + SNAPSHOTS, "every version should have committed"
        kinds = ", ".join(
            f"{k} {1e3 * v / (2 * SNAPSHOTS):.1f} (sys {1e3 * sys_by_kind[k] / (2 * SNAPSHOTS):.1f})"
            for k, v in sorted(by_kind.items(), key=lambda x: -x[1])
        )
        lines.append(
            f"[bench]   {nbytes >> 20} MiB per rank: {1e3 * per:.1f} ms CPU per rank-snapshot ({kinds}; idle "
            f"{idle:.2f} cores subtracted); {wall / SNAPSHOTS * 1e3:.0f} ms wall per snapshot; calls per "
            f"snapshot (data plane / Ray): rank 0 {outs[0]['link_calls'] / (3 + SNAPSHOTS):.1f} / "
            f"{outs[0]['calls'] / (3 + SNAPSHOTS):.1f}, rank 1 {outs[1]['link_calls'] / (3 + SNAPSHOTS):.1f} / "
            f"{outs[1]['calls'] / (3 + SNAPSHOTS):.1f} "
            f"(back-pressure retries {outs[1]['retries']})"
        )
        ray.get([r.close.remote() for r in ranks])
        for r in ranks:
            ray.kill(r)
        stop_keepers(run)
    (b0, c0), (b1, c1) = sorted(cpu.items())
    per_byte = (c1 - c0) / (b1 - b0)
    fixed = c0 - per_byte * b0
    (_, s0), (_, s1) = sorted(cpu_sys.items())
    per_byte_sys = (s1 - s0) / (b1 - b0)
    src, dst = np.ones(b1, dtype=np.uint8), np.empty(b1, dtype=np.uint8)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    times = per_byte / (best / b1)
    print(f"\n[bench] snapshot hand-off without training, 2 ranks, {CODEC[0]} k={CODEC[1]} m={CODEC[2]}, "
          f"{SNAPSHOTS} snapshots per size")  # fmt: skip
    print("\n".join(lines))
    print(f"[bench]   per-byte {1e9 * per_byte:.2f} ns/B = {times:.1f}x one memcpy ({1e9 * best / b1:.3f} ns/B) "
          f"(target <= 3x: {verdict(times <= 3)}); fixed {1e3 * fixed:.1f} ms per snapshot "
          f"(target <= 10 ms: {verdict(fixed <= 0.010)})")  # fmt: skip
    copy = best / b1
    print(f"[bench]   per-byte split: kernel (sys) {1e9 * per_byte_sys:.2f} ns/B = {per_byte_sys / copy:.1f}x memcpy "
          f"(loopback TCP: a NIC's DMA replaces it), user {1e9 * (per_byte - per_byte_sys):.2f} ns/B = "
          f"{(per_byte - per_byte_sys) / copy:.1f}x memcpy (ours: encode, hashing, copies; "
          f"target for it alone <= 3x: {verdict((per_byte - per_byte_sys) / copy <= 3)})")  # fmt: skip
