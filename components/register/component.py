"""KFP component ``register``: a registry version with lineage; ``champion`` moves only on a gate pass."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    dataset: dsl.Input[dsl.Dataset],
    new_dataset: dsl.Input[dsl.Dataset],
    base_model: dsl.Input[dsl.Model],
    registration: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """Register the evaluated model in MLflow; it becomes champion if the promotion gate passed it.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        model: The model to register (from ``quantize``).
        evaluation: The evaluation of that model (from ``evaluate``); supplies the metrics and the gate's verdict.
        dataset: The pretraining corpus, recorded as lineage.
        new_dataset: The continual corpus, recorded as lineage.
        base_model: The unquantized model after continual pretraining; a later retrain continues from it.
        registration: Output pointer to the registration record.
        metrics: Version number, champion version, whether it was promoted.
    """
    from components.common.artifacts import read_marker
    from components.common.lineage import TAG_KFP_RUN, git_sha
    from components.common.lineage_walk import TAG_SOURCE_ARTIFACT, TAG_SOURCE_RUN, producer_run_id
    from components.common.stage import export, run_stage
    from components.register.run import register as run_register

    def body(ctx):
        p = ctx.input_pointers
        tags = {f"lmforge.input.{name}": f"{ptr['uri']}@{ptr['digest']}" for name, ptr in p.items()}
        tags.update(
            {"lmforge.profile": ctx.cfg.run.profile, "lmforge.git_sha": git_sha(), "lmforge.parent_run": lineage_run_id}
        )
        import mlflow

        client = mlflow.MlflowClient()
        if lineage_run_id:
            tags[TAG_KFP_RUN] = client.get_run(lineage_run_id).data.tags.get(TAG_KFP_RUN, "")
        # The version's source is the HF directory inside the quantize output; these name that output
        # and the step run that wrote it, where the lineage walk starts (components/common/lineage_walk.py).
        tags[TAG_SOURCE_ARTIFACT] = p["model"]["uri"]
        tags[TAG_SOURCE_RUN] = producer_run_id(client, p["model"]["uri"])
        evaluation = read_marker(ctx.store, p["evaluation"]["uri"])
        return run_register(
            ctx.cfg,
            model_uri=p["model"]["uri"] + "/model",
            metrics=evaluation.get("metrics", {}),
            verdict=evaluation.get("verdict", {}),
            eval_digest=evaluation.get("eval_digest", ""),
            lineage_tags=tags,
            mlflow_run_id=ctx.mlflow_run_id,
        )

    pointer, summary = run_stage(
        "register",
        "registrations",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={
            "model": model.path,
            "evaluation": evaluation.path,
            "pretrain_corpus": dataset.path,
            "continual_corpus": new_dataset.path,
            "base_model": base_model.path,
        },
        sections=("register",),
        fn=body,
        fetch_inputs=False,
    )
    export(registration, pointer, metrics, summary)
