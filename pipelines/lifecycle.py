"""The ``lifecycle`` pipeline: raw text to a registered, quantized, evaluated chat model.

::

    start_lineage ─▶ curate(pretrain corpus) ─▶ pretrain ─▶ continual ─▶ align ─▶ quantize ─▶ evaluate ─▶ register ─▶ report
                     curate(continual corpus, same tokenizer) ──┘                                   (both corpora)

Only pointers travel between steps (see components/common/artifacts.py); every step reads the same
``profile`` and ``overrides``, so the graph has two parameters and the config tree stays the single
source of truth. The same function runs under ``kfp.local`` (``lmforge run lifecycle``) and compiles
to the IR YAML in ``pipelines/compiled/`` for the Kubeflow UI.
"""

from kfp import dsl

from components.align.component import align
from components.continual.component import continual
from components.curate.component import curate
from components.evaluate.component import evaluate
from components.lineage.component import start_lineage
from components.pretrain.component import pretrain
from components.quantize.component import quantize
from components.register.component import register
from components.report.component import report


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
    )
    report(
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
