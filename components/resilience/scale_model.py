"""A scale model: what in-memory, erasure-coded snapshots cost at 1k–16k GPUs, next to remote checkpoints.

The CPU test cluster cannot show what happens on a thousand GPUs, so this module projects it from two
kinds of figures:

- :class:`HostFigures`, **measured here** by ``tests/benchmarks/test_scale_model.py`` in the same run
  that prints the projection: memcpy, XOR and Reed–Solomon (ISA-L) encode/decode GB/s on one core,
  the round trip of one Ray actor call and of one keeper call over the data plane, and the snapshot
  bytes per parameter read from the real
  :class:`~components.resilience.layout.SnapshotLayout` of the ``tiny`` and ``mini`` presets;
- :class:`ClusterFigures`, **stated**: GPUs per node, NIC bandwidth, host memory, PCIe D2H bandwidth,
  the cores a rank gives to encoding, and the aggregate bandwidth of remote checkpoint storage.

The model is a handful of transfers, each ``bytes / bandwidth``, summed (conservative: the real
engine overlaps D2H, encode and spread). With FSDP / ZeRO-3 the state is sharded over all ``G``
GPUs, and with DDP :mod:`~components.resilience.ownership` partitions it the same way, so a rank holds
``B = params × bytes_per_param / G``:

- snapshot = D2H of ``B`` + encode ``B`` on the rank's cores + spreading ``(k+m-1)/k × B`` per rank
  (one piece stays home) through the node's NIC, shared by its ``gpus_per_node`` ranks, + the fixed
  calls (the hand-off over the keepers' data plane, the ranks' agreement that every hand-off
  returned, one all-reduce of one integer counted as one call's latency, and rank 0's commit, sent to
  every keeper at once; pieces stream on open connections, counted in the spread);
- keeper memory per node = the node's ranks' buffers ``B`` + ``(k+m)/k × B`` per rank of pieces for
  two versions (the committed one is kept while the next is written);
- recovery after a node loss (group-local, issue 12 item 3) = the replacement node's ranks fetch
  ``k`` pieces of their own group (``B`` each, through one NIC) + decode + H2D + fixed calls, + when
  the state is replicated (HSDP with ``shard_group < G``, or DDP with ``shard_group = 1``) the owners'
  broadcast of the rest of each rank's shard over the training fabric. Nothing here depends on ``G``
  except through ``B``: recovery does not grow with the world size;
- remote checkpoint = the whole state through the storage's *aggregate* bandwidth, which does not
  grow with the job (Gemini, SOSP '23, §2: "it takes 42 minutes to checkpoint the model states of
  MT-NLG to the remote persistent storage when the bandwidth is 20Gbps", and the checkpoint time
  "stays almost the same as the number of machines increases ... because the aggregated bandwidth
  of the remote persistent storage is fixed"). MegaScale (NSDI '24, fast checkpointing and recovery) saves in two stages
  (GPU → host memory, blocking; host → HDFS in the background) and on recovery lets one rank per
  data-parallel group read from HDFS and broadcast, so its reads move the state once: the same
  ``state / aggregate bandwidth`` bound (we found no HDFS bandwidth figure in it, so
  :attr:`ClusterFigures.storage_gbps` defaults to Gemini's; raise it to model a faster store).

What this leaves out (so the figures are lower bounds on cost): the control plane (noticing the
failure, rescheduling a pod, re-forming NCCL groups: measured for this engine by
``tests/benchmarks/test_recovery_time.py``), contention between the spread and the training's own
network traffic, and stragglers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

GB = 1e9


@dataclass(frozen=True)
class HostFigures:
    """Figures measured on this machine (one core each; GB = 1e9 bytes)."""

    memcpy_gbps: float
    """``np.copyto`` into a preallocated buffer."""
    encode_gbps: dict[str, float]
    """Payload GB/s of ``encode`` per scheme (``"xor"``, ``"rs"``)."""
    decode_gbps: dict[str, float]
    """Payload GB/s of ``decode`` with parity in use (the lost-node case) per scheme."""
    ray_call_seconds: float
    """Round trip of one Ray actor method call (recovery's inventory and fetch calls cost at least this)."""
    link_call_seconds: float
    """Round trip of one keeper call over the data plane (a snapshot's hand-off, its commit)."""
    bytes_per_param: float
    """Snapshot bytes per parameter from the real layout (fp32 parameter + AdamW ``exp_avg`` and
    ``exp_avg_sq`` = 12, plus alignment and the meta region). FSDP2 with a bf16
    ``MixedPrecisionPolicy`` keeps the same fp32 sharded parameters, so 12 B/param holds on GPUs too."""


@dataclass(frozen=True)
class ClusterFigures:
    """Stated figures of the GPU cluster being projected (defaults: an H100-class node)."""

    gpus_per_node: int = 8
    nic_gbit: float = 400.0
    """Network bandwidth per node available to snapshot traffic, Gb/s (one 400G NIC; many GPU nodes
    have 8 of them for the training fabric, so this is the pessimistic case)."""
    host_memory_gb: float = 2048.0
    d2h_gbps: float = 25.0
    """Device-to-host copy per GPU, GB/s (PCIe Gen4 x16 in practice; Gen5 about doubles it)."""
    encode_cores_per_gpu: int = 2
    """CPU cores each rank's keeper gives to encode/decode (a node has ~100 cores for 8 GPUs)."""
    storage_gbps: float = 2.5
    """Aggregate bandwidth of remote checkpoint storage, GB/s: Gemini's 20 Gb/s by default."""
    fabric_gbit: float = 3200.0
    """Training fabric per node, Gb/s (8 × 400G RDMA NICs): carries the owners' broadcast after a
    restore when the state is replicated (DDP, HSDP)."""

    @property
    def nic_bytes_per_second(self) -> float:
        return self.nic_gbit / 8 * GB


@dataclass(frozen=True)
class Scheme:
    """The erasure code: ``k`` data + ``m`` parity pieces per group (``xor`` needs ``m = 1``)."""

    name: str = "xor"
    k: int = 4
    m: int = 1

    def __post_init__(self) -> None:
        if self.k < 1 or self.m < 1:
            raise ValueError(f"scheme {self.name}: k and m must be >= 1, got k={self.k}, m={self.m}")
        if self.name == "xor" and self.m != 1:
            raise ValueError(f"scheme xor has exactly one parity piece (m=1), got m={self.m}; use rs for m >= 2")

    def __str__(self) -> str:
        return f"{self.name} k={self.k} m={self.m}"


@dataclass(frozen=True)
class Projection:
    """One (model, GPU count) point; times in seconds, memory in GB (1e9 bytes)."""

    model: str
    params: float
    gpus: int
    bytes_per_rank: float
    d2h_s: float
    encode_s: float
    spread_s: float
    fixed_s: float
    keeper_gb_per_node: float
    keeper_share_of_host: float
    broadcast_s: float
    recovery_s: float
    remote_save_s: float
    remote_load_s: float

    @property
    def snapshot_s(self) -> float:
        """The whole snapshot, its stages run one after the other (an upper bound: they overlap)."""
        return self.d2h_s + self.encode_s + self.spread_s + self.fixed_s


def project(
    model: str,
    params: float,
    gpus: int,
    host: HostFigures,
    cluster: ClusterFigures,
    scheme: Scheme,
    versions_kept: int = 2,
    shard_group: int | None = None,
) -> Projection:
    """Project one point; ``gpus`` must be a whole number of nodes and hold at least one group per node.

    ``shard_group``: GPUs one copy of the state is sharded over (None: all of them, FSDP / ZeRO-3;
    HSDP: a divisor of ``gpus``; DDP: 1).
    """
    if gpus % cluster.gpus_per_node:
        raise ValueError(f"gpus={gpus} is not a whole number of {cluster.gpus_per_node}-GPU nodes")
    nodes = gpus // cluster.gpus_per_node
    if nodes < scheme.k + scheme.m:
        raise ValueError(f"{scheme} needs at least {scheme.k + scheme.m} nodes (one piece per node), got {nodes}")
    if scheme.name not in host.encode_gbps or scheme.name not in host.decode_gbps:
        raise ValueError(f"no measured encode/decode figure for scheme {scheme.name!r}")
    shard_group = gpus if shard_group is None else shard_group
    if shard_group < 1 or gpus % shard_group:
        raise ValueError(f"shard_group={shard_group} must divide gpus={gpus}")
    k, m, per_node = scheme.k, scheme.m, cluster.gpus_per_node
    state = params * host.bytes_per_param
    b = state / gpus
    # A replica's rank needs its whole shard back, but owns (and restores from keepers) only 1/G of
    # the state: the rest comes from the owners over the fabric (0 when every shard has one owner).
    broadcast = per_node * (state / shard_group - b) / (cluster.fabric_gbit / 8 * GB)
    cores = cluster.encode_cores_per_gpu
    nic = cluster.nic_bytes_per_second
    d2h = b / (cluster.d2h_gbps * GB)
    encode = b / (host.encode_gbps[scheme.name] * GB * cores)
    # Every rank of a node sends all its pieces but the one kept at home, through the node's one NIC.
    spread = per_node * b * (k + m - 1) / k / nic
    fixed = 3 * host.link_call_seconds  # hand-off, the ranks' all-reduce, commit (keepers answer in parallel)
    keeper = per_node * b * (1 + versions_kept * (k + m) / k)
    # A lost node: its replacement's ranks each fetch k pieces of B/k of their own group (parity in use).
    recovery = (
        per_node * b / nic
        + b / (host.decode_gbps[scheme.name] * GB * cores)
        + b / (cluster.d2h_gbps * GB)
        + (k + 1) * host.ray_call_seconds
        + broadcast
    )
    remote = state / (cluster.storage_gbps * GB)
    return Projection(
        model=model,
        params=params,
        gpus=gpus,
        bytes_per_rank=b,
        d2h_s=d2h,
        encode_s=encode,
        spread_s=spread,
        fixed_s=fixed,
        keeper_gb_per_node=keeper / GB,
        keeper_share_of_host=keeper / (cluster.host_memory_gb * GB),
        broadcast_s=broadcast,
        recovery_s=recovery,
        remote_save_s=remote,
        remote_load_s=remote,
    )


def project_grid(
    models: dict[str, float],
    gpu_counts: Iterable[int],
    host: HostFigures,
    cluster: ClusterFigures,
    scheme: Scheme,
) -> list[Projection]:
    """Every (model, GPU count) of the grid, models in the given order."""
    return [project(name, params, g, host, cluster, scheme) for name, params in models.items() for g in gpu_counts]


def _seconds(s: float) -> str:
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1000:.0f} ms"


def _bytes(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def markdown_table(rows: Sequence[Projection]) -> str:
    """The projection as a Markdown table (what the README shows)."""
    head = (
        "| model | GPUs | state / rank | snapshot (D2H + encode + spread + calls) | keeper memory / node "
        "| recovery, node lost | remote checkpoint save / load |\n|---|---:|---:|---|---:|---:|---:|"
    )
    lines = [head]
    for p in rows:
        lines.append(
            f"| {p.model} | {p.gpus:,} | {_bytes(p.bytes_per_rank)} | {_seconds(p.snapshot_s)} "
            f"({_seconds(p.d2h_s)} + {_seconds(p.encode_s)} + {_seconds(p.spread_s)} + {_seconds(p.fixed_s)}) "
            f"| {p.keeper_gb_per_node:.0f} GB ({p.keeper_share_of_host:.0%}) | {_seconds(p.recovery_s)} "
            f"| {_seconds(p.remote_save_s)} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Projection], path: Path, title: str) -> Path:
    """Snapshot and recovery time vs GPU count per model, next to the remote checkpoint (log scales)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build box or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, model in zip(colors, dict.fromkeys(p.model for p in rows), strict=False):
        pts = [p for p in rows if p.model == model]
        gpus = [p.gpus for p in pts]
        ax.plot(gpus, [p.snapshot_s for p in pts], "o-", color=color, label=f"{model} snapshot")
        ax.plot(gpus, [p.recovery_s for p in pts], "s--", color=color, label=f"{model} recovery")
        ax.plot(gpus, [p.remote_save_s for p in pts], ":", color=color, label=f"{model} remote checkpoint")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("seconds")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
