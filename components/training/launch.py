"""Run a :class:`TrainSpec` where ``pretrain.launcher`` says, and return its summary.

* ``ray`` (the default): this process is the Ray Train driver, on ``pretrain.ray_address`` — a Ray
  started inside the step (``local``, the embedded default), the node's Ray (``auto``), or an existing
  RayCluster through Ray Client (``ray://…``).
* ``rayjob``: this process (a KFP step pod) creates a KubeRay ``RayJob`` whose driver runs
  :mod:`components.training.job` on the job's own Ray cluster, follows it and removes it. The spec
  travels through the object store as JSON, the summary comes back the same way: the step and the
  cluster share nothing else. The RayJob is named after the step's output address, so a KFP retry
  of the same step re-attaches to its job instead of starting a second one.

Either way a finished run is recognised by the summary under ``spec.output_uri`` and never trained
twice.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import threading
from collections.abc import Iterator
from typing import Any

from components.common.artifacts import store_options
from components.common.errors import TrainingJobError
from components.common.log import get_logger
from components.common.storage import join, open_store
from components.training.driver import read_training_summary, run_training
from components.training.spec import TrainSpec

log = get_logger("lmforge.training")


def train(spec: TrainSpec) -> dict[str, Any]:
    """Train ``spec`` with the configured launcher (or reuse a finished run); returns the training summary."""
    if spec.cfg.pretrain.launcher == "rayjob":
        return train_on_rayjob(spec)
    return run_training(spec)


def spec_uri(spec: TrainSpec) -> str:
    """Where the RayJob's driver finds the spec (beside the run's checkpoints)."""
    return join(spec.checkpoint_uri, spec.stage, "job", "spec.json")


def job_entrypoint(spec: TrainSpec) -> str:
    """The RayJob entrypoint: the job module, the spec's URI and how to reach the store (no secrets)."""
    options = json.dumps(store_options(spec.cfg), sort_keys=True, separators=(",", ":"))
    return f"python -m components.training.job {shlex.quote(spec_uri(spec))} --store-options {shlex.quote(options)}"


def train_on_rayjob(spec: TrainSpec, *, api_client: Any = None) -> dict[str, Any]:
    """Create (or re-attach to) this run's RayJob, follow it to the end, and read the summary it published."""
    from components.common.images import ray_images
    from components.training.kube_launcher import run_rayjob
    from components.training.rayjob import build_rayjob, step_rayjob_name

    if (done := read_training_summary(spec)) is not None:
        log.info("%s: %s already holds a finished run; reusing it", spec.stage, spec.output_uri)
        return done
    cfg, uri = spec.cfg, spec_uri(spec)
    open_store(uri, **store_options(cfg)).write_text(uri, spec.to_json())
    name = step_rayjob_name(spec.stage, spec.output_uri)
    image, gpu_image = ray_images(cfg.cluster.image, cfg.cluster.gpu_image)  # the step's own code, on Ray
    manifest = build_rayjob(
        cfg,
        name=name,
        namespace=cfg.cluster.namespace,
        entrypoint=job_entrypoint(spec),
        image=image,
        gpu_image=gpu_image,
        labels={"lmforge.io/stage": spec.stage},
    )
    with _sigterm_as_interrupt():  # a cancelled KFP step gets SIGTERM: the launcher then deletes its RayJob
        outcome = run_rayjob(manifest, api_client=api_client, log=lambda line: log.info("[%s] %s", name, line))
    log.info(
        "%s: RayJob %s %s after %.0fs%s",
        spec.stage,
        name,
        outcome.job_status,
        outcome.seconds,
        f" ({outcome.retries} retries)" if outcome.retries else "",
    )
    summary = read_training_summary(spec)
    if summary is None:
        raise TrainingJobError(f"RayJob {name} succeeded but published no training summary at {spec.summary_uri}")
    return summary


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while following a RayJob (main thread only: Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}: the step was cancelled")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
