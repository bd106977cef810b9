"""KFP component ``quantize``: weight quantization (``quantize.method``) with a size, speed and quality report."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def quantize(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    base_model: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Quantize the weights (``quantize.method``) and measure size and perplexity deltas.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        base_model: The model to quantize (from ``align``).
        dataset: Curated dataset whose held-out split measures the perplexity delta.
        model: Output pointer to the quantized model.
        metrics: Size on disk, perplexity and generation tokens/s before/after (and the low-bit sweep's perplexities).
    """
    from components.common.stage import export, run_stage
    from components.quantize.run import CONFIG_KEYS
    from components.quantize.run import quantize as run_quantize

    pointer, summary = run_stage(
        "quantize",
        "models",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={"base_model": base_model.path, "dataset": dataset.path},
        sections=CONFIG_KEYS,
        fn=lambda ctx: run_quantize(
            ctx.cfg,
            model_dir=ctx.inputs["base_model"] / "model",
            dataset_dir=ctx.inputs["dataset"],
            out_dir=ctx.out_dir,
        ),
    )
    export(model, pointer, metrics, summary)
