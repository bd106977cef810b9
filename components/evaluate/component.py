"""KFP component ``evaluate``: held-out perplexity and lm-eval tasks shipped with lmforge."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    model: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    new_dataset: dsl.Input[dsl.Dataset],
    results: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    table: dsl.Output[dsl.Markdown],
):
    """Evaluate a model: perplexity on both corpora's held-out splits plus ``evaluate.tasks``.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        model: The model to evaluate (from ``quantize``).
        dataset: The pretraining corpus (its held-out perplexity is the headline metric).
        new_dataset: The continual corpus.
        results: Output pointer to ``results.json`` and ``eval_table.md`` in the store.
        metrics: Every evaluation number, for the KFP UI.
        table: The evaluation table, rendered by the KFP UI.
    """
    from components.common.lineage import digest_files, log_raw_files
    from components.common.stage import export, metrics_markdown, run_stage
    from components.evaluate.run import evaluate as run_evaluate
    from components.evaluate.tasks.datafiles import task_data_files

    def body(ctx):
        # The task data ships with lmforge; its digests still tie the scores to the exact questions.
        files = [f for task in ctx.cfg.evaluate.tasks for f in task_data_files(task)]
        log_raw_files(digest_files(files), role="eval")
        return run_evaluate(
            ctx.cfg,
            model_dir=ctx.inputs["model"] / "model",
            datasets={
                "pretrain_corpus": ctx.inputs["pretrain_corpus"],
                "continual_corpus": ctx.inputs["continual_corpus"],
            },
            out_dir=ctx.out_dir,
        )

    pointer, summary = run_stage(
        "evaluate",
        "reports",
        profile=profile,
        overrides=overrides,
        parent_run_id=lineage_run_id,
        input_pointer_paths={
            "model": model.path,
            "pretrain_corpus": dataset.path,
            "continual_corpus": new_dataset.path,
        },
        sections=("evaluate", "model"),
        fn=body,
    )
    export(results, pointer, metrics, summary)
    with open(table.path, "w") as f:
        f.write(metrics_markdown(summary, title="Evaluation"))
