"""Spare worker processes: a restarted worker group starts in processes that already imported what it needs.

Most of a recovery on a small model is not the restore but Ray Train starting the new worker group:
a new Python process per rank, then importing Ray Train, torch and transformers (about 4 s of CPU in
a Ray actor, transformers alone ~3.3 s) before the training loop can run. Ray starts an actor only in
a process that has run nothing else, so a warmed process that ran a task cannot be reused; but the
raylet can start idle worker processes ahead of time (its ``PrestartWorkers`` RPC), and an actor whose
runtime environment is byte-for-byte the one those processes were started with is placed in one of
them instead of a new process.

With ``pretrain.spare_workers=N`` (:func:`worker_runtime_env`) every training worker process runs
:func:`preload` at start-up, before it accepts work: Ray runs the module path in
``__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR`` (the mechanism behind ``ray.init(runtime_env=
{"worker_process_setup_hook": ...})``, which Ray offers for the job only, not per actor), and
:func:`preload` imports the modules named in ``LMFORGE_PRELOAD_MODULES``. After the first step, one
rank per Ray node asks the node's raylet for N idle processes per rank on the node, with the workers'
own runtime environment (:class:`Spares`), so they start and import while training runs; when Ray
Train restarts the group, its new actors land in them. The raylet keeps a prestarted process at least
``pretrain.spare_keep_alive_s`` even when the node's CPUs are all taken, and reaps it afterwards
(where CPUs are free, it keeps up to that many idle processes, as always); every node checks every
:data:`CHECK_EVERY_S` and replaces the spares a restart used or the raylet reaped.

**Standby nodes.** A node lost takes its spares with it, and a replacement node joins only after the loss
(a new pod: scheduled, image pulled, Ray started: far more than the restore), its new worker starting
cold. Clusters that must recover from a node loss fast keep hot standby capacity instead (a worker group
with more replicas than training needs; ``cluster.standby_nodes``): a node already in the Ray cluster,
with the resources of a rank, that runs none. When a node is lost, Ray Train places the restarted group
over the survivors and the standby (its placement group asks for one bundle of ``resources_per_worker``
per rank, wherever they fit). So rank 0 also gives every standby node its spares (:func:`standby_nodes`:
alive nodes outside this group's placement group where a bundle fits): it sends the same request to that
node's raylet, with its own runtime environment and job, so the restarted rank placed there starts in a
process that has imported everything. A node that joins while training runs becomes a standby node and
gets its spares at rank 0's next check. The raylet keeps an idle process where CPUs are free (up to its
free CPUs, whatever the keep-alive), so a standby node keeps its spares without renewal: rank 0 asks once
per node (a restarted group's rank 0 asks again; a spare too many is reaped after its keep-alive).

A spare costs a node one idle Python process per rank with torch and transformers imported (a few
hundred MB of host memory) and its imports' CPU (seconds) each time it is replaced: after a restart,
and on a node whose CPUs are all taken once per keep-alive period.
"""

from __future__ import annotations

import json
import os
import threading

from components.common.log import get_logger

log = get_logger("lmforge.training")

#: Ray runs the function at this module path in every worker process it starts, before any work
#: (``ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR``).
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
#: comma-separated modules :func:`preload` imports
PRELOAD_ENV = "LMFORGE_PRELOAD_MODULES"
#: env_vars of a Ray actor a training worker starts that must not preload the engine (a snapshot keeper, which
#: never needs torch): Ray merges an actor's env_vars into those of the process that starts it, so without these
#: a keeper started by rank 0 inherits the hook and imports the engine (measured 2026-12-04: 552 MiB RSS instead
#: of 139, four keepers ready in 10.6 s instead of 1.9); an empty hook is no hook (Ray's default_worker.py)
NO_PRELOAD_ENV = {SETUP_HOOK_ENV: "", PRELOAD_ENV: ""}
#: what every training worker imports before its first step: Ray Train, the engine (torch with it)
#: and transformers' Llama, the model of every preset
ENGINE_MODULES = ("ray.train.torch", "components.training.loop", "transformers.models.llama.modeling_llama")


def worker_runtime_env(plugins: tuple[str, ...]) -> dict:
    """The runtime environment of training workers when spares are on: their setup hook preloads the engine
    and the modules of the spec's plugins (``"module:function"``), whose callbacks the workers unpickle."""
    modules = list(ENGINE_MODULES)
    for path in plugins:
        module = path.partition(":")[0]
        if module not in modules:
            modules.append(module)
    return {"env_vars": {SETUP_HOOK_ENV: f"{__name__}.preload", PRELOAD_ENV: ",".join(modules)}}


#: when :func:`preload` finished in this process (``time.time()``), None if it did not run: a worker placed in
#: a spare tells from it whether its spare was warm when the failure struck (the recovery benchmark)
PRELOADED_AT: list[float | None] = [None]


def preload() -> None:
    """Import the modules named in ``LMFORGE_PRELOAD_MODULES`` (Ray calls this as a process starts).

    Ray retitles the process ``ray::IDLE`` and the raylet counts it idle (and may push an actor to it)
    before this hook has run; an actor pushed meanwhile waits for the imports. So "idle" is not "warm":
    :data:`PRELOADED_AT` is."""
    import importlib
    import time

    for module in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        importlib.import_module(module)
    PRELOADED_AT[0] = time.time()


#: seconds between a node's checks that its spares are all there (a used or reaped one is replaced)
CHECK_EVERY_S = 30.0


class Spares:
    """Keeps ``count`` idle worker processes per training rank on this worker's Ray node, with its runtime
    environment.

    One rank per raylet (the lowest pid among those with this environment) checks, at most every
    :data:`CHECK_EVERY_S` on a daemon thread, how many idle processes with this environment its raylet
    holds and how many ranks it runs (:func:`workers_like_me`), and asks the raylet for the missing
    spares, so spares used by a restart or reaped after their keep-alive are replaced, and spares left by
    an earlier fit with the same environment are reused rather than added to. :meth:`maybe_renew` is
    cheap to call every step and never fails training (a failed request is logged once).
    """

    def __init__(self, count: int, keep_alive_s: float, *, standby_ranks: int = 0) -> None:
        """``standby_ranks``: rank 0 passes the most ranks a node of its group runs, and gives each standby
        node spares for that many ranks (at most as many as fit there); other ranks pass 0."""
        self.count, self.keep_alive_s, self.standby_ranks = count, keep_alive_s, standby_ranks
        self.next_at = 0.0
        self.busy = threading.Lock()
        self.warned = False
        self.served: set[str] = set()  # standby nodes given their spares by this process

    def maybe_renew(self, now: float) -> None:
        if self.count <= 0 or now < self.next_at or self.busy.locked():
            return
        self.next_at = now + CHECK_EVERY_S
        threading.Thread(target=self._top_up, name="lmforge-spares", daemon=True).start()

    def _top_up(self) -> None:
        with self.busy:
            try:
                import ray

                env_vars = json.loads(ray._private.worker.global_worker.runtime_env or "{}").get("env_vars", {})
                idle, ranks = workers_like_me(env_vars)
                missing = self.count * len(ranks) - idle
                if os.getpid() == min(ranks) and missing > 0:
                    prestart_workers(missing, self.keep_alive_s)
                    log.info("asked this node's raylet for %d spare worker process(es)", missing)
                if self.standby_ranks > 0:
                    self._standby()
            except Exception as e:  # a spare is an optimisation: training goes on without it
                if not self.warned:
                    self.warned = True
                    log.warning("could not prestart spare worker processes: %s", e)

    def _standby(self) -> None:
        """Give each standby node not served yet its spares (one request to its raylet)."""
        for node_id, address, port, ranks in standby_nodes(self.standby_ranks):
            if node_id in self.served:
                continue
            prestart_workers(self.count * ranks, self.keep_alive_s, raylet=(address, port))
            self.served.add(node_id)
            log.info(
                "asked standby node %s's raylet for %d spare worker process(es): a rank restarted there after a "
                "node loss starts with its imports done", node_id[:8], self.count * ranks,
            )  # fmt: skip


def standby_nodes(max_ranks: int) -> list[tuple[str, str, int, int]]:
    """``(node id, raylet address, raylet port, ranks)`` of every alive node where Ray Train could place a rank
    of this worker's group but none runs: outside the group's placement group, with room for ``ranks``
    (1..``max_ranks``) of its bundles. Empty outside a placement group (no Ray Train worker group)."""
    import ray
    from ray.util.placement_group import get_current_placement_group, placement_group_table

    group = get_current_placement_group()
    if group is None:
        return []
    table = placement_group_table(group)
    return standby_in(ray.nodes(), table["bundles"][0], set(table["bundles_to_node_id"].values()), max_ranks)


def standby_in(
    nodes: list[dict], bundle: dict[str, float], used: set[str], max_ranks: int
) -> list[tuple[str, str, int, int]]:
    """:func:`standby_nodes` from ``ray.nodes()`` records, one bundle of the group (Ray Train's are all
    ``resources_per_worker``) and the nodes holding the group's bundles."""
    out = []
    for node in nodes:
        if not node.get("Alive") or node["NodeID"] in used:
            continue
        have = node.get("Resources") or {}
        fits = min((int(have.get(name, 0) // need) for name, need in bundle.items() if need > 0), default=0)
        if fits > 0:
            out.append((node["NodeID"], node["NodeManagerAddress"], int(node["NodeManagerPort"]), min(fits, max_ranks)))
    return out


def workers_like_me(env_vars: dict[str, str]) -> tuple[int, list[int]]:
    """``(idle, ranks)``: the worker processes of this process's raylet (its parent) whose environment has
    ``env_vars`` (those of this worker's runtime environment: what the raylet matches an actor to a process
    by), as the number idle or still starting and the pids of the busy ones, this one included."""
    import psutil

    me = psutil.Process()
    idle, ranks = 0, [me.pid]
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if process.info["ppid"] != me.ppid() or process.info["pid"] == me.pid:
            continue
        # Ray workers retitle themselves: ray::IDLE while idle, ray::<Actor>.<method> once they run
        command = " ".join(process.info["cmdline"] or ())
        if not ("ray::" in command or "default_worker.py" in command):
            continue
        try:
            environ = process.environ()
        except psutil.Error:  # exited meanwhile
            continue
        if all(environ.get(name) == value for name, value in env_vars.items()):
            if "ray::IDLE" in command or "default_worker.py" in command:
                idle += 1
            else:
                ranks.append(process.info["pid"])
    return idle, ranks


def prestart_workers(count: int, keep_alive_s: float, raylet: tuple[str, int] | None = None) -> None:
    """Ask this node's raylet (or the one at ``raylet``: address, port) for ``count`` idle Python workers with
    the calling worker's runtime environment and job, kept at least ``keep_alive_s`` seconds
    (``NodeManagerService.PrestartWorkers``: Ray 2.60 has no Python API for it; the stub, messages and
    channel are Ray's)."""
    import ray
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    worker = ray._private.worker.global_worker
    node = worker.node
    request = node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.Language.PYTHON,
        job_id=worker.current_job_id.binary(),
        # the raylet matches an actor to an idle process by the hash of exactly this string
        runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=worker.runtime_env),
        keep_alive_duration_secs=max(1, int(keep_alive_s)),
        num_workers=count,
    )
    # Ray's own channel factory: TLS (RAY_USE_TLS) and token authentication as the cluster has them
    address, port = raylet or (node.node_ip_address, node.node_manager_port)
    with init_grpc_channel(f"{address}:{port}") as channel:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
