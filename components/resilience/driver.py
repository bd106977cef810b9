"""The driver's side of in-memory fault tolerance: check the cluster, start the keepers, build the callbacks.

Plugged into the training engine (``components/training/driver.py``) by the training stages through
:func:`training_callbacks`, which runs before ``TorchTrainer.fit``. Everything that can be
known before training is checked here, so an impossible setting fails in seconds with a message
that says what to change (``k + m`` above the node count, a keeper budget below the snapshot size,
a fault that needs keepers while they are off), instead of minutes into a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator

from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger
from components.common.storage import join
from components.resilience.budget import KeeperNeed, check_need, estimate_before_fit, framed_share_bytes
from components.resilience.callback import ResilienceCallback, ResilienceTarget
from components.resilience.faults import TAKES_RANK, FaultInjector, local_marker_uri, parse_faults
from components.resilience.layout import DEFAULT_META_CAPACITY
from components.resilience.placement import check_node_count, cluster_nodes
from components.resilience.watchdog import HangWatchdog
from components.training.callbacks import Callback
from components.training.spec import TrainSpec

log = get_logger(__name__)


def keeper_run_name(checkpoint_uri: str, stage: str) -> str:
    """One set of keepers per (checkpoint location, stage): a retried step finds its predecessor's, should
    that one have died without releasing them (``training_callbacks`` releases them when a fit ends)."""
    return f"{stage}-{hashlib.sha1(f'{checkpoint_uri}|{stage}'.encode()).hexdigest()[:12]}"


def _meta_model(cfg: LifecycleConfig, vocab_size: int):
    """``cfg.model`` built on the meta device: shapes and dtypes, no memory."""
    import torch
    from transformers import LlamaForCausalLM

    from components.common.models import llama_config

    with torch.device("meta"):
        config = llama_config(
            cfg.model.preset,
            vocab_size=vocab_size,
            seq_len=cfg.model.seq_len,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        return LlamaForCausalLM(config)


def state_bytes_estimate(cfg: LifecycleConfig, vocab_size: int) -> int:
    """Bytes of parameters plus AdamW's two moments for ``cfg.model`` (built on the meta device: no memory)."""
    return 3 * sum(p.numel() * p.element_size() for p in _meta_model(cfg, vocab_size).parameters())


def keeper_need_estimate(cfg: LifecycleConfig, vocab_size: int, nodes: int) -> KeeperNeed:
    """The most loaded keeper's memory need, from the ranks' real shares of ``cfg.model`` (``budget.py``)."""
    r = cfg.resilience
    # the meta region as the snapshot engine sizes it (snapshot.py): RNG streams plus the loss-curve tail
    meta_capacity = DEFAULT_META_CAPACITY + 80 * (cfg.pretrain.checkpoint_every + r.snapshot_every)
    payloads = framed_share_bytes(_meta_model(cfg, vocab_size), cfg.pretrain.num_workers, meta_capacity)
    return estimate_before_fit(payloads, nodes=nodes, codec=(r.scheme, r.k, r.m))


def fault_callbacks(cfg: LifecycleConfig, checkpoint_uri: str, stage: str) -> tuple[Callback, ...]:
    """The injector of ``worker_crash`` and ``worker_hang`` faults (empty when none is configured)."""
    faults = parse_faults(cfg.resilience.faults)
    keeper_faults = [str(f) for f in faults if f.kind not in TAKES_RANK]
    if keeper_faults and not cfg.resilience.enabled:
        raise ConfigError(
            f"resilience.faults: {', '.join(keeper_faults)} act on snapshot keepers; "
            "set resilience.enabled=true or remove them"
        )
    hangs = [str(f) for f in faults if f.kind == "worker_hang"]
    if hangs and not watchdog_on(cfg):
        raise ConfigError(
            f"resilience.faults: {', '.join(hangs)} hang a rank until the hang watchdog ends it; "
            "set resilience.enabled=true and resilience.hang_factor > 0, or remove them"
        )
    if not any(f.kind in TAKES_RANK for f in faults):
        return ()
    return (FaultInjector(faults, markers_uri(checkpoint_uri, stage), store_options(cfg)),)


def _has_snapshots(run_name: str, snapshots_uri: str, options: dict) -> bool:
    """Whether an earlier attempt of this step left snapshots: keepers still running, or persisted ones."""
    import ray

    from components.common.storage import open_store
    from components.resilience.keeper_actor import keeper_namespace
    from components.resilience.persist import persisted_versions

    namespace = keeper_namespace(run_name)
    if any(a["namespace"] == namespace for a in ray.util.list_named_actors(all_namespaces=True)):
        return True
    return bool(persisted_versions(open_store(snapshots_uri, **options), snapshots_uri))


def markers_uri(checkpoint_uri: str, stage: str) -> str:
    return join(local_marker_uri(checkpoint_uri), stage, "faults")


def watchdog_on(cfg: LifecycleConfig) -> bool:
    return cfg.resilience.enabled and cfg.resilience.hang_factor > 0


def resilience_callbacks(
    cfg: LifecycleConfig, *, checkpoint_uri: str, stage: str, vocab_size: int, mlflow: tuple[str, str] | None = None
) -> tuple[Callback, ...]:
    """Check the cluster and the budget, start the keepers, and return the callbacks for the workers
    (the resilience callback first, so a fault at step S strikes after snapshot S has begun; then the
    hang watchdog, whose heartbeat precedes a ``worker_hang``)."""

    from components.resilience.keeper_actor import start_keepers

    callbacks: list[Callback] = []
    if cfg.resilience.enabled:
        r = cfg.resilience
        hosts_of = cluster_nodes()  # nodes that may hold pieces -> their host
        nodes, hosts = list(hosts_of), len(set(hosts_of.values()))
        run_name = keeper_run_name(checkpoint_uri, stage)
        snapshots_uri = join(local_marker_uri(checkpoint_uri), stage, "snapshots")
        if hosts < r.k + r.m and _has_snapshots(run_name, snapshots_uri, store_options(cfg)):
            # a retried step after losing nodes: recover what exists, on the hosts left
            log.warning(
                "resuming on %d host(s), fewer than resilience.k + resilience.m = %d: new snapshots are less "
                "protected until nodes are added", hosts, r.k + r.m,
            )  # fmt: skip
        else:
            check_node_count(r.k, r.m, hosts)  # a fresh start with too few hosts is a configuration error
        need = keeper_need_estimate(cfg, vocab_size, len(nodes))
        check_need(
            r.keeper_memory_mb, need, f"estimated before training from the model's {cfg.pretrain.num_workers} shares"
        )
        start_keepers(run_name, cfg, expected_version_bytes=need.stored)
        target = ResilienceTarget(
            run_name=run_name,
            snapshots_uri=snapshots_uri,
            markers_uri=markers_uri(checkpoint_uri, stage),
            store_options=store_options(cfg),
            mlflow=mlflow,
            recoveries_uri=join(local_marker_uri(checkpoint_uri), stage, "recoveries"),
        )
        callbacks.append(ResilienceCallback(cfg, target, parse_faults(r.faults)))
        if watchdog_on(cfg):
            callbacks.append(HangWatchdog.from_config(cfg))
        log.info(
            "in-memory snapshots every %d step(s), %s k=%d m=%d over %d nodes; persisted every %d snapshots",
            r.snapshot_every, r.scheme, r.k, r.m, len(nodes), r.persist_every,
        )  # fmt: skip
    callbacks += fault_callbacks(cfg, checkpoint_uri, stage)
    return tuple(callbacks)


#: seconds between the driver's looks for nodes that joined during the fit (each look reads the node table)
WATCH_NODES_EVERY_S = 5.0


class KeeperFollower:
    """Starts the run's keeper on every node that joins during the fit, as soon as it joins.

    A lost node comes back as a new Ray node (KubeRay replaces its pod). Without this, the restarted
    worker group's rank 0 starts the keeper there while planning the recovery (``start_keepers`` in
    ``callback.py``) and waits for it, a new process importing the keeper's modules (Ray, NumPy:
    seconds; measured 9-10 s on the shared 2-core box while they still imported torch), before any tier
    is tried although that keeper holds nothing. Started from here when the node joins, its start overlaps Ray Train's wait
    for the node and its new worker's start, and the plan finds it running. ``start_keepers`` still
    starts whatever is missing, so a keeper this misses (a look that failed) costs only the wait.

    It looks for joins every :data:`WATCH_NODES_EVERY_S` (a joining pod's own start, tens of seconds on
    Kubernetes, dwarfs the interval; the old 1 s look fetched the whole node table every second). Not
    through the GCS's node channel (Ray's private ``GcsAioNodeInfoSubscriber``, what the dashboard
    follows), although that costs nothing on a steady cluster: its long poll keeps a Python gRPC call in
    flight in a driver thread at all times, and a process that forks meanwhile skips gRPC's fork handlers:
    tried, the full test suite's ``Cluster.add_node`` from the driver then forked a child that crashed
    (SIGSEGV) and the node never joined. A driver (a KFP step) may start subprocesses at any time.

    Every alive node gets a keeper, as ``start_keepers`` does, also one added by an autoscaler with no
    restart to follow; the keepers are released with the others when the fit ends.
    """

    def __init__(self, run_name: str, cfg: LifecycleConfig, known: set[str]) -> None:
        self.run_name, self.cfg, self.known = run_name, cfg, set(known)
        self.started: list[str] = []  # nodes this gave a keeper, oldest first
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards known/started (the watch thread's look() and a caller's)
        self._warned = False
        self._thread = threading.Thread(target=self._watch, name="lmforge-keeper-follower", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_NODES_EVERY_S):
            self.look()

    def look(self) -> None:
        """Start a keeper on each alive node not seen before (never raises: the plan starts what is missing)."""
        import ray

        try:
            for node in [n["NodeID"] for n in ray.nodes() if n["Alive"]]:
                self._start(node)
        except Exception as e:  # an optimisation: the recovery plan starts missing keepers itself
            self._warn(e)

    def _start(self, node: str) -> None:
        from components.resilience.keeper_actor import _keeper_on

        with self._lock:
            if node in self.known or self._stop.is_set():
                return
            self.known.add(node)
        try:
            # not waited for: the recovery plan's start_keepers finds it by name, started or starting
            _keeper_on(node, self.run_name, self.cfg, expected_version_bytes=0)
        except Exception as e:  # an optimisation: the recovery plan starts missing keepers itself
            self._warn(e)
            return
        with self._lock:
            self.started.append(node)
        log.info("node %s joined during the fit: its snapshot keeper is starting", node[:8])

    def _warn(self, e: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("could not start keepers on nodes that joined during the fit: %s", e)

    def close(self) -> None:
        """Stop following (before the keepers are released, so none is started after)."""
        with self._lock:
            self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def training_callbacks(spec: TrainSpec) -> Iterator[tuple[Callback, ...]]:
    """The engine's plugin (``TrainSpec.plugins``): snapshot and fault callbacks for one fit.

    Entered on the Ray driver before the fit (checks, keepers started; nodes that join during the fit
    get theirs as they join: :class:`KeeperFollower`), left after it: the keepers are released whether the
    fit succeeded or raised. Ray Train's own restarts within the fit reuse them; a fit that raised has used
    up its restarts, and what survives it for a KFP retry of the step is the persisted tier in the object
    store (the retry starts new keepers). Keepers left behind would hold the snapshot memory of every node
    until someone killed them by hand.
    """
    from components.common.artifacts import store_options
    from components.common.lineage import tracking_uri
    from components.common.tokenizer import load_tokenizer
    from components.training.inputs import local_copy

    cfg = spec.cfg
    mlflow = (tracking_uri(cfg), spec.mlflow_run_id) if spec.mlflow_run_id else None
    vocab_size = 0
    if cfg.resilience.enabled:  # the keeper budget is estimated from the model's size
        vocab_size = len(load_tokenizer(local_copy(spec.tokenizer_uri, store_options=store_options(cfg))))
    follower = None
    try:
        callbacks = resilience_callbacks(
            cfg, checkpoint_uri=spec.checkpoint_uri, stage=spec.stage, vocab_size=vocab_size, mlflow=mlflow
        )
        if cfg.resilience.enabled:
            import ray

            known = {n["NodeID"] for n in ray.nodes()}  # resilience_callbacks started the keepers of these
            follower = KeeperFollower(keeper_run_name(spec.checkpoint_uri, spec.stage), cfg, known)
        yield callbacks
    finally:
        if follower is not None:
            follower.close()
        release_keepers(cfg, checkpoint_uri=spec.checkpoint_uri, stage=spec.stage)


def release_keepers(cfg: LifecycleConfig, *, checkpoint_uri: str, stage: str) -> None:
    """Stop the run's keepers after the fit, successful or not (their memory is no longer needed)."""
    if cfg.resilience.enabled:
        from components.resilience.keeper_actor import stop_keepers

        stop_keepers(keeper_run_name(checkpoint_uri, stage))
