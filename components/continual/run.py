"""The continual-pretraining stage: adapt a pretrained model to a new corpus without losing the old.

It runs the training engine (:func:`components.training.launch.train`) with three changes from
pretraining: the model starts from ``model_uri``; the LR *re-warms* from 0 to ``continual.lr`` and
decays again (resuming at the old, decayed LR adapts slowly, jumping straight to a high LR
destabilises, Gupta et al., 2023); and ``continual.replay_fraction`` of every batch is replayed from
the old corpus, the cheapest known guard against forgetting (Ibrahim et al., 2024).

Both corpora must be tokenized with the same tokenizer (the model has one embedding table), checked
from their manifests before anything is trained. Forgetting is measured by the workers (the driver
holds no model): held-out probes of the old and the new corpus at step 0 and at the end, and of the
old corpus every ``probe_every`` steps in between to expose the stability gap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import resilience
from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import DataError
from components.common.log import get_logger
from components.common.shards import read_manifest
from components.common.storage import join, open_store
from components.continual.forgetting import stability_gap
from components.training.callbacks import Callback
from components.training.driver import training_metrics
from components.training.launch import train
from components.training.schedule import schedule_fields
from components.training.spec import Probe, TrainSpec

log = get_logger("lmforge.continual")

PROBES_PER_RUN = 5  # enough points to see a dip and a recovery, few enough to cost little


def continual(
    cfg: LifecycleConfig,
    *,
    model_uri: str,
    dataset_uri: str,
    old_dataset_uri: str,
    output_uri: str,
    out_dir: Path,
    checkpoint_uri: str,
    mlflow_run_id: str = "",
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Continue pretraining the model at ``model_uri`` on ``dataset_uri``, replaying ``old_dataset_uri``.

    Returns ``{"metrics": {...}, "loss_curve", "lr_curve", "old_heldout_curve"}`` (curves are
    ``[[step, value], ...]``; the old held-out curve starts at step 0, before training); the adapted
    model (with tokenizer) goes to ``output_uri/model``, the curves to ``out_dir``.
    """
    check_same_tokenizer(cfg, dataset_uri, old_dataset_uri)
    check_model_tokenizer(cfg, model_uri, dataset_uri)
    c, e = cfg.continual, cfg.evaluate
    heldout = {"max_tokens": e.heldout_max_tokens, "batch_size": e.batch_size, "at_start": True}
    spec = TrainSpec(
        cfg=cfg,
        stage="continual",
        dataset_uri=dataset_uri,
        output_uri=output_uri,
        checkpoint_uri=checkpoint_uri,
        init_model_uri=model_uri,
        replay_uri=old_dataset_uri if c.replay_fraction > 0 else "",
        replay_fraction=c.replay_fraction,
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.lr,
        **schedule_fields(c),
        probes=(
            Probe("old_heldout", old_dataset_uri, every=c.probe_every or max(1, c.steps // PROBES_PER_RUN), **heldout),
            Probe("new_heldout", dataset_uri, **heldout),
        ),
        mlflow_run_id=mlflow_run_id,
        plugins=(resilience.PLUGIN,),
        callbacks=tuple(callbacks),
    )
    summary = train(spec)
    curves = summary["callbacks"]["probes"]["curves"]
    old_curve, new_curve = curves["old_heldout"], curves["new_heldout"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loss_curve.json").write_text(json.dumps(summary["loss_curve"]))
    (out_dir / "old_heldout_curve.json").write_text(json.dumps(old_curve))
    if mlflow_run_id:
        _log_old_curve(cfg, mlflow_run_id, old_curve)
    metrics = {
        **training_metrics(summary),
        "old_heldout_loss_before": old_curve[0][1],
        "old_heldout_loss_after": old_curve[-1][1],
        "new_heldout_loss_before": new_curve[0][1],
        "new_heldout_loss_after": new_curve[-1][1],
        "forgetting": old_curve[-1][1] - old_curve[0][1],
        "adaptation": new_curve[0][1] - new_curve[-1][1],
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


def check_same_tokenizer(cfg: LifecycleConfig, dataset_uri: str, old_dataset_uri: str) -> None:
    """Raise DataError unless both curated datasets were tokenized with the same tokenizer."""
    options = store_options(cfg)
    new_digest = read_manifest(dataset_uri, store_options=options)["tokenizer_digest"]
    old_digest = read_manifest(old_dataset_uri, store_options=options)["tokenizer_digest"]
    if new_digest != old_digest:
        raise DataError(
            f"new corpus {dataset_uri} (tokenizer {new_digest[:12]}) and old corpus {old_dataset_uri} "
            f"(tokenizer {old_digest[:12]}) were tokenized differently; curate the new corpus with "
            f"tokenizer.path={join(old_dataset_uri, 'tokenizer')}"
        )


def check_model_tokenizer(cfg: LifecycleConfig, model_uri: str, dataset_uri: str) -> None:
    """Raise DataError unless the model's saved tokenizer has the dataset's vocabulary.

    Compares the two ``tokenizer.json`` files' vocabularies and special tokens, read from the store
    (a few hundred KB; nothing else of the model is fetched).
    """
    model_tok, data_tok = join(model_uri, "tokenizer.json"), join(dataset_uri, "tokenizer", "tokenizer.json")
    store = open_store(model_tok, **store_options(cfg))
    if not store.exists(model_tok):
        raise DataError(f"{model_uri}: no tokenizer.json; the model dir must hold the tokenizer it was trained with")

    def vocabulary(uri: str) -> tuple:
        tok = json.loads(store.read_text(uri))
        return tok["model"].get("vocab"), sorted((t["id"], t["content"]) for t in tok.get("added_tokens", []))

    if vocabulary(model_tok) != vocabulary(data_tok):
        raise DataError(
            f"model {model_uri} was trained with a different tokenizer than corpus {dataset_uri}; "
            f"curate the corpus with tokenizer.path={model_uri}"
        )


def _log_old_curve(cfg: LifecycleConfig, run_id: str, curve: list[list[float]]) -> None:
    import mlflow

    from components.common.lineage import log_curve, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    log_curve(run_id, "old_heldout_loss", [(int(s), loss) for s, loss in curve])
