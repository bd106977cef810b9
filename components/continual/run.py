"""The continual-pretraining stage: adapt a pretrained model to a new corpus without losing the old.

It runs the pretraining loop (:func:`components.pretrain.trainer.run_training`) with three changes:
the model starts from ``model_dir``; the LR *re-warms* from 0 to ``continual.lr`` and decays again
(resuming at the old, decayed LR adapts slowly, jumping straight to a high LR destabilises, Gupta et
al., 2023); and ``continual.replay_fraction`` of every batch is replayed from the old corpus, the
cheapest known guard against forgetting (Ibrahim et al., 2024).

Both corpora must be tokenized with the same tokenizer (the model has one embedding table), checked
from their manifests before anything is trained. Forgetting is measured on the old held-out split
before and after, with :class:`~components.continual.forgetting.OldHeldoutProbe` sampling it in
between to expose the stability gap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import resilience
from components.common.config import LifecycleConfig
from components.common.errors import DataError
from components.common.log import get_logger
from components.common.shards import read_manifest
from components.continual.forgetting import OldHeldoutProbe, stability_gap
from components.training.callbacks import Callback
from components.training.checkpoint import MODEL_DIR
from components.training.driver import load_model, run_training, training_metrics
from components.training.spec import TrainSpec

log = get_logger("lmforge.continual")

PROBES_PER_RUN = 5  # enough points to see a dip and a recovery, few enough to cost little


def continual(
    cfg: LifecycleConfig,
    *,
    model_dir: Path,
    dataset_dir: Path,
    old_dataset_dir: Path,
    out_dir: Path,
    checkpoint_uri: str,
    mlflow_run_id: str = "",
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Continue pretraining ``model_dir`` on ``dataset_dir``, replaying ``old_dataset_dir``.

    Returns ``{"metrics": {...}, "loss_curve", "lr_curve", "old_heldout_curve"}`` (curves are
    ``[[step, value], ...]``; the old held-out curve starts at step 0, before training); the adapted
    model (with tokenizer) goes to ``out_dir/model``.
    """
    check_same_tokenizer(Path(dataset_dir), Path(old_dataset_dir))
    check_model_tokenizer(Path(model_dir), Path(dataset_dir))
    c = cfg.continual
    old_before, new_before = _heldout_losses(cfg, load_model(Path(model_dir)), old_dataset_dir, dataset_dir)
    probe = OldHeldoutProbe(
        str(old_dataset_dir),
        every=c.probe_every or max(1, c.steps // PROBES_PER_RUN),
        seq_len=cfg.model.seq_len,
        max_tokens=cfg.evaluate.heldout_max_tokens,
        batch_size=cfg.evaluate.batch_size,
    )
    spec = TrainSpec(
        cfg=cfg,
        stage="continual",
        dataset_dir=str(dataset_dir),
        tokenizer_dir=str(Path(dataset_dir) / "tokenizer"),
        init_model_dir=str(model_dir),
        replay_dir=str(old_dataset_dir) if c.replay_fraction > 0 else "",
        replay_fraction=c.replay_fraction,
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.lr,
        warmup_steps=c.warmup_steps,
        min_lr_ratio=c.min_lr_ratio,
        callbacks=(probe, *callbacks),
        plugins=(resilience.PLUGIN,),
    )
    summary = run_training(spec, out_dir=Path(out_dir), checkpoint_uri=checkpoint_uri, mlflow_run_id=mlflow_run_id)
    old_after, new_after = _heldout_losses(cfg, load_model(Path(out_dir) / MODEL_DIR), old_dataset_dir, dataset_dir)

    old_curve = [[0, old_before], *summary["callbacks"][probe.name]["curve"]]
    (Path(out_dir) / "old_heldout_curve.json").write_text(json.dumps(old_curve))
    if mlflow_run_id:
        _log_old_curve(cfg, mlflow_run_id, old_curve)
    metrics = {
        **training_metrics(summary),
        "old_heldout_loss_before": old_before,
        "old_heldout_loss_after": old_after,
        "new_heldout_loss_before": new_before,
        "new_heldout_loss_after": new_after,
        "forgetting": old_after - old_before,
        "adaptation": new_before - new_after,
        "old_heldout_loss_peak": max(loss for _, loss in old_curve[1:]),  # probes while training
        "stability_gap": stability_gap(old_curve),
    }
    log.info("continual done: %s", {k: round(v, 4) for k, v in metrics.items()})
    return {
        "metrics": metrics,
        "loss_curve": summary["loss_curve"],
        "lr_curve": summary["lr_curve"],
        "old_heldout_curve": old_curve,
    }


def check_same_tokenizer(dataset_dir: Path, old_dataset_dir: Path) -> None:
    """Raise DataError unless both curated datasets were tokenized with the same tokenizer."""
    new_digest = read_manifest(dataset_dir)["tokenizer_digest"]
    old_digest = read_manifest(old_dataset_dir)["tokenizer_digest"]
    if new_digest != old_digest:
        raise DataError(
            f"new corpus {dataset_dir} (tokenizer {new_digest[:12]}) and old corpus {old_dataset_dir} "
            f"(tokenizer {old_digest[:12]}) were tokenized differently; curate the new corpus with "
            f"tokenizer.path={old_dataset_dir / 'tokenizer'}"
        )


def check_model_tokenizer(model_dir: Path, dataset_dir: Path) -> None:
    """Raise DataError unless the model's saved tokenizer has the dataset's vocabulary."""
    from components.common.tokenizer import load_tokenizer

    if not (model_dir / "tokenizer.json").is_file():
        raise DataError(f"{model_dir}: no tokenizer.json; the model dir must hold the tokenizer it was trained with")
    if load_tokenizer(model_dir).get_vocab() != load_tokenizer(dataset_dir / "tokenizer").get_vocab():
        raise DataError(
            f"model {model_dir} was trained with a different tokenizer than corpus {dataset_dir}; "
            f"curate the corpus with tokenizer.path={model_dir}"
        )


def _heldout_losses(cfg: LifecycleConfig, model, old_dataset_dir: Path, dataset_dir: Path) -> tuple[float, float]:
    from components.training.heldout import heldout_loss

    e = cfg.evaluate
    old, new = (
        heldout_loss(model, d, seq_len=cfg.model.seq_len, max_tokens=e.heldout_max_tokens, batch_size=e.batch_size)
        for d in (old_dataset_dir, dataset_dir)
    )
    return old, new


def _log_old_curve(cfg: LifecycleConfig, run_id: str, curve: list[list[float]]) -> None:
    import mlflow

    from components.common.lineage import log_curve, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    log_curve(run_id, "old_heldout_loss", [(int(s), loss) for s, loss in curve])
