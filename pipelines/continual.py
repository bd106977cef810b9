"""The ``continual`` pipeline: retrain the champion on newly landed data.

::

    start_lineage ─▶ resolve_champion ─▶ curate(new corpus, champion's tokenizer) ─▶ continual ─▶ align
                  ─▶ quantize ─▶ evaluate ─▶ register ─▶ report

It continues from the champion's *unquantized* base model with LR re-warming and replay of the
corpus that model learned (both found through the registry's lineage tags, see
components/champion/resolve.py), then re-aligns, re-quantizes and re-evaluates; ``register`` moves
``champion`` only if the new model wins. The retrain CronJob submits it with ``--if-new-data``.
"""

from kfp import dsl

from components.align.component import align
from components.champion.component import resolve_champion
from components.continual.component import continual
from components.curate.component import curate
from components.evaluate.component import evaluate
from components.lineage.component import start_lineage
from components.quantize.component import quantize
from components.register.component import register
from components.report.component import report
from pipelines.lifecycle import on_cluster


@dsl.pipeline(
    name="lmforge-continual",
    description="Continue pretraining the champion on new data, re-align, quantize, evaluate and register it.",
)
def continual_pipeline(profile: str = "tiny", overrides: list = []):  # noqa: B006 (KFP needs a literal default)
    """Args:
    profile: Profile name (tiny, small, 1b) or a path to a profile YAML inside the image.
    overrides: ``key=value`` config overrides; ``continual.source`` names the new data.
    """
    common = {"profile": profile, "overrides": overrides}
    start = start_lineage(**common, pipeline="continual", kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    start.set_display_name("start lineage")
    run = {**common, "lineage_run_id": start.output}

    champ = resolve_champion(**common).set_display_name("resolve champion")
    champ.after(start)
    base_model, old_data = champ.outputs["base_model"], champ.outputs["old_dataset"]
    new_data = curate(**run, corpus="continual", tokenizer_from=old_data).set_display_name("curate new data")
    adapted = continual(**run, base_model=base_model, dataset=new_data.outputs["dataset"], old_dataset=old_data)
    chat = align(**run, base_model=adapted.outputs["model"])
    small = quantize(**run, base_model=chat.outputs["model"], dataset=old_data)
    scores = evaluate(**run, model=small.outputs["model"], dataset=old_data, new_dataset=new_data.outputs["dataset"])
    registered = register(
        **run,
        model=small.outputs["model"],
        evaluation=scores.outputs["results"],
        dataset=old_data,
        new_dataset=new_data.outputs["dataset"],
        base_model=adapted.outputs["model"],
    )
    final = report(
        **run,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset=old_data,
        new_dataset=new_data.outputs["dataset"],
        adapted=adapted.outputs["model"],
        aligned=chat.outputs["model"],
        quantized=small.outputs["model"],
        evaluation=scores.outputs["results"],
        registration=registered.outputs["registration"],
    )
    for task, component in (
        (start, "start_lineage"),
        (champ, "register"),
        (new_data, "curate"),
        (adapted, "continual"),
        (chat, "align"),
        (small, "quantize"),
        (scores, "evaluate"),
        (registered, "register"),
        (final, "report"),
    ):
        on_cluster(task, component)
