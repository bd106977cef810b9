"""KFP component ``curate``: raw text → quarantined bad records, filtered documents, packed token shards."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    corpus: str,
    dataset: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    data_card: dsl.Output[dsl.HTML],
    tokenizer_from: dsl.Input[dsl.Dataset] = None,
):
    """Curate one corpus into a tokenized, sharded dataset with a manifest.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        corpus: ``pretrain`` (reads ``curate.source``) or ``continual`` (reads ``continual.source``).
        tokenizer_from: A curated dataset whose tokenizer to reuse; absent → train a new tokenizer.
        dataset: Output pointer to the curated dataset (manifest, tokenizer, shards) in the store.
        metrics: Record counts, quarantine and drop counts, token counts.
        data_card: The data card (counts at every step, languages, lengths, dedup clusters, dropped
            examples per rule, shard lineage) as one HTML page, rendered by the Kubeflow UI.
    """
    import json

    from components.common.artifacts import open_run_store
    from components.common.config import load_config
    from components.common.errors import ConfigError
    from components.common.lineage import log_raw_files
    from components.common.sources import resolve_source, source_fingerprint
    from components.common.stage import export, run_stage
    from components.common.storage import join
    from components.curate.datacard import CARD, log_data_card
    from components.curate.run import curate as run_curate

    sources = {"pretrain": "curate", "continual": "continual"}
    if corpus not in sources:
        raise ConfigError(f"curate: corpus must be 'pretrain' or 'continual', got {corpus!r}")
    cfg = load_config(profile, overrides)
    source = getattr(cfg, sources[corpus]).source
    # New files under an unchanged source must rerun curation: address it by content too.
    store = open_run_store(cfg)
    fingerprint = source_fingerprint(source, resolve_source(source, store), store)
    inputs = {"tokenizer": tokenizer_from.path} if tokenizer_from is not None else {}

    def curate_and_log(ctx):
        summary = run_curate(
            ctx.cfg,
            source=source,
            out_dir=ctx.out_dir,
            tokenizer_dir=ctx.inputs["tokenizer"] / "tokenizer" if "tokenizer" in ctx.inputs else None,
            store=ctx.store,
        )
        if ctx.mlflow_run_id:
            log_data_card(ctx.out_dir / CARD, ctx.mlflow_run_id)
            # Every raw file, with the digest its manifest records, so lineage reaches it in MLflow alone.
            manifest = json.loads((ctx.out_dir / "manifest.json").read_text())
            log_raw_files([(f["uri"], f["sha256"]) for f in manifest["files"]], role="corpus")
        return summary

    pointer, summary = run_stage(
        "curate",
        "datasets",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths=inputs,
        sections=("curate", "tokenizer"),
        extra={"source": source, "fingerprint": fingerprint},
        fn=curate_and_log,
    )
    export(dataset, pointer, metrics, summary)
    # The card lives with the dataset in the store, so a cached (skipped) step still shows it.
    store.download_file(join(pointer["uri"], CARD), data_card.path)
