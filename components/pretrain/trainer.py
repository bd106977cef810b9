"""The pretraining stage: a model trained from scratch on the training engine, with resilience wired in.

The engine (``components/training``) runs the Ray Train fit wherever ``pretrain.launcher`` says; this
stage says what to train (the curated corpus, the preset, the schedule of ``pretrain.*``), asks the
workers for the held-out loss at the end (a probe: the driver holds no model), and plugs in the
in-memory snapshots of ``components/resilience`` (:data:`components.resilience.PLUGIN`). Inputs and
outputs are store URIs: the workers read the shards and write the model themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import resilience
from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.log import get_logger
from components.common.storage import open_store
from components.training.averaging import averaging_fields
from components.training.callbacks import Callback
from components.training.data import check_order
from components.training.driver import training_metrics
from components.training.eval_checkpoints import eval_checkpoint_steps
from components.training.launch import train
from components.training.publish import publish_branch
from components.training.schedule import schedule_fields
from components.training.spec import Probe, TrainSpec

log = get_logger("lmforge.pretrain")


def pretrain(
    cfg: LifecycleConfig,
    *,
    dataset_uri: str,
    output_uri: str,
    out_dir: Path,
    checkpoint_uri: str,
    mlflow_run_id: str = "",
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Pretrain a Llama on the train split of ``dataset_uri``; the workers write the model to ``output_uri/model``.

    Args:
        cfg: the run config (``model`` and ``pretrain`` sections; ``model.init_from`` may name an HF
            model to start from instead of a random init: a store URI, or a local directory on a
            single machine).
        dataset_uri: curated dataset (manifest, tokenizer, shards) in the store.
        output_uri: the stage's output in the store: ``model/`` and the training summary go there.
        out_dir: local directory for the small files the step publishes itself (``loss_curve.json``).
        checkpoint_uri: ``file://`` or ``s3://`` location of this stage's checkpoints; a previous
            attempt's checkpoints there are resumed from.
        mlflow_run_id: run to log the per-step ``train_loss`` and ``lr`` curves to ('' = none).
        callbacks: extra loop callbacks (tests), pickled to every worker; only with ``pretrain.launcher=ray``.

    Returns:
        ``{"metrics": {...}, "loss_curve": [[step, loss], ...], "lr_curve": [[step, lr], ...]}``, and with
        ``resilience.enabled`` ``"recoveries"`` (one record per recovery, see
        :class:`components.resilience.recovery.RecoveryRecord`) and the metric ``recoveries`` (their count).
    """
    p, e = cfg.pretrain, cfg.evaluate
    check_order(dataset_uri, p.order, "pretrain.order", store_options=store_options(cfg))
    spec = TrainSpec(
        cfg=cfg,
        stage="pretrain",
        dataset_uri=dataset_uri,
        output_uri=output_uri,
        checkpoint_uri=checkpoint_uri,
        init_model_uri=init_model_uri(cfg.model.init_from),
        steps=p.steps,
        batch_size=p.batch_size,
        lr=p.lr,
        **schedule_fields(p),
        **averaging_fields(p),
        branch_steps=tuple(p.branch_at),
        eval_checkpoint_steps=eval_checkpoint_steps(p.steps, p.eval_checkpoints),
        order=p.order,
        probes=(Probe("heldout", dataset_uri, max_tokens=e.heldout_max_tokens, batch_size=e.batch_size),),
        mlflow_run_id=mlflow_run_id,
        plugins=(resilience.PLUGIN,),
        callbacks=tuple(callbacks),
    )
    summary = train(spec)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "loss_curve.json").write_text(json.dumps(summary["loss_curve"]))
    heldout = summary["callbacks"]["probes"]["curves"]["heldout"]
    metrics = {**training_metrics(summary), "heldout_loss": heldout[-1][1]}
    for step in p.branch_at:  # WSD decay branches: extra models under branches/step-<S>/ for evaluation
        branch = train(spec.decay_branch(step))
        metrics[f"branch_{step}/heldout_loss"] = branch["callbacks"]["probes"]["curves"]["heldout"][-1][1]
    if p.publish_branch:  # the branch flows downstream: its model is model/, its held-out loss the stage's
        store = open_store(output_uri, **store_options(cfg))
        publish_branch(store, output_uri, spec.decay_branch(p.publish_branch).output_uri)
        metrics["final/heldout_loss"] = metrics["heldout_loss"]
        metrics["heldout_loss"] = metrics[f"branch_{p.publish_branch}/heldout_loss"]
    metrics["published_branch"] = p.publish_branch
    out = {"metrics": metrics, "loss_curve": summary["loss_curve"], "lr_curve": summary["lr_curve"]}
    # With resilience on, every restart of the worker group (tier, step restored, steps lost, time)
    # goes into the stage summary, so the run report can show what the run survived.
    kept = summary["callbacks"].get("ResilienceCallback")
    if kept is not None:
        out["recoveries"] = kept.get("recoveries", [])
        metrics["recoveries"] = len(out["recoveries"])
    log.info("pretrain done: %s", {k: round(v, 4) for k, v in metrics.items()})
    return out


def init_model_uri(init_from: str) -> str:
    """``model.init_from`` as a store URI ('' = random init): an s3:// or file:// URI, or a local directory."""
    if not init_from or "://" in init_from:
        return init_from
    path = Path(init_from).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model.init_from: {init_from!r} is neither a store URI (s3://…, file://…) nor a local HF model directory"
        )
    return path.resolve().as_uri()
