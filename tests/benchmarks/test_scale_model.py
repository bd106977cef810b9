"""Benchmark: measure this host's figures, then project snapshots and recovery to 1k–16k GPUs.

Measured in this run (:class:`~components.resilience.scale_model.HostFigures`): memcpy and the
codecs' encode/decode GB/s on one core (the codec benchmark's child process, with the keepers'
allocator settings), one Ray actor call's round trip on a local Ray, and the snapshot bytes per
parameter of the real :class:`~components.resilience.layout.SnapshotLayout` of ``tiny`` and ``mini``
(all parameters owned by one rank, after one AdamW step). The cluster figures are stated in
:class:`~components.resilience.scale_model.ClusterFigures`.

Prints the Markdown table for xor k=4 (and a short one for rs k=4 m=2), writes the plot to
``docs/scale_model.png`` and the table to ``docs/scale_model.md`` (both shown in the README), and
prints the model's targets with PASS or MISS. No timed assertion.

Run alone: ``python -m tests.benchmarks.test_scale_model`` (starts a local Ray: take the heavy lock).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from components.resilience.scale_model import (
    ClusterFigures,
    HostFigures,
    Scheme,
    markdown_table,
    plot,
    project,
    project_grid,
)

MODELS = {"7B": 7e9, "70B": 70e9, "175B": 175e9, "405B": 405e9}
GPUS = (1024, 2048, 4096, 8192, 16384)
HSDP_SHARD = 512
DOCS = Path(__file__).resolve().parents[2] / "docs"


def layout_bytes_per_param(preset: str) -> tuple[int, int, int]:
    """``(parameters, tensor bytes, buffer bytes)`` of one rank owning all of ``preset`` after one step."""
    import torch
    from transformers import LlamaForCausalLM

    from components.common.models import llama_config
    from components.resilience.layout import SnapshotLayout

    torch.manual_seed(0)
    module = LlamaForCausalLM(
        llama_config(preset, vocab_size=512, seq_len=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = torch.randint(0, 512, (2, 33))
    module(input_ids=batch[:, :-1], labels=batch[:, 1:]).loss.backward()
    optimizer.step()  # AdamW makes its state at the first step; the layout needs it
    names = [n for n, _ in module.named_parameters()]
    layout = SnapshotLayout.build(module, optimizer, names)
    params = sum(p.numel() for p in module.parameters())
    return params, layout.tensor_bytes, layout.total_bytes


def ray_call_seconds(calls: int = 300) -> float:
    """Median round trip of a no-op actor method on a local Ray (what a keeper put/commit costs at least)."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self, x: int) -> int:
            return x

    with tempfile.TemporaryDirectory(prefix="lmsc", dir="/tmp") as tmp:
        ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=tmp)
        try:
            echo = Echo.remote()
            ray.get(echo.ping.remote(0))  # the actor's process start is not a call
            times = []
            for i in range(calls):
                t0 = time.perf_counter()
                ray.get(echo.ping.remote(i))
                times.append(time.perf_counter() - t0)
        finally:
            ray.shutdown()
    return statistics.median(times)


def link_call_seconds(calls: int = 300) -> float:
    """Median round trip of one keeper call over the data plane (``dataplane.py``), on loopback."""
    from components.resilience.dataplane import KeeperLinks, KeeperServer

    server = KeeperServer(lambda *a, **k: None, "127.0.0.1", calls={"busy_with": lambda version, generation: None})
    links = KeeperLinks(timeout_s=10)
    try:
        links.call(server.address, "busy_with", (0, 0), node="local").result(10)  # the connection is set up once
        times = []
        for i in range(calls):
            t0 = time.perf_counter()
            links.call(server.address, "busy_with", (i, 0), node="local").result(10)
            times.append(time.perf_counter() - t0)
    finally:
        links.close()
        server.close()
    return statistics.median(times)


def measure_host() -> tuple[HostFigures, list[str]]:
    from components.resilience.codec import MALLOC_REUSE_ENV
    from tests.benchmarks.test_codec_throughput import run_child

    codec = run_child(MALLOC_REUSE_ENV)
    xor, rs = codec["xor k=4 m=1"], codec["rs k=4 m=2"]
    lines, per_param = [], {}
    for preset in ("tiny", "mini"):
        params, tensor_bytes, total = layout_bytes_per_param(preset)
        per_param[preset] = total / params
        lines.append(
            f"  {preset}: {params:,} parameters, snapshot layout {total / 1e6:.2f} MB "
            f"({tensor_bytes / params:.2f} B/param in tensors, {total / params:.2f} B/param with the meta region)"
        )
    call, link = ray_call_seconds(), link_call_seconds()
    host = HostFigures(
        memcpy_gbps=codec["copy"],
        encode_gbps={"xor": xor["encode"], "rs": rs["encode"]},
        decode_gbps={"xor": xor["decode"], "rs": rs["decode"]},
        ray_call_seconds=call,
        link_call_seconds=link,
        bytes_per_param=per_param["mini"],  # tiny's 64 KB meta region is a fixed part, not a per-parameter one
    )
    lines += [
        f"  memcpy {host.memcpy_gbps:.2f} GB/s/core; xor k=4 encode {xor['encode']:.2f} / decode {xor['decode']:.2f} "
        f"GB/s; rs k=4 m=2 encode {rs['encode']:.2f} / decode {rs['decode']:.2f} GB/s (one core each)",
        f"  Ray actor call round trip {call * 1e3:.2f} ms, keeper call over the data plane {link * 1e3:.3f} ms "
        "(medians of 300)",
    ]
    return host, lines


def report(host: HostFigures, cluster: ClusterFigures) -> str:
    xor, rs = Scheme("xor", 4, 1), Scheme("rs", 4, 2)
    rows = project_grid(MODELS, GPUS, host, cluster, xor)
    rs_rows = project_grid({"405B": MODELS["405B"]}, GPUS, host, cluster, rs)
    hsdp_rows = [project("405B", MODELS["405B"], g, host, cluster, xor, shard_group=HSDP_SHARD) for g in GPUS]
    stated = (
        f"{cluster.gpus_per_node} GPUs/node, {cluster.nic_gbit:.0f} Gb/s NIC/node, {cluster.host_memory_gb:.0f} GB "
        f"host memory/node, D2H {cluster.d2h_gbps:.0f} GB/s/GPU, {cluster.encode_cores_per_gpu} cores/GPU for "
        f"coding, remote storage {cluster.storage_gbps:.1f} GB/s aggregate (Gemini's 20 Gb/s)"
    )
    measured = (
        f"{host.bytes_per_param:.2f} B/param (mini's layout), xor encode {host.encode_gbps['xor']:.2f} / decode "
        f"{host.decode_gbps['xor']:.2f} GB/s/core, rs encode {host.encode_gbps['rs']:.2f} / decode "
        f"{host.decode_gbps['rs']:.2f} GB/s/core, Ray call {host.ray_call_seconds * 1e3:.2f} ms, "
        f"data-plane call {host.link_call_seconds * 1e3:.3f} ms"
    )
    text = (
        f"Measured here: {measured}. Stated: {stated}.\n\n"
        f"**{xor}**, state sharded over all GPUs (FSDP / ZeRO-3), AdamW fp32 states:\n\n{markdown_table(rows)}\n\n"
        f"**{rs}**:\n\n{markdown_table(rs_rows)}\n\n"
        f"**{xor}, HSDP** (each replica sharded over {HSDP_SHARD} GPUs; recovery includes the owners' broadcast "
        f"over a {cluster.fabric_gbit:.0f} Gb/s/node fabric):\n\n{markdown_table(hsdp_rows)}\n"
    )
    plot(
        rows,
        DOCS / "scale_model.png",
        f"{xor}; {cluster.nic_gbit:.0f} Gb/s NIC; remote store {cluster.storage_gbps} GB/s",
    )
    (DOCS / "scale_model.md").write_text(text)

    checks = []
    for model in MODELS:
        pts = [p for p in rows if p.model == model]
        grows = any(b.recovery_s > a.recovery_s * 1.001 for a, b in zip(pts, pts[1:], strict=False))
        worst = max(p.recovery_s / p.remote_load_s for p in pts)
        mem = max(p.keeper_share_of_host for p in pts)
        checks.append(
            f"  {model}: recovery {'grows' if grows else 'does not grow'} from 1k to 16k GPUs (target: does not grow) "
            f"{'MISS' if grows else 'PASS'}; recovery <= {worst:.4f}x a remote-checkpoint load (target <= 0.1x) "
            f"{'PASS' if worst <= 0.1 else 'MISS'}; keeper memory <= {mem:.0%} of host memory (target <= 50%) "
            f"{'PASS' if mem <= 0.5 else 'MISS'}"
        )
    return text, checks


def test_scale_model_projection():
    host, lines = measure_host()
    text, checks = report(host, ClusterFigures())
    print("\n[bench] scale model: figures measured here\n" + "\n".join(lines))
    print("[bench] scale model projection (also in docs/scale_model.md, plot docs/scale_model.png)\n" + text)
    print("[bench] scale model targets\n" + "\n".join(checks))


if __name__ == "__main__":
    test_scale_model_projection()
