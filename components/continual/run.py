"""The continual-pretraining stage: adapt a pretrained model to a new corpus without losing the old.

It runs the training engine (:func:`components.training.launch.train`) with three changes from
pretraining: the model starts from ``model_uri``; the LR *re-warms* from 0 to ``continual.lr`` and
decays again (resuming at the old, decayed LR adapts slowly, jumping straight to a high LR
destabilises, Gupta et al., 2023; ``continual.schedule`` picks the decay, docs/continual.md); and
``continual.replay_fraction`` of every batch is replayed from *every* corpus the base model learned
(its lineage, :func:`ancestor_corpora`; per corpus with ``continual.replay_ratios``), the cheapest
known guard against forgetting (Ibrahim et al., 2024).

All corpora must be tokenized with the same tokenizer (the model has one embedding table), checked
from their manifests before anything is trained. Forgetting is measured by the workers (the driver
holds no model): held-out probes of every corpus at step 0, at ``continual.probes`` points (denser
while re-warming) and at the end; :mod:`components.continual.forgetting` turns the curves into
forgetting, adaptation and the stability gap under per-corpus metric names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import resilience
from components.common.artifacts import store_options
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError, DataError
from components.common.log import get_logger
from components.common.shards import read_manifest
from components.common.storage import join, open_store
from components.continual.forgetting import corpus_label, corpus_metrics, probe_steps, unique_labels
from components.training.averaging import averaging_fields
from components.training.callbacks import Callback
from components.training.data import check_order
from components.training.driver import training_metrics
from components.training.launch import train
from components.training.publish import publish_branch
from components.training.schedule import schedule_fields
from components.training.spec import Probe, TrainSpec

log = get_logger("lmforge.continual")


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
    ancestors: Sequence[str] = (),
) -> dict[str, Any]:
    """Continue pretraining the model at ``model_uri`` on ``dataset_uri``, replaying ``old_dataset_uri`` and
    every other corpus in the model's lineage (:func:`continual_spec`); then train the WSD decay branches.

    Returns ``{"metrics": {...}, "loss_curve", "lr_curve", "old_heldout_curve", "heldout_curves",
    "corpora"}``: curves are ``[[step, value], ...]``, held-out ones start at step 0 (before
    training) and are keyed by corpus label; ``corpora`` says which labels are old and which is new.
    The adapted model (with tokenizer) goes to ``output_uri/model``, the curves to ``out_dir``; with
    ``continual.publish_branch`` = S the decay branched at S is ``output_uri/model`` and the metrics are its
    (the main run's under ``final/``, its model under ``branches/final/``, ``"main_run"``).
    """
    spec = continual_spec(
        cfg,
        model_uri=model_uri,
        dataset_uri=dataset_uri,
        old_dataset_uri=old_dataset_uri,
        output_uri=output_uri,
        checkpoint_uri=checkpoint_uri,
        mlflow_run_id=mlflow_run_id,
        callbacks=callbacks,
        ancestors=ancestors,
    )
    c = cfg.continual
    *old_labels, new_label = (p.name for p in spec.probes)  # the old corpora, oldest first, then the new one
    old_label = old_labels[0]
    summary = train(spec)
    curves = summary["callbacks"]["probes"]["curves"]
    old_curve = curves[old_label]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loss_curve.json").write_text(json.dumps(summary["loss_curve"]))
    (out_dir / "old_heldout_curve.json").write_text(json.dumps(old_curve))
    (out_dir / "heldout_curves.json").write_text(json.dumps(curves))
    if mlflow_run_id:
        _log_curves(cfg, mlflow_run_id, curves, old_label)
    metrics = {**training_metrics(summary), **curve_metrics(curves, old_labels, new_label), "probes": len(old_curve)}
    branches, main_run = {}, None
    for step in c.branch_at:  # WSD decay branches: artifacts for evaluation (publish_branch: one goes downstream)
        branch = train(spec.decay_branch(step))
        branch_curves = branch["callbacks"]["probes"]["curves"]
        branches[step] = {
            "model_uri": join(spec.decay_branch(step).output_uri, "model"),
            "heldout_curves": branch_curves,
            "lr_curve": branch["lr_curve"],
        }
        for name, value in corpus_metrics(branch_curves, old=old_labels, new=new_label).items():
            if "/" in name and not name.startswith("heldout_loss_before"):
                metrics[f"branch_{step}/{name}"] = value
    if c.publish_branch:
        # The gate judges what flows downstream: the stage's numbers become the branch's, the main run's
        # keep a final/ prefix, and the branch's model becomes model/ (the main run's: branches/final/).
        published = branches[c.publish_branch]
        store = open_store(output_uri, **store_options(cfg))
        final = publish_branch(store, output_uri, published["model_uri"].removesuffix("/model"))
        metrics.update({f"final/{k}": v for k, v in curve_metrics(curves, old_labels, new_label).items()})
        metrics.update(curve_metrics(published["heldout_curves"], old_labels, new_label))
        main_run = {"model_uri": join(final, "model")}
    metrics["published_branch"] = c.publish_branch
    log.info("continual done: %s", {k: round(v, 4) for k, v in metrics.items()})
    return {
        "branches": branches,
        "main_run": main_run,  # where the main run's model went when a branch was published (else None)
        "metrics": metrics,
        "loss_curve": summary["loss_curve"],
        "lr_curve": summary["lr_curve"],
        "old_heldout_curve": old_curve,
        "heldout_curves": curves,
        "corpora": {"old": old_labels, "new": new_label},
        "replays": [[uri, fraction] for uri, fraction in spec.replays],
        "averaging": summary["callbacks"].get("averaging"),  # which snapshots the main run's model averages
    }


def curve_metrics(curves: dict, old_labels: list[str], new_label: str) -> dict[str, float]:
    """Forgetting, adaptation and the stability gap of one run's held-out curves, with the older names."""
    old_curve, new_curve = curves[old_labels[0]], curves[new_label]
    return {
        **corpus_metrics(curves, old=old_labels, new=new_label),
        # the names runs before per-corpus metrics logged (the replayed pretraining corpus is "old")
        "old_heldout_loss_before": old_curve[0][1],
        "old_heldout_loss_after": old_curve[-1][1],
        "new_heldout_loss_before": new_curve[0][1],
        "new_heldout_loss_after": new_curve[-1][1],
        "old_heldout_loss_peak": max(loss for _, loss in old_curve[1:]),  # probes while training
    }


def continual_spec(
    cfg: LifecycleConfig,
    *,
    model_uri: str,
    dataset_uri: str,
    old_dataset_uri: str,
    output_uri: str,
    checkpoint_uri: str,
    mlflow_run_id: str = "",
    callbacks: Sequence[Callback] = (),
    ancestors: Sequence[str] = (),
) -> TrainSpec:
    """The training run of a continual step, checked before anything trains.

    It replays every corpus the base model learned (``old_dataset_uri`` first, then ``ancestors``: the
    caller walks them with :func:`ancestor_corpora`) in the mixture of :func:`replay_mixture`, and probes each of them and
    the new corpus; the probes are named by corpus label, the old corpora first, the new one last.
    """
    # every corpus the base model learned (its lineage), the champion's pretraining corpus first
    old_uris = list(dict.fromkeys(u.rstrip("/") for u in [old_dataset_uri, *ancestors]))
    for uri in old_uris:
        check_same_tokenizer(cfg, dataset_uri, uri)
    check_model_tokenizer(cfg, model_uri, dataset_uri)
    c, e = cfg.continual, cfg.evaluate
    check_order(dataset_uri, c.order, "continual.order", store_options=store_options(cfg))
    *old_labels, new_label = unique_labels([_label(cfg, uri) for uri in [*old_uris, dataset_uri]])
    replays = replay_mixture(c.replay_fraction, c.replay_ratios, dict(zip(old_labels, old_uris, strict=True)))
    points = probe_steps(
        c.steps, probes=c.probes, every=c.probe_every, warmup_steps=c.warmup_steps, density=c.probe_density
    )
    heldout = {"max_tokens": e.heldout_max_tokens, "batch_size": e.batch_size, "at_start": True, "steps": points}
    return TrainSpec(
        cfg=cfg,
        stage="continual",
        dataset_uri=dataset_uri,
        output_uri=output_uri,
        checkpoint_uri=checkpoint_uri,
        init_model_uri=model_uri,
        replays=replays,
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.lr,
        **schedule_fields(c),
        **averaging_fields(c),
        branch_steps=tuple(c.branch_at),
        order=c.order,
        probes=(
            *(Probe(label, uri, **heldout) for label, uri in zip(old_labels, old_uris, strict=True)),
            Probe(new_label, dataset_uri, **heldout),
        ),
        mlflow_run_id=mlflow_run_id,
        plugins=(resilience.PLUGIN,),
        callbacks=tuple(callbacks),
    )


def ancestor_corpora(cfg: LifecycleConfig, model_uri: str) -> list[str]:
    """Every curated corpus in the lineage of the model at ``model_uri`` (``<output>/model``), oldest first.

    Walked through MLflow with the one lineage walker (:mod:`components.common.lineage_walk`): from the
    run that produced the model's output back through every model it continued from to the curate
    runs. So a retrain of a retrain finds the original pretraining corpus and every corpus added
    since. A lineage that cannot be walked (no run records the model, a producing run was deleted) or
    that names a corpus no longer in the store is an error naming the run or the corpus: replaying
    less than the model learned would be a silent change of the experiment.
    """
    import mlflow

    from components.common import lineage
    from components.common.artifacts import MARKER
    from components.common.lineage_walk import producer_run_id, walk

    output = model_uri.rstrip("/").rsplit("/", 1)[0]
    lineage.setup(cfg)
    client = mlflow.MlflowClient()
    run_id = producer_run_id(client, output)
    if not run_id:
        raise DataError(
            f"the lineage of base model {model_uri} cannot be walked: no MLflow run at {lineage.tracking_uri(cfg)} "
            f"records {output} as its output (lineage.tracking_uri points elsewhere, or the run was deleted); "
            "set lineage.tracking_uri to the tracking server that ran it, or continual.base_model to a model it recorded"
        )
    tree = walk(client, run_id)
    broken = tree.broken_nodes()
    if broken:
        raise DataError(
            f"the lineage of base model {model_uri} is broken at {broken[0].name} ({broken[0].uri}): "
            f"{broken[0].broken}; restore that run (mlflow runs restore) or retrain from a complete lineage"
        )
    corpora = [node.uri.rstrip("/") for node in tree.corpora()]
    store = open_store(output, **store_options(cfg))
    for uri in corpora:
        if not store.exists(join(uri, MARKER)):
            raise DataError(
                f"the lineage of {model_uri} names corpus {uri}, which is not a completed output in the store "
                f"(deleted?); restore it, or set continual.base_model to a model whose lineage is complete"
            )
    return corpora


def replay_mixture(total: float, ratios: dict, corpora: dict[str, str]) -> tuple[tuple[str, float], ...]:
    """``(uri, fraction of each batch)`` of every old corpus (keyed by label in ``corpora``).

    ``ratios`` (``continual.replay_ratios``) gives each corpus its fraction by label; empty, the
    ``total`` (``continual.replay_fraction``) is shared equally. Corpora with fraction 0 are left out.
    """
    if ratios:
        unknown = sorted(set(ratios) - set(corpora))
        if unknown:
            raise ConfigError(
                f"continual.replay_ratios: {', '.join(unknown)} not in the base model's lineage; "
                f"its corpora are {', '.join(corpora)}"
            )
        mixture = [(uri, float(ratios.get(label, 0.0))) for label, uri in corpora.items()]
    else:
        mixture = [(uri, total / len(corpora)) for uri in corpora.values()]
    return tuple((uri, fraction) for uri, fraction in mixture if fraction > 0)


def _label(cfg: LifecycleConfig, dataset_uri: str) -> str:
    """The corpus' name in metric keys, from the source its manifest records."""
    return corpus_label(read_manifest(dataset_uri, store_options=store_options(cfg)).get("source", ""), dataset_uri)


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


def _log_curves(cfg: LifecycleConfig, run_id: str, curves: dict[str, list[list[float]]], old_label: str) -> None:
    """Every corpus' probe curve as ``heldout_loss/<corpus>``; the old one also under its earlier name."""
    import mlflow

    from components.common.lineage import log_curve, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    for label, curve in curves.items():
        log_curve(run_id, f"heldout_loss/{label}", [(int(s), loss) for s, loss in curve])
    log_curve(run_id, "old_heldout_loss", [(int(s), loss) for s, loss in curves[old_label]])
