"""Benchmark: what saving the training state costs, in-memory snapshots vs torch.save (with fsync) vs
DCP async_save, on 2 Ray Train workers of a 4-node Ray cluster on this machine.

For ``tiny`` and the ~26M-parameter ``mini`` preset, one Ray Train fit measures, on the same workers:
throughput without saving (first and last, averaged: the baseline), then each method at each
interval. Printed per preset, each figure next to its target and PASS or MISS:

- for each method, the smallest interval whose throughput stays >= 0.90x of the baseline (target:
  every step on tiny; on mini no larger than torch.save's and async_save's);
- stall per save on the training critical path, the first save's set-up included, and the ratios
  torch.save / memory (target >= 5x) and async_save / memory (target > 1x);
- bytes each snapshot moves across nodes and the rate the hand-off achieved (to carry to a real NIC),
  and the calls per snapshot (over the keepers' data plane and through Ray);
- background CPU per snapshot (all processes of the cluster, minus the no-saving run); after both
  presets, a linear fit over them splits it into a per-byte part (target <= 3x one memcpy of those
  bytes, memcpy measured in the same run) and a fixed part per snapshot (target <= 10 ms);
- keeper memory per snapshot version vs the training state: (k+m)/k expected, vs 2x for replication;
- ``resilience.coalesce`` asked to snapshot every step (a due snapshot is skipped while a rank's
  previous one is still being handed off): its throughput (target on tiny >= 0.90x), the interval
  at which snapshots were really taken, and the mean lag of the newest committed version in steps,
  so "every step" is never claimed for what is in fact every few steps.

On a CPU box the snapshot's background work (copy, encode, transfer) competes with training for the
same two cores; on a GPU node those CPUs are idle. No timed assertion: the checks are that every
method saved and the memory runs committed snapshots.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from tests.unit.resilience.cluster import train_spec, training_cluster

PRESETS = {
    # preset: (config overrides, intervals, warmup steps, timed steps)
    "tiny": (["pretrain.batch_size=8"], (1, 2, 4, 8), 4, 32),
    "mini": (["model.preset=mini", "model.seq_len=64", "pretrain.batch_size=2"], (1, 2, 4, 8), 3, 24),
}
#: LMFORGE_BENCH_QUICK=1: fewer intervals and steps (each preset well under 5 minutes on 2 shared
#: cores), no Reed-Solomon run: for checking a change to the hot path, not for the closing figures
QUICK = os.environ.get("LMFORGE_BENCH_QUICK") == "1"
if QUICK:
    PRESETS = {
        "tiny": (PRESETS["tiny"][0], (1, 4), 2, 16),
        "mini": (PRESETS["mini"][0], (2, 4, 8), 2, 16),
    }
#: LMFORGE_BENCH_OVERRIDES="key=value ...": config overrides added to every run (A/B of a knob, e.g.
#: ``resilience.max_in_flight=2``), printed in the header
EXTRA = os.environ.get("LMFORGE_BENCH_OVERRIDES", "").split()
METHODS = ("memory", "dcp_async", "torch_save")
#: background CPU per snapshot and bytes per rank, per preset, for the fit over tiny and mini
CPU_PER_SNAPSHOT: dict[str, tuple[int, float]] = {}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_split(run: dict, results: list[dict], snapshots: int) -> str:
    """``run``'s background CPU per snapshot by process kind (keepers, trainers, raylets...), each minus the
    same kind's CPU in the runs without saving: where the snapshot's cost lands."""
    base = [r["cpu_seconds_by_kind"] for r in results if r["method"] == "none"]
    kinds = sorted(set(run["cpu_seconds_by_kind"]).union(*base))
    extra = {k: run["cpu_seconds_by_kind"].get(k, 0.0) - sum(b.get(k, 0.0) for b in base) / len(base) for k in kinds}
    return ", ".join(f"{k} {1e3 * v / snapshots:+.2f}" for k, v in sorted(extra.items(), key=lambda kv: -kv[1]))


def memcpy_gbps(nbytes: int) -> float:
    """np.copyto into a preallocated buffer, best of 5, in this process (the per-byte yardstick)."""
    src, dst = np.ones(nbytes, dtype=np.uint8), np.empty(nbytes, dtype=np.uint8)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


@pytest.fixture(scope="module")
def cluster():
    # 1 GiB of object store per node: pieces for other nodes pass through it (150 MiB would spill mini's)
    with training_cluster(object_store_mb=1024) as started:
        yield started


def _fit(spec, plan, tag: str, out, warmup: int, steps: int) -> list[dict]:
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tests.benchmarks import snapshot_methods

    ray.cloudpickle.register_pickle_by_value(snapshot_methods)  # workers need not import tests/
    results = out / f"{tag}.json"
    trainer = TorchTrainer(
        snapshot_methods.bench_loop,
        train_loop_config={
            "spec": spec, "plan": plan, "tag": tag, "warmup": warmup, "steps": steps, "out": str(results),
            "driver_pid": os.getpid(),
        },
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=tag, storage_path=str(out / "ray")),
    )  # fmt: skip
    trainer.fit()
    return json.loads(results.read_text())


@pytest.mark.parametrize("preset", list(PRESETS))
def test_snapshot_stall_and_frequency_vs_torch_save_and_async_save(
    cluster, make_config, tiny_dataset, tmp_path, preset
):
    overrides, intervals, warmup, steps = PRESETS[preset]
    base = [*overrides, "pretrain.steps=1000", "pretrain.warmup_steps=2", "resilience.enabled=true", *EXTRA]
    cfg = make_config(*base, "resilience.keeper_memory_mb=2048", "resilience.persist_every=1000")
    by_interval = {every: make_config(*base, "resilience.keeper_memory_mb=2048", "resilience.persist_every=1000",
                                      f"resilience.snapshot_every={every}") for every in intervals}  # fmt: skip
    plan = [("none", 1, None)]
    plan += [(method, every, by_interval[every]) for method in METHODS for every in intervals]
    if preset == "tiny" and not QUICK:  # Reed-Solomon k=2, m=2: the keeper-memory ratio for two parity pieces
        rs = make_config(*base, "resilience.scheme=rs", "resilience.k=2", "resilience.m=2",
                         "resilience.keeper_memory_mb=2048", "resilience.persist_every=1000")  # fmt: skip
        plan.append(("memory", 4, rs))
    coalesce = make_config(*base, "resilience.keeper_memory_mb=2048", "resilience.persist_every=1000",
                           "resilience.snapshot_every=1", "resilience.coalesce=true")  # fmt: skip
    plan.append(("coalesce", 1, coalesce))
    plan.append(("none", 1, None))
    results = _fit(train_spec(cfg, tiny_dataset, tmp_path), plan, f"snap-{preset}", tmp_path, warmup, steps)

    baseline = sum(r["steps_per_second"] for r in results if r["method"] == "none") / 2
    base_cpu = sum(r["cpu_seconds"] for r in results if r["method"] == "none") / 2
    print(f"\n[bench] snapshot cost{' (quick mode)' if QUICK else ''}{' with ' + ' '.join(EXTRA) if EXTRA else ''}, preset {preset}, 2 workers, {steps} timed steps; "
          f"baseline {baseline:.2f} steps/s (no saving)")  # fmt: skip
    stall, cheapest = {}, {}
    for method in METHODS:
        runs = [r for r in results[1:-1] if r["method"] == method and r["every"] in intervals][: len(intervals)]
        assert all(r["saves"] > 0 for r in runs), f"{method} never saved"
        stall[method] = {r["every"]: r["stall_ms"] for r in runs}
        ratios = {r["every"]: r["steps_per_second"] / baseline for r in runs}
        cheapest[method] = next((every for every, ratio in ratios.items() if ratio >= 0.90), None)
        shown = "  ".join(f"every {e}: {ratio:.2f}x" for e, ratio in ratios.items())
        print(f"[bench]   {method:<10} throughput vs baseline: {shown}")
        print(
            f"[bench]   {'':<10} stall ms/save (set-up included): "
            + "  ".join(f"every {e}: {v:.1f}" for e, v in stall[method].items())
        )
        if method == "memory":
            split = ", ".join(
                f"every {r['every']}: set-up {r['setup_ms']:.1f} + first begin {r['first_begin_ms']:.1f} (once), "
                f"begin {r['begin_ms']:.2f} (first included; of it waiting "
                f"for a free buffer {r['buffer_wait_ms']:.2f}, meta {r['meta_ms']:.2f}) + fence {r['fence_ms']:.2f} "
                f"per save; copy {r['copy_ms']:.2f} ({'inline, in begin' if r['inline_copies'] else 'background'})"
                for r in runs
            )
            print(f"[bench]   {'':<10} memory stall split (ms): {split}")
    for every in intervals:
        m = max(stall["memory"][every], 1e-3)
        ts, da = stall["torch_save"][every] / m, stall["dcp_async"][every] / m
        print(f"[bench]   every {every}: stall torch.save / memory = {ts:.1f}x (target >= 5x: {verdict(ts >= 5)}), "
              f"async_save / memory = {da:.1f}x (target > 1x: {verdict(da > 1)})")  # fmt: skip
    never = intervals[-1] + 1  # "no interval tried keeps 0.90x": worse than every one tried
    got = {m: cheapest[m] or never for m in METHODS}
    shown = ", ".join(f"{m} {cheapest[m] or f'> {intervals[-1]}'}" for m in METHODS)
    if preset == "tiny":
        target, ok = "memory every step", got["memory"] == 1
    else:
        target, ok = (
            "memory <= torch.save's and async_save's",
            got["memory"] <= min(got["torch_save"], got["dcp_async"]),
        )
    print(f"[bench]   smallest interval at >= 0.90x throughput: {shown}  (target: {target}: {verdict(ok)})")

    [co] = [r for r in results if r["method"] == "coalesce"]
    ratio = co["steps_per_second"] / baseline
    taken = steps / max(co["taken"], 1)
    print(f"[bench]   coalesce   asked every step: {ratio:.2f}x throughput (target >= 0.90x"
          f"{' on tiny' if preset == 'tiny' else ', for information'}: {verdict(ratio >= 0.90)}); snapshots taken "
          f"every {taken:.1f} steps ({co['taken']} taken, {co['skipped']} skipped); newest committed version "
          f"{co['mean_lag_steps']:.1f} steps behind training on average; stall {co['stall_ms']:.1f} ms per snapshot "
          f"taken")  # fmt: skip
    memory = [r for r in results if r["method"] == "memory" and r["scheme"].startswith("xor")]
    first = memory[0]  # every step: the most snapshots, the steadiest per-snapshot figures
    moved = 2 * first["cross_node_bytes_per_rank"]
    rate = first["cross_node_bytes_per_rank"] / (first["handoff_ms"] / 1e3)
    print(f"[bench]   each snapshot: {first['bytes_per_rank'] / 1e6:.1f} MB per rank; {moved / 1e6:.1f} MB across "
          f"nodes (both ranks, {first['scheme']}); hand-off {first['handoff_ms']:.1f} ms per rank = "
          f"{rate / 1e6:.0f} MB/s across nodes per rank (loopback on this box; carry to a real NIC)")  # fmt: skip
    print(f"[bench]   calls per snapshot (data plane / Ray): hand-off per rank "
          f"{first['handoff_link_calls_per_snapshot']:.1f} / {first['handoff_calls_per_snapshot']:.1f} "
          f"(+ {first['pieces_sent_per_snapshot']} pieces sent by its keeper over the data plane), commit on rank 0 "
          f"{first['commit_link_calls_per_snapshot']:.1f} / {first['commit_calls_per_snapshot']:.1f}; "
          f"back-pressure retries per snapshot (all ranks) {first['busy_retries_per_snapshot']:.2f}")  # fmt: skip
    cpu = (first["cpu_seconds"] - base_cpu) / (2 * first["saves"])
    CPU_PER_SNAPSHOT[preset] = (first["bytes_per_rank"], cpu)
    print(f"[bench]   background CPU per snapshot per rank (every step, cluster-wide minus no saving): "
          f"{1e3 * cpu:.1f} ms for {first['bytes_per_rank'] / 1e6:.1f} MB")  # fmt: skip
    print(f"[bench]     by process kind (ms): {cpu_split(first, results, 2 * first['saves'])}")
    if len(CPU_PER_SNAPSHOT) == 2:
        (b0, c0), (b1, c1) = sorted(CPU_PER_SNAPSHOT.values())
        per_byte = (c1 - c0) / (b1 - b0)
        fixed = c0 - per_byte * b0
        copy_s_per_byte = 1 / (memcpy_gbps(b1) * 1e9)
        times = per_byte / copy_s_per_byte
        print(f"[bench]   fit over tiny and mini: per-byte {1e9 * per_byte:.2f} ns/B = {times:.1f}x one memcpy "
              f"({1e9 * copy_s_per_byte:.2f} ns/B) (target <= 3x: {verdict(times <= 3)}); fixed "
              f"{1e3 * fixed:.1f} ms per snapshot (target <= 10 ms: {verdict(fixed <= 0.010)})")  # fmt: skip
    shown = {}
    for run in (r for r in results if r["method"] == "memory" and "keeper_bytes_total" in r):
        shown.setdefault(run["scheme"], run)  # one run per scheme
    for scheme, run in shown.items():
        total = run["keeper_bytes_total"] / run["state_bytes_total"]
        per_node = run["keeper_bytes_max_node"] / run["state_bytes_per_training_node"]
        print(f"[bench]   keeper memory ({scheme}): {total:.2f}x the training state "
              f"in all; busiest node {per_node:.2f}x a training node's state (replication: 2.00x)")  # fmt: skip
        assert run["keeper_bytes_total"] > 0
