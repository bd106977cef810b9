"""Compile every pipeline to KFP IR YAML in ``pipelines/compiled/`` and check the committed copies.

The compiled YAML is committed so the Kubeflow UI and the GitOps path use reviewed artefacts; a
test runs :func:`check_compiled` so a change to a component that is not recompiled fails CI.

A pipeline is compiled *for* a profile: its config places every step (image, GPUs, memory,
tolerations, retries; pipelines/graph.py) and the profile becomes the default of the pipeline's
``profile`` parameter (KFP's ``Compiler.compile(pipeline_parameters=...)``), so a run started from
the UI without touching the parameters runs on the cluster it was compiled for. The profile must be
able to run on a cluster at all (components/common/runtime.py): ``tiny`` alone, with its local store
and SQLite MLflow, is refused.

The default, :data:`COMPILE_PROFILE` = ``small+cluster``: ``small`` (~125M parameters, one GPU per
GPU step, modest memory) schedules on any cluster with a GPU node and finishes a first run in hours,
which is what a default clicked in the UI should do; ``1b`` needs 16 GPUs and would sit unschedulable
on most clusters; ``tiny`` is the local demo. Compile with ``--profile 1b+cluster`` for a 1B
pipeline (placement is fixed in the IR, so a 1B run wants a 1B-compiled pipeline).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from components.common.config import LifecycleConfig, load_config
from components.common.errors import LmforgeError
from components.common.runtime import require_cluster_ready

#: Default ``lmforge compile --profile``: see the module docstring for why.
COMPILE_PROFILE = "small+cluster"

#: Pipeline name -> ``module:builder``; a builder takes the config that places the steps.
PIPELINES = {"lifecycle": "pipelines.lifecycle:build_lifecycle", "continual": "pipelines.continual:build_continual"}

# The SDK version line changes with a patch release of kfp without changing the pipeline.
_VOLATILE = re.compile(r"^sdkVersion: .*$", re.MULTILINE)


def build_pipeline(name: str, cfg: LifecycleConfig):
    """The KFP pipeline ``name`` with its steps placed as ``cfg`` says."""
    if name not in PIPELINES:
        raise LmforgeError(f"unknown pipeline {name!r}; choose one of: {', '.join(PIPELINES)}")
    module, attr = PIPELINES[name].split(":")
    return getattr(__import__(module, fromlist=[attr]), attr)(cfg)


def compile_all(output_dir: Path, profile: str = COMPILE_PROFILE, overrides: list[str] | None = None) -> list[Path]:
    """Write ``<output_dir>/<pipeline>.yaml`` for every pipeline, compiled for ``profile`` + ``overrides``."""
    from kfp import compiler

    overrides = list(overrides or [])
    cfg = load_config(profile, overrides)
    require_cluster_ready(cfg, context="as a compiled pipeline (its steps share no filesystem)")
    defaults = {"profile": profile, **({"overrides": overrides} if overrides else {})}
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PIPELINES:
        path = output_dir / f"{name}.yaml"
        compiler.Compiler().compile(build_pipeline(name, cfg), str(path), pipeline_parameters=defaults)
        written.append(path)
    return written


def _normalized(path: Path) -> str:
    return _VOLATILE.sub("", path.read_text())


def check_compiled(compiled_dir: Path) -> list[str]:
    """Names of the committed pipelines that differ from a fresh compile with the defaults (empty when up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(Path(tmp))
        return [
            p.name
            for p in fresh
            if not (compiled_dir / p.name).exists() or _normalized(p) != _normalized(compiled_dir / p.name)
        ]
