"""KFP component ``continual``: continue pretraining on a new corpus, measuring forgetting."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def continual(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    base_model: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    old_dataset: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Re-warm and decay the LR on the new corpus with replay from the old one.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        base_model: The model to continue from (from ``pretrain``).
        dataset: The new corpus, curated with the base model's tokenizer.
        old_dataset: The corpus the base model was trained on (replay and forgetting).
        model: Output pointer to the adapted model.
        metrics: Held-out loss on old and new data before and after; forgetting.
    """
    from components.common.stage import export, run_stage
    from components.continual.run import ancestor_corpora
    from components.continual.run import continual as adapt

    def body(ctx):
        model_uri = ctx.input_uri("base_model", "model")
        return adapt(
            ctx.cfg,
            model_uri=model_uri,
            dataset_uri=ctx.input_uri("dataset"),
            old_dataset_uri=ctx.input_uri("old_dataset"),
            output_uri=ctx.out.uri,
            out_dir=ctx.out_dir,
            checkpoint_uri=ctx.scratch_uri("checkpoints"),
            mlflow_run_id=ctx.mlflow_run_id,
            # every corpus the base model learned, from its lineage in MLflow (replayed and probed)
            ancestors=ancestor_corpora(ctx.cfg, model_uri),
        )

    pointer, summary = run_stage(
        "continual",
        "models",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={"base_model": base_model.path, "dataset": dataset.path, "old_dataset": old_dataset.path},
        sections=("continual", "pretrain", "model"),
        fetch_inputs=False,  # the Ray Train workers read model and shards from the store themselves
        fn=body,
    )
    export(model, pointer, metrics, summary)
