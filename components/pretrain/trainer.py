"""The pretraining stage: a Ray Train ``TorchTrainer`` fit, then the model and its report.

:func:`run_training` is the one driver-side routine that pretraining and continual pretraining
share: connect to Ray, run :func:`~components.training.loop.train_loop_per_worker` on
``pretrain.num_workers`` workers, and copy the final checkpoint's HF model to ``out_dir/model``.

Resuming is Ray Train's own: checkpoints go to ``RunConfig(storage_path=<checkpoint_uri>, name=<stage>)``
and Ray Train V2 keeps a snapshot of them there. A new fit with the same storage path and name (a
retried pipeline step, a rerun after a crash) reloads that snapshot, and ``ray.train.get_checkpoint()``
in the workers returns the latest checkpoint; within one fit, ``FailureConfig(max_failures)``
restarts the worker group from it. The driver reads the result from ``result.checkpoint`` (not from a
worker's disk), so workers may live on other nodes and checkpoints in S3.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import resilience
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger
from components.training.callbacks import Callback
from components.training.checkpoint import MODEL_DIR
from components.training.driver import load_model, run_training, training_metrics
from components.training.spec import TrainSpec

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
    from components.training.heldout import heldout_loss

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
        plugins=(resilience.PLUGIN,),
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
