"""KFP component ``pretrain``: a model trained from scratch on curated shards with Ray Train."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Pretrain the preset model on the curated dataset; resumes from its own checkpoints.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        dataset: Curated dataset pointer (from ``curate``).
        model: Output pointer to the HF-format model (``model/``) and its loss curve.
        metrics: Initial/final loss, held-out loss, tokens per second.
    """
    from components.common.stage import export, run_stage
    from components.pretrain.trainer import pretrain as train

    pointer, summary = run_stage(
        "pretrain",
        "models",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={"dataset": dataset.path},
        sections=("pretrain", "model"),
        fetch_inputs=False,  # the Ray Train workers read the shards from the store themselves
        fn=lambda ctx: train(
            ctx.cfg,
            dataset_uri=ctx.input_uri("dataset"),
            output_uri=ctx.out.uri,
            out_dir=ctx.out_dir,
            checkpoint_uri=ctx.scratch_uri("checkpoints"),
            mlflow_run_id=ctx.mlflow_run_id,
        ),
    )
    export(model, pointer, metrics, summary)
