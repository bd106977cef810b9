"""Snapshot keepers start without torch: a keeper only moves bytes, and torch would cost every keeper start
about a second of CPU and a few hundred MB (on every node, and on a replacement node before recovery can use
its keeper). Checked in a fresh interpreter, and in keeper actors started by a training worker whose setup
hook preloads torch (``pretrain.spare_workers``: rank 0 starts keepers while planning a recovery)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from components.common.config import load_config

#: the modules a keeper process runs: the actor's module, the mixins of its class and what they call
KEEPER_MODULES = (
    "components.resilience.keeper_actor",
    "components.resilience.keeper",
    "components.resilience.spread",
    "components.resilience.persist",
    "components.resilience.dataplane",
    "components.resilience.handoff_reader",
    "components.resilience.codec",
    "components.resilience.piece",
    "components.resilience.faults",
)
HEAVY = ("torch", "transformers")

IMPORT_IN_FRESH_PROCESS = """
import importlib, json, sys
for module in sys.argv[1].split(","):
    importlib.import_module(module)
from components.resilience.keeper_actor import keeper_actor_class
keeper_actor_class()  # the Ray actor class, as start_keepers builds it
print(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in sys.argv[2].split(","))))
"""


def _imported_in_fresh_process(modules: tuple[str, ...]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_IN_FRESH_PROCESS, ",".join(modules), ",".join(HEAVY)],
        capture_output=True, text=True, timeout=300, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_keeper_actor_and_its_modules_import_neither_torch_nor_transformers():
    heavy = _imported_in_fresh_process(KEEPER_MODULES)
    assert not heavy, (
        f"a keeper's modules import {heavy[:5]}: keep trainer-side code (torch tensors) out of the modules "
        "keepers import (handoff_reader.py vs handoff.py)"
    )


def test_the_fresh_process_check_sees_torch_when_a_trainer_side_module_is_imported():
    """The check above can fail: the hand-off's trainer side (SharedBuffers, torch tensors) imports torch."""
    assert "torch" in _imported_in_fresh_process(("components.resilience.handoff",))


def test_keepers_a_worker_with_the_preload_hook_starts_have_no_torch(ray_cluster):
    """Ray merges an actor's env_vars into those of the process that starts it: the keepers a training worker
    starts must not inherit its setup hook (components/training/spares.py) and preload torch."""
    import ray

    from components.resilience.keeper_actor import stop_keepers
    from components.training.spares import PRELOAD_ENV, SETUP_HOOK_ENV

    run, cfg = "keeper-imports", load_config("tiny", ["resilience.keeper_memory_mb=64"])

    @ray.remote(num_cpus=0)
    class Rank:
        def start_keepers(self) -> dict[str, tuple[bool, bool]]:
            """What rank 0 does while planning a recovery; returns per node (keeper has torch, I have torch)."""
            from components.resilience.keeper_actor import start_keepers

            keepers = start_keepers(run, cfg, expected_version_bytes=0)
            return {node: (ray.get(k.imported.remote("torch")), "torch" in sys.modules) for node, k in keepers.items()}

    hook = {"env_vars": {SETUP_HOOK_ENV: "components.training.spares.preload", PRELOAD_ENV: "torch"}}
    try:
        loaded = ray.get(Rank.options(runtime_env=hook).remote().start_keepers.remote(), timeout=300)
    finally:
        stop_keepers(run)
    assert len(loaded) == 4
    assert all(rank_has_torch for _, rank_has_torch in loaded.values())  # the hook ran where it should
    assert not any(keeper_has_torch for keeper_has_torch, _ in loaded.values()), loaded
