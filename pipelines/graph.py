"""Pieces of graph both pipelines share: opening the run, and adapt → align → … → report.

``lifecycle`` and ``continual`` differ only in where the base model and the old corpus come from
(pretraining vs. the registry champion); from continual pretraining on they are the same chain, so
that chain is built here once.
"""

from kfp import dsl, kubernetes

from components.align.component import align
from components.continual.component import continual
from components.evaluate.component import evaluate
from components.lineage.component import start_lineage
from components.quantize.component import quantize
from components.register.component import register
from components.report.component import report

# Requests per step on the cluster (ignored by kfp.local). Training steps are thin drivers of a
# KubeRay job, so they need little; align/quantize/evaluate hold a whole model in memory.
RESOURCES = {
    "start_lineage": ("500m", "1Gi"),
    "resolve_champion": ("500m", "1Gi"),
    "curate": ("2", "8Gi"),
    "pretrain": ("1", "4Gi"),
    "continual": ("1", "4Gi"),
    "align": ("4", "16Gi"),
    "quantize": ("4", "16Gi"),
    "evaluate": ("4", "16Gi"),
    "register": ("500m", "2Gi"),
    "report": ("1", "2Gi"),
}
S3_SECRET = "lmforge-s3"  # created by the platform team (see charts/lmforge NOTES.txt); never by the chart


def on_cluster(task: dsl.PipelineTask, component: str) -> dsl.PipelineTask:
    """Resources, non-root security context and S3 credentials from the Secret, for one step."""
    cpu, memory = RESOURCES[component]
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.set_security_context(task, run_as_user=1000, run_as_group=1000, run_as_non_root=True)
    kubernetes.use_secret_as_env(
        task,
        secret_name=S3_SECRET,
        secret_key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        optional=True,  # a run with a file:// store needs no credentials
    )
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "lmforge")
    return task


def open_run(profile, overrides, pipeline: str) -> dict:
    """Start the MLflow parent run; returns the arguments every later step takes."""
    start = start_lineage(
        profile=profile, overrides=overrides, pipeline=pipeline, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
    )
    on_cluster(start.set_display_name("start lineage"), "start_lineage")
    return {"profile": profile, "overrides": overrides, "lineage_run_id": start.output}


def adapt_and_release(run: dict, *, base_model, old_data, new_data, pretrained=None) -> None:
    """continual → align → quantize → evaluate → register → report, each configured for the cluster."""
    adapted = continual(**run, base_model=base_model, dataset=new_data, old_dataset=old_data)
    chat = align(**run, base_model=adapted.outputs["model"])
    small = quantize(**run, base_model=chat.outputs["model"], dataset=old_data)
    scores = evaluate(**run, model=small.outputs["model"], dataset=old_data, new_dataset=new_data)
    registered = register(
        **run,
        model=small.outputs["model"],
        evaluation=scores.outputs["results"],
        dataset=old_data,
        new_dataset=new_data,
        base_model=adapted.outputs["model"],
    )
    optional = {"pretrained": pretrained} if pretrained is not None else {}  # KFP rejects an explicit None
    final = report(
        **run,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset=old_data,
        new_dataset=new_data,
        adapted=adapted.outputs["model"],
        aligned=chat.outputs["model"],
        quantized=small.outputs["model"],
        evaluation=scores.outputs["results"],
        registration=registered.outputs["registration"],
        **optional,
    )
    for task, component in (
        (adapted, "continual"),
        (chat, "align"),
        (small, "quantize"),
        (scores, "evaluate"),
        (registered, "register"),
        (final, "report"),
    ):
        on_cluster(task, component)
