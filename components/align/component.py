"""KFP components of the align stage: ``align`` (SFT into a chat model) and ``prefer`` (the
preference step chosen by ``align.method``), each its own artifact and MLflow run."""

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
    from components.align import inputs as data
    from components.align.sft import align as sft
    from components.common.config import load_config
    from components.common.stage import export, run_stage

    cfg = load_config(profile, overrides)
    store = data.source_store(cfg, cfg.align.source)
    read = data.sft_inputs(cfg, store)

    def body(ctx):
        # The SFT records enter from outside the platform: each file a raw input with its digest.
        data.log_inputs(read, store)
        return sft(
            ctx.cfg,
            model_dir=ctx.inputs["base_model"] / "model",
            out_dir=ctx.out_dir,
            mlflow_run_id=ctx.mlflow_run_id,
            # With align.num_workers >= 2 the Ray workers read and write these, never the step's disk.
            model_uri=ctx.input_uri("base_model", "model"),
            out_uri=ctx.out.uri,
            scratch_uri=ctx.scratch_uri("checkpoints"),
        )

    pointer, summary = run_stage(
        "align",
        "models",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={"base_model": base_model.path},
        sections=(),
        # SFT's own keys and its data's content digest: an edited file retrains, align.beta does not.
        extra={"align": data.sft_config(cfg), "data": data.address(read)},
        fn=body,
    )
    export(model, pointer, metrics, summary)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prefer(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    sft_model: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """The preference step after SFT: ``align.method`` none, dpo, online_dpo or expert_iteration.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        sft_model: The chat model from ``align`` (SFT).
        model: Output pointer to the preference-tuned chat model.
        metrics: The method's metrics (DPO reward accuracy and margins, held-out preference accuracy,
            exact match per expert-iteration round, reward-model accuracy ...).
    """
    from components.align import inputs as data
    from components.align.prefer import prefer as run_prefer
    from components.common.config import load_config
    from components.common.stage import export, run_stage

    cfg = load_config(profile, overrides)
    store = data.source_store(cfg, cfg.align.preferences)
    read = data.preference_inputs(cfg, store)

    def body(ctx):
        data.log_inputs(read, store)
        return run_prefer(
            ctx.cfg, model_dir=ctx.inputs["sft_model"] / "model", out_dir=ctx.out_dir, mlflow_run_id=ctx.mlflow_run_id
        )

    pointer, summary = run_stage(
        "prefer",
        "models",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={"sft_model": sft_model.path},
        sections=("align",),
        extra={"data": data.address(read)},
        fn=body,
    )
    export(model, pointer, metrics, summary)
