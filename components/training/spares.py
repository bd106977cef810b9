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


def preload() -> None:
    """Import the modules named in ``LMFORGE_PRELOAD_MODULES`` (Ray calls this as a process starts)."""
    import importlib

    for module in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        importlib.import_module(module)


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

    def __init__(self, count: int, keep_alive_s: float) -> None:
        self.count, self.keep_alive_s = count, keep_alive_s
        self.next_at = 0.0
        self.busy = threading.Lock()
        self.warned = False

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
            except Exception as e:  # a spare is an optimisation: training goes on without it
                if not self.warned:
                    self.warned = True
                    log.warning("could not prestart spare worker processes on this node: %s", e)


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


def prestart_workers(count: int, keep_alive_s: float) -> None:
    """Ask this node's raylet for ``count`` idle Python workers with the calling worker's runtime environment
    and job, kept at least ``keep_alive_s`` seconds (``NodeManagerService.PrestartWorkers``: Ray 2.60 has no
    Python API for it; the stub, messages and channel are Ray's)."""
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
    with init_grpc_channel(f"{node.node_ip_address}:{node.node_manager_port}") as channel:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
