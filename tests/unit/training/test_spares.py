"""Spare worker processes (components/training/spares.py): a new actor with the training workers' runtime
environment starts in a process the raylet started ahead of time, with the preloaded modules imported.

One local Ray with one CPU; the actors preload a probe module (``spare_probe.py``) instead of torch and
transformers, so the test costs a Ray start and a few process starts.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from components.common.config import load_config
from components.common.errors import ConfigError
from components.training.spares import ENGINE_MODULES, PRELOAD_ENV, SETUP_HOOK_ENV, worker_runtime_env

PROBE = "tests.unit.training.spare_probe"


def test_worker_runtime_env_preloads_the_engine_and_the_plugins_once_each():
    env = worker_runtime_env(("components.resilience.driver:plugin", "components.training.loop:x"))["env_vars"]

    assert env[SETUP_HOOK_ENV] == "components.training.spares.preload"
    assert env[PRELOAD_ENV].split(",") == [*ENGINE_MODULES, "components.resilience.driver"]


def test_standby_nodes_are_the_alive_nodes_outside_the_group_where_a_rank_fits():
    from components.training.spares import standby_in

    def node(node_id, cpus, alive=True, gpus=0):
        resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        return {
            "NodeID": node_id,
            "Alive": alive,
            "NodeManagerAddress": "10.0.0.1",
            "NodeManagerPort": 7,
            "Resources": resources,
        }

    nodes = [node("train", 1), node("standby", 1), node("big", 8), node("head", 0), node("dead", 1, alive=False)]
    # a rank per node: the 8-CPU node gets spares for as many ranks as a node of the group runs, no more
    assert standby_in(nodes, {"CPU": 1.0}, used={"train"}, max_ranks=2) == [
        ("standby", "10.0.0.1", 7, 1),
        ("big", "10.0.0.1", 7, 2),
    ]
    # GPU ranks: only a node with a free GPU can take one
    assert standby_in([node("cpu", 8), node("gpu", 8, gpus=1)], {"CPU": 1.0, "GPU": 1.0}, set(), 1) == [
        ("gpu", "10.0.0.1", 7, 1)
    ]


def test_negative_spare_workers_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"pretrain.spare_workers: must be >= 0"):
        load_config("tiny", ["pretrain.spare_workers=-1"])


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_new_actor_starts_in_the_prestarted_spare_with_its_modules_imported(local_ray, tmp_path):
    """The spare is found among the node's processes by its environment, and the next actor starts in it."""
    import ray

    env = {"env_vars": {SETUP_HOOK_ENV: "components.training.spares.preload", PRELOAD_ENV: PROBE}}
    env["env_vars"]["LMFORGE_SPARE_PROBE_DIR"] = str(tmp_path)
    env["env_vars"]["PYTHONPATH"] = os.pathsep.join(sys.path)

    @ray.remote(num_cpus=1)
    class Worker:
        def pid(self) -> int:
            return os.getpid()

        def probe_imported(self) -> bool:
            return PROBE in sys.modules

        def preloaded(self) -> tuple[float | None, float]:
            """When this process's setup hook finished its imports, and when the process started."""
            import psutil

            from components.training.spares import PRELOADED_AT

            return PRELOADED_AT[0], psutil.Process().create_time()

        def top_up(self) -> None:
            """What a training rank does after its first step (here the node's only rank)."""
            from components.training.spares import Spares

            Spares(1, keep_alive_s=120)._top_up()

        def workers_like_me(self) -> tuple[int, list[int]]:
            from components.training.spares import workers_like_me

            return workers_like_me(env["env_vars"])

    first = Worker.options(runtime_env=env).remote()
    first_pid = ray.get(first.pid.remote())
    ray.get(first.top_up.remote())
    spares: set[str] = set()
    for _ in range(600):  # the spare notes its pid once its setup hook ran (it registered with the raylet before)
        spares = set(os.listdir(tmp_path)) - {str(first_pid)}
        if spares:
            break
        time.sleep(0.1)
    assert spares, "the raylet started no spare process within 60 s"
    # one idle spare, one busy rank (the asking worker); no other process of this raylet has this environment
    assert ray.get(first.workers_like_me.remote()) == (1, [first_pid])
    ray.get(first.top_up.remote())  # the node has its spare: nothing more is asked for
    ray.kill(first)

    second = Worker.options(runtime_env=env).remote()
    assert str(ray.get(second.pid.remote())) in spares
    assert ray.get(second.probe_imported.remote())
    # the spare says when it became warm (a recovery report tells warm spares from cold ones by it)
    preloaded_at, started_at = ray.get(second.preloaded.remote())
    assert preloaded_at is not None and started_at <= preloaded_at <= time.time()
