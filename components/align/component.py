"""KFP component ``align``: supervised fine-tuning into a chat model."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def align(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    base_model: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """SFT on prompt→response pairs (``align.source``), loss on response tokens only.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        base_model: The model to fine-tune (from ``continual``).
        model: Output pointer to the chat model; its tokenizer carries the chat template.
        metrics: SFT loss, held-out answer loss before and after, example counts.
    """
    from components.align.sft import _store_for
    from components.align.sft import align as sft
    from components.common.lineage import digest_files, log_raw_files
    from components.common.sources import resolve_source
    from components.common.stage import export, run_stage

    def body(ctx):
        # The SFT pairs enter from outside the platform: each file is a raw input with its digest.
        store = _store_for(ctx.cfg)
        log_raw_files(digest_files(resolve_source(ctx.cfg.align.source, store), store), role="sft")
        return sft(
            ctx.cfg, model_dir=ctx.inputs["base_model"] / "model", out_dir=ctx.out_dir, mlflow_run_id=ctx.mlflow_run_id
        )

    pointer, summary = run_stage(
        "align",
        "models",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={"base_model": base_model.path},
        sections=("align",),
        fn=body,
    )
    export(model, pointer, metrics, summary)
