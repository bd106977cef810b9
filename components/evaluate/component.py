"""KFP component ``evaluate``: held-out perplexity, lm-eval tasks and the promotion gate's verdict."""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    profile: str,
    overrides: list,
    lineage_run_id: str,
    model: dsl.Input[dsl.Model],
    adapted: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    new_dataset: dsl.Input[dsl.Dataset],
    results: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    table: dsl.Output[dsl.Markdown],
    verdict: dsl.Output[dsl.Markdown],
    stability: dsl.Output[dsl.Markdown],
    pretrained: dsl.Input[dsl.Model] = None,
):
    """Evaluate a model (perplexity on both corpora's held-out splits plus ``evaluate.tasks``) and gate it.

    Args:
        profile: Profile name or path to a profile YAML.
        overrides: ``key=value`` config overrides.
        lineage_run_id: MLflow parent run id from ``start_lineage``.
        model: The model to evaluate (from ``quantize``); its quantization numbers become ``quantize_*``.
        adapted: The continually pretrained model; its forgetting/adaptation numbers become ``continual_*``.
        dataset: The pretraining corpus (its held-out perplexity is the headline metric).
        new_dataset: The continual corpus.
        results: Output pointer to ``results.json``, ``eval_table.md`` and the verdict in the store.
        metrics: Every evaluation number, for the KFP UI.
        table: The evaluation table, rendered by the KFP UI.
        verdict: The promotion gate's verdict: each rule, new and champion values, pass/fail.
        stability: Kendall's tau across the pretraining checkpoints kept by ``pretrain.eval_checkpoints``
            (each checkpoint's numbers and the rank correlations; the plot is ``stability.png`` in ``results``).
        pretrained: The pretraining output, whose evaluation checkpoints are ranked (absent in the continual
            pipeline, which starts from a champion).
    """
    from components.common.artifacts import open_run_store, read_pointer
    from components.common.config import load_config
    from components.common.lineage import digest_files, log_raw_files
    from components.common.stage import export, metrics_markdown, run_stage
    from components.evaluate.gate import Verdict, verdict_markdown
    from components.evaluate.run import eval_checkpoints_in, find_champion, scored_tasks, upstream_metrics
    from components.evaluate.run import evaluate as run_evaluate
    from components.evaluate.stability import markdown as stability_markdown
    from components.evaluate.tasks.datafiles import task_data_files

    def body(ctx):
        # The task data ships with lmforge; its digests still tie the scores to the exact questions.
        files = [f for task in scored_tasks(ctx.cfg) for f in task_data_files(task)]
        log_raw_files(digest_files(files), role="eval")
        return run_evaluate(
            ctx.cfg,
            model_dir=ctx.inputs["model"] / "model",
            datasets={
                "pretrain_corpus": ctx.inputs["pretrain_corpus"],
                "continual_corpus": ctx.inputs["continual_corpus"],
            },
            out_dir=ctx.out_dir,
            upstream=upstream,
            champion=champion,
            checkpoints=eval_checkpoints_in(ctx.inputs.get("pretrained")),
        )

    cfg = load_config(profile, overrides)
    store = open_run_store(cfg)
    champion = find_champion(cfg, store)
    # Only the markers of these are read (no model download): their numbers feed the gate's guards.
    upstream = upstream_metrics(store, {"quantize": read_pointer(model.path), "continual": read_pointer(adapted.path)})
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
            # fetched (the whole pretraining output) only when it holds checkpoints to rank
            **({"pretrained": pretrained.path} if pretrained is not None and cfg.pretrain.eval_checkpoints else {}),
        },
        sections=("evaluate", "model"),
        # The verdict depends on who is champion: a new champion must not reuse an old verdict.
        extra={"champion": f"{champion.version}:{champion.eval_digest}" if champion else "", "upstream": upstream},
        fn=body,
    )
    export(results, pointer, metrics, summary)
    with open(table.path, "w") as f:
        f.write(metrics_markdown(summary, title="Evaluation"))
    with open(verdict.path, "w") as f:
        f.write(verdict_markdown(Verdict.from_dict(summary["verdict"])))
    with open(stability.path, "w") as f:
        f.write(
            stability_markdown(summary["stability"])
            if summary.get("stability")
            else "## Stability across checkpoints\n\nNo pretraining checkpoints kept (pretrain.eval_checkpoints=0, "
            "or a continual run).\n"
        )
