"""The ``lifecycle`` pipeline: raw text to a registered, quantized, evaluated chat model.

::

    start_lineage ─▶ curate(pretrain corpus) ─▶ pretrain ─▶ continual ─▶ align ─▶ quantize ─▶ evaluate ─▶ register ─▶ report
                     curate(continual corpus, same tokenizer) ──┘                                   (both corpora)

Only pointers travel between steps (see components/common/artifacts.py); every step reads the same
``profile`` and ``overrides``, so the graph has two parameters and the config tree stays the single
source of truth. The same function runs under ``kfp.local`` (``lmforge run lifecycle``) and compiles
to the IR YAML in ``pipelines/compiled/`` for the Kubeflow UI.
"""

from kfp import dsl, kubernetes

from components.align.component import align
from components.continual.component import continual
from components.curate.component import curate
from components.evaluate.component import evaluate
from components.lineage.component import start_lineage
from components.pretrain.component import pretrain
from components.quantize.component import quantize
from components.register.component import register
from components.report.component import report

# Requests per step on the cluster (ignored by kfp.local). Training steps are thin drivers of a
# KubeRay job, so they need little; quantize/evaluate hold a whole model in memory.
RESOURCES = {
    "start_lineage": ("500m", "1Gi"),
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


@dsl.pipeline(
    name="lmforge-lifecycle",
    description="Curate, pretrain, continually pretrain, align, quantize, evaluate and register a language model.",
)
def lifecycle(profile: str = "tiny", overrides: list = []):  # noqa: B006 (KFP needs a literal default)
    """Args:
    profile: Profile name (tiny, small, 1b) or a path to a profile YAML inside the image.
    overrides: ``key=value`` config overrides, e.g. ``["pretrain.steps=500"]``; keys are listed by ``lmforge config``.
    """
    common = {"profile": profile, "overrides": overrides}
    start = start_lineage(**common, pipeline="lifecycle", kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    start.set_display_name("start lineage")
    on_cluster(start, "start_lineage")
    run = {**common, "lineage_run_id": start.output}

    data = curate(**run, corpus="pretrain").set_display_name("curate pretrain corpus")
    new_data = curate(**run, corpus="continual", tokenizer_from=data.outputs["dataset"])
    new_data.set_display_name("curate continual corpus")

    base = pretrain(**run, dataset=data.outputs["dataset"])
    adapted = continual(
        **run,
        base_model=base.outputs["model"],
        dataset=new_data.outputs["dataset"],
        old_dataset=data.outputs["dataset"],
    )
    chat = align(**run, base_model=adapted.outputs["model"])
    small = quantize(**run, base_model=chat.outputs["model"], dataset=data.outputs["dataset"])
    scores = evaluate(
        **run, model=small.outputs["model"], dataset=data.outputs["dataset"], new_dataset=new_data.outputs["dataset"]
    )
    registered = register(
        **run,
        model=small.outputs["model"],
        evaluation=scores.outputs["results"],
        dataset=data.outputs["dataset"],
        new_dataset=new_data.outputs["dataset"],
        base_model=adapted.outputs["model"],
    )
    final = report(
        **run,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset=data.outputs["dataset"],
        new_dataset=new_data.outputs["dataset"],
        pretrained=base.outputs["model"],
        adapted=adapted.outputs["model"],
        aligned=chat.outputs["model"],
        quantized=small.outputs["model"],
        evaluation=scores.outputs["results"],
        registration=registered.outputs["registration"],
    )
    for task, component in (
        (data, "curate"),
        (new_data, "curate"),
        (base, "pretrain"),
        (adapted, "continual"),
        (chat, "align"),
        (small, "quantize"),
        (scores, "evaluate"),
        (registered, "register"),
        (final, "report"),
    ):
        on_cluster(task, component)
