"""The driver side of a training run: fit a :class:`TrainSpec` on Ray Train and collect its summary.

:func:`run_training` is what pretraining and continual pretraining share: connect to Ray, build the
callbacks the stage's plugins contribute on the driver (in-memory snapshots start their keepers
here), run :func:`~components.training.loop.train_loop_per_worker` on ``pretrain.num_workers``
workers, and read back the summary rank 0 published in the store next to the model. The driver
holds no model and no data: it can be a small pod, a RayJob's head, or a laptop.

Plugins are named by ``"module:function"`` strings in the spec (``TrainSpec.plugins``) rather than
imported here: the engine sits below every stage and below ``components/resilience``, so a layer
above says which of its helpers to run, and this module never imports upward. A plugin is a context
manager ``fn(spec) -> Iterator[tuple[Callback, ...]]``: entered inside the Ray session before the
fit, left after it.

Resuming is Ray Train's own: checkpoints go to ``RunConfig(storage_path=<checkpoint_uri>, name=<stage>)``
and Ray Train V2 keeps a snapshot of them there. A new fit with the same storage path and name (a
retried pipeline step, a rerun after a crash) reloads that snapshot, and ``ray.train.get_checkpoint()``
in the workers returns the latest checkpoint; within one fit, ``FailureConfig(max_failures)``
restarts the worker group from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError, RecoveryError, StorageError
from components.common.log import get_logger
from components.common.ray_session import ray_session as common_ray_session
from components.common.storage import join, open_store, s3_filesystem
from components.training.callbacks import MlflowCurveLogger, ProgressReporter
from components.training.loop import train_loop_per_worker
from components.training.spares import worker_runtime_env
from components.training.spec import TrainSpec

log = get_logger("lmforge.training")


def load_plugin(path: str):
    """The callable named by ``"package.module:function"``."""
    module, sep, attr = path.partition(":")
    if not sep:
        raise ConfigError(f"training plugin {path!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"training plugin {path!r} cannot be loaded: {e}") from e


def run_training(spec: TrainSpec) -> dict[str, Any]:
    """Fit ``spec`` on Ray Train (resuming from its checkpoints); returns the training summary.

    The workers publish the model and the summary under ``spec.output_uri``; this reads the summary
    back from the store, so the driver never holds the model and may run on any host. A run whose
    summary is already there (a re-run of a finished step) is not trained again.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from components.common.lineage import tracking_uri
    from components.training.timeline import timeline_callbacks

    cfg = spec.cfg
    if (done := read_training_summary(spec)) is not None:
        log.info("%s: %s already holds a finished run; reusing it", spec.stage, spec.output_uri)
        return done
    storage_path, filesystem = ray_storage(cfg, spec.checkpoint_uri)
    run_config = RunConfig(
        name=spec.stage,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=cfg.pretrain.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.pretrain.keep_checkpoints),
        # with spares, every worker process preloads the engine at start, so a prestarted one is ready
        worker_runtime_env=worker_runtime_env(spec.plugins) if cfg.pretrain.spare_workers > 0 else None,
        callbacks=timeline_callbacks(timeline_uri(spec), store_options(cfg)),
    )
    with ray_session(cfg), contextlib.ExitStack() as plugins:
        # Plugin callbacks come first: a fault at step S strikes after snapshot S has begun.
        extra = []
        for path in spec.plugins:
            extra += plugins.enter_context(load_plugin(path)(spec))
        curves = (ProgressReporter(spec.stage, spec.steps),)
        if spec.mlflow_run_id:
            curves += (MlflowCurveLogger(tracking_uri(cfg), spec.mlflow_run_id, cfg.pretrain.log_every),)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": dataclasses.replace(spec, callbacks=(*extra, *spec.callbacks, *curves))},
            scaling_config=ScalingConfig(num_workers=cfg.pretrain.num_workers, use_gpu=cfg.pretrain.use_gpu),
            run_config=run_config,
        )
        with ray_train_env(cfg):
            trainer.fit()
    summary = read_training_summary(spec)
    if summary is None:
        raise RecoveryError(f"{spec.stage}: the fit ended but no worker published {spec.summary_uri}")
    return summary


@contextlib.contextmanager
def ray_train_env(cfg: LifecycleConfig) -> Iterator[None]:
    """Ray Train's controller settings that shorten a recovery, for the duration of one fit.

    Ray Train reads them from environment variables of the driver, which it passes to its controller
    actor when ``fit()`` starts (``ray.train.v2`` ``ENV_VARS_TO_PROPAGATE``); they are restored after
    the fit so that nothing else in this process sees them. ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: the
    controller polls its workers this often, so a crash is noticed within one interval
    (``pretrain.health_check_interval_s``). ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``: Ray Train starts
    a watcher actor with every worker group, a new process competing for the CPU with the new workers
    during a restart (``pretrain.preemption_watcher``). Measured with ``tests/benchmarks/test_recovery_time.py``.
    """
    settings = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.pretrain.health_check_interval_s),
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1" if cfg.pretrain.preemption_watcher else "0",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def timeline_uri(spec: TrainSpec) -> str:
    """Where Ray Train's controller writes when each worker group of the fit started
    (:class:`~components.training.timeline.WorkerGroupTimeline`): in the fit's Ray Train run directory."""
    return join(spec.checkpoint_uri, spec.stage, "worker_groups.json")


def read_training_summary(spec: TrainSpec) -> dict[str, Any] | None:
    """The summary rank 0 published under ``spec.output_uri``, or None if the run has not finished."""
    store = open_store(spec.summary_uri, **store_options(spec.cfg))
    if not store.exists(spec.summary_uri):
        return None
    return json.loads(store.read_text(spec.summary_uri))


def training_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a training summary (shared by pretrain and continual)."""
    losses = [loss for _, loss in summary["loss_curve"]]
    return {
        "initial_loss": losses[0],
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),  # a 10-step mean: one batch is noisy
        "tokens_per_second": summary["tokens_per_second"],
        "train_tokens_seen": float(summary["train_tokens_seen"]),
        "steps": float(summary["steps"]),
        "parameters": float(summary["parameters"]),
        "resumed_from_step": float(summary["resumed_from_step"]),
    }


def ray_storage(cfg: LifecycleConfig, checkpoint_uri: str):
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig`` from a store URI."""
    parsed = urlparse(checkpoint_uri)
    if parsed.scheme == "file":
        return parsed.path, None
    if parsed.scheme == "s3":
        s = cfg.storage
        try:
            filesystem = s3_filesystem(
                s3_endpoint=s.s3_endpoint,
                s3_secure=s.s3_secure,
                s3_region=s.s3_region,
                max_attempts=s.s3_max_attempts,
                timeout_seconds=s.s3_timeout_seconds,
            )
        except StorageError as e:
            raise StorageError(f"checkpoints at {checkpoint_uri}: {e}") from e
        return f"{parsed.netloc}{parsed.path}".rstrip("/"), filesystem
    raise StorageError(f"checkpoint URI {checkpoint_uri!r}: use file:///abs/path or s3://bucket/prefix")


def ray_session(cfg: LifecycleConfig) -> contextlib.AbstractContextManager[None]:
    """Ray for a training stage: ``pretrain.ray_address`` with ``pretrain.num_workers`` CPUs when local
    (see :func:`components.common.ray_session.ray_session`)."""
    return common_ray_session(cfg.pretrain.ray_address, cfg.pretrain.num_workers)
