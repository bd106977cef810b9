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

from components.champion.component import resolve_champion
from components.curate.component import curate
from pipelines.graph import adapt_and_release, on_cluster, open_run


@dsl.pipeline(
    name="lmforge-continual",
    description="Continue pretraining the champion on new data, re-align, quantize, evaluate and register it.",
)
def continual_pipeline(profile: str = "tiny", overrides: list = []):  # noqa: B006 (KFP needs a literal default)
    """Args:
    profile: Profile name (tiny, small, 1b) or a path to a profile YAML inside the image.
    overrides: ``key=value`` config overrides; ``continual.source`` names the new data.
    """
    run = open_run(profile, overrides, "continual")
    champ = resolve_champion(profile=profile, overrides=overrides).set_display_name("resolve champion")
    old_data = champ.outputs["old_dataset"]
    new_data = curate(**run, corpus="continual", tokenizer_from=old_data).set_display_name("curate new data")
    for task, component in ((champ, "resolve_champion"), (new_data, "curate")):
        on_cluster(task, component)
    adapt_and_release(
        run, base_model=champ.outputs["base_model"], old_data=old_data, new_data=new_data.outputs["dataset"]
    )
