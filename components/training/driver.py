"""The driver side of a training run: fit a :class:`TrainSpec` on Ray Train and collect its summary.

:func:`run_training` is what pretraining and continual pretraining share: connect to Ray, build the
callbacks the stage's plugins contribute on the driver (in-memory snapshots start their keepers
here), run :func:`~components.training.loop.train_loop_per_worker` on ``pretrain.num_workers``
workers, and copy the final checkpoint's HF model to ``out_dir/model``.

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
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError, RecoveryError, StorageError
from components.common.log import get_logger
from components.common.ray_session import ray_session as common_ray_session
from components.common.storage import s3_filesystem
from components.training.callbacks import MlflowCurveLogger
from components.training.checkpoint import MODEL_DIR, read_summary
from components.training.loop import train_loop_per_worker
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


def run_training(spec: TrainSpec, *, out_dir: Path, checkpoint_uri: str, mlflow_run_id: str = "") -> dict[str, Any]:
    """Fit ``spec`` on Ray Train (resuming from ``checkpoint_uri``); returns the final checkpoint's summary."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from components.common.lineage import tracking_uri

    cfg = spec.cfg
    storage_path, filesystem = ray_storage(cfg, checkpoint_uri)
    run_config = RunConfig(
        name=spec.stage,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=cfg.pretrain.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.pretrain.keep_checkpoints),
    )
    with ray_session(cfg), contextlib.ExitStack() as plugins:
        # Plugin callbacks come first: a fault at step S strikes after snapshot S has begun.
        extra = []
        for path in spec.plugins:
            extra += plugins.enter_context(
                load_plugin(path)(spec, checkpoint_uri=checkpoint_uri, mlflow_run_id=mlflow_run_id)
            )
        curves = (MlflowCurveLogger(tracking_uri(cfg), mlflow_run_id, cfg.pretrain.log_every),) if mlflow_run_id else ()
        spec = dataclasses.replace(spec, callbacks=(*extra, *spec.callbacks, *curves))
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": spec},
            scaling_config=ScalingConfig(num_workers=cfg.pretrain.num_workers, use_gpu=cfg.pretrain.use_gpu),
            run_config=run_config,
        )
        result = trainer.fit()
    if result.checkpoint is None:
        raise RecoveryError(f"{spec.stage} finished without a checkpoint under {checkpoint_uri}/{spec.stage}")
    out_dir = Path(out_dir)
    with result.checkpoint.as_directory() as ckpt:
        shutil.copytree(Path(ckpt) / MODEL_DIR, out_dir / MODEL_DIR, dirs_exist_ok=True)
        summary = read_summary(Path(ckpt))
    (out_dir / "loss_curve.json").write_text(json.dumps(summary["loss_curve"]))
    return summary


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


def load_model(model_dir: Path):
    """The HF model in ``model_dir``, on a GPU when the driver has one (for held-out evaluation)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    return model.to("cuda") if torch.cuda.is_available() else model


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
