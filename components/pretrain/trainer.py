"""The pretraining stage: a Ray Train ``TorchTrainer`` fit, then the model and its report.

:func:`run_training` is the one driver-side routine that pretraining and continual pretraining
share: connect to Ray, run :func:`~components.pretrain.loop.train_loop_per_worker` on
``pretrain.num_workers`` workers, and copy the final checkpoint's HF model to ``out_dir/model``.

Resuming is Ray Train's own: checkpoints go to ``RunConfig(storage_path=<checkpoint_uri>, name=<stage>)``
and Ray Train V2 keeps a snapshot of them there. A new fit with the same storage path and name (a
retried pipeline step, a rerun after a crash) reloads that snapshot, and ``ray.train.get_checkpoint()``
in the workers returns the latest checkpoint; within one fit, ``FailureConfig(max_failures)``
restarts the worker group from it. The driver reads the result from ``result.checkpoint`` (not from a
worker's disk), so workers may live on other nodes and checkpoints in S3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError, RecoveryError, StorageError
from components.common.log import get_logger
from components.common.ray_session import ray_session as common_ray_session
from components.common.tokenizer import load_tokenizer
from components.pretrain.callbacks import Callback, MlflowCurveLogger
from components.pretrain.checkpoint import MODEL_DIR, read_summary
from components.pretrain.loop import train_loop_per_worker
from components.pretrain.spec import TrainSpec

log = get_logger("lmforge.pretrain")


def pretrain(
    cfg: LifecycleConfig,
    *,
    dataset_dir: Path,
    out_dir: Path,
    checkpoint_uri: str,
    mlflow_run_id: str = "",
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Pretrain a Llama on ``dataset_dir``'s train split; the model goes to ``out_dir/model``.

    Args:
        cfg: the run config (``model`` and ``pretrain`` sections; ``model.init_from`` may name an HF
            model directory to start from instead of a random init).
        dataset_dir: curated dataset (manifest, tokenizer, shards).
        out_dir: receives ``model/`` (HF model + tokenizer) and ``loss_curve.json``.
        checkpoint_uri: ``file://`` or ``s3://`` location of this stage's checkpoints; a previous
            attempt's checkpoints there are resumed from.
        mlflow_run_id: run to log the per-step ``train_loss`` and ``lr`` curves to ('' = none).
        callbacks: extra loop callbacks (snapshots, fault injection), pickled to every worker.

    Returns:
        ``{"metrics": {...}, "loss_curve": [[step, loss], ...], "lr_curve": [[step, lr], ...]}``.
    """
    from components.evaluate.perplexity import heldout_loss

    p = cfg.pretrain
    init_from = cfg.model.init_from
    if init_from and not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from: {init_from!r} is not a local HF model directory")
    spec = TrainSpec(
        cfg=cfg,
        stage="pretrain",
        dataset_dir=str(dataset_dir),
        tokenizer_dir=str(Path(dataset_dir) / "tokenizer"),
        init_model_dir=init_from,
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        warmup_steps=p.warmup_steps,
        min_lr_ratio=p.min_lr_ratio,
        callbacks=tuple(callbacks),
    )
    summary = run_training(spec, out_dir=out_dir, checkpoint_uri=checkpoint_uri, mlflow_run_id=mlflow_run_id)
    model = load_model(Path(out_dir) / MODEL_DIR)
    metrics = {
        **training_metrics(summary),
        "heldout_loss": heldout_loss(
            model,
            dataset_dir,
            seq_len=cfg.model.seq_len,
            max_tokens=cfg.evaluate.heldout_max_tokens,
            batch_size=cfg.evaluate.batch_size,
        ),
    }
    log.info("pretrain done: %s", {k: round(v, 4) for k, v in metrics.items()})
    return {"metrics": metrics, "loss_curve": summary["loss_curve"], "lr_curve": summary["lr_curve"]}


def run_training(spec: TrainSpec, *, out_dir: Path, checkpoint_uri: str, mlflow_run_id: str = "") -> dict[str, Any]:
    """Fit ``spec`` on Ray Train (resuming from ``checkpoint_uri``); returns the final checkpoint's summary."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from components.common.lineage import tracking_uri
    from components.resilience.driver import release_keepers, resilience_callbacks

    cfg = spec.cfg
    storage_path, filesystem = ray_storage(cfg, checkpoint_uri)
    run_config = RunConfig(
        name=spec.stage,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=cfg.pretrain.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.pretrain.keep_checkpoints),
    )
    with ray_session(cfg):
        # Resilience callbacks come first: a fault at step S strikes after snapshot S has begun.
        mlflow = (tracking_uri(cfg), mlflow_run_id) if mlflow_run_id else None
        vocab_size = len(load_tokenizer(spec.tokenizer_dir))
        extra = resilience_callbacks(
            cfg, checkpoint_uri=checkpoint_uri, stage=spec.stage, vocab_size=vocab_size, mlflow=mlflow
        )
        curves = (MlflowCurveLogger(tracking_uri(cfg), mlflow_run_id, cfg.pretrain.log_every),) if mlflow else ()
        spec = dataclasses.replace(spec, callbacks=(*extra, *spec.callbacks, *curves))
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": spec},
            scaling_config=ScalingConfig(num_workers=cfg.pretrain.num_workers, use_gpu=cfg.pretrain.use_gpu),
            run_config=run_config,
        )
        result = trainer.fit()
        release_keepers(cfg, checkpoint_uri=checkpoint_uri, stage=spec.stage)
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
        from pyarrow.fs import S3FileSystem

        access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise StorageError(
                f"checkpoints at {checkpoint_uri} need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            )
        filesystem = S3FileSystem(
            access_key=access,
            secret_key=secret,
            endpoint_override=cfg.storage.s3_endpoint or None,
            scheme="https" if cfg.storage.s3_secure else "http",
            region=cfg.storage.s3_region,
            allow_bucket_creation=True,
        )
        return f"{parsed.netloc}{parsed.path}".rstrip("/"), filesystem
    raise StorageError(f"checkpoint URI {checkpoint_uri!r}: use file:///abs/path or s3://bucket/prefix")


def ray_session(cfg: LifecycleConfig) -> contextlib.AbstractContextManager[None]:
    """Ray for a training stage: ``pretrain.ray_address`` with ``pretrain.num_workers`` CPUs when local
    (see :func:`components.common.ray_session.ray_session`)."""
    return common_ray_session(cfg.pretrain.ray_address, cfg.pretrain.num_workers)
