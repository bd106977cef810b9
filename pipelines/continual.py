"""The ``continual`` pipeline: retrain the champion on newly landed data.

::

    start_lineage ─▶ resolve_champion ─▶ curate(new corpus, champion's tokenizer) ─▶ continual ─▶ align
                  ─▶ quantize ─▶ evaluate ─▶ register ─▶ report

It continues from the champion's *unquantized* base model with LR re-warming and replay of the
corpus that model learned (both found through the registry's lineage tags, see
components/champion/resolve.py), then re-aligns, re-quantizes and re-evaluates; ``register`` moves
``champion`` only if the new model wins. The retrain CronJob submits it with ``--if-new-data``.
``resolve_champion`` reads the registry, so it is never served from KFP's cache: every retrain asks
for the champion of the moment (pipelines/graph.py, ``UNCACHED``).
"""

from kfp import dsl

from components.champion.component import resolve_champion
from components.common.config import LifecycleConfig
from components.curate.component import curate
from pipelines.compile import COMPILE_PROFILE
from pipelines.graph import Placement, adapt_and_release, open_run


def build_continual(cfg: LifecycleConfig):
    """The continual pipeline with every step placed as ``cfg`` says (a KFP ``GraphComponent``)."""
    place = Placement(cfg)

    @dsl.pipeline(
        name="lmforge-continual",
        description="Continue pretraining the champion on new data, re-align, quantize, evaluate and register it.",
    )
    def continual_pipeline(profile: str = COMPILE_PROFILE, overrides: list = []):  # noqa: B006 (KFP needs a literal default)
        """Args:
        profile: Profile name, a path to a profile YAML inside the image, or several joined by '+'
            (small+cluster); the compiled default is the profile it was compiled with.
        overrides: ``key=value`` config overrides; ``continual.source`` names the new data.
        """
        run = open_run(profile, overrides, "continual", place)
        champ = resolve_champion(profile=profile, overrides=overrides).set_display_name("resolve champion")
        old_data = champ.outputs["old_dataset"]
        new_data = curate(**run, corpus="continual", tokenizer_from=old_data).set_display_name("curate new data")
        for task, step in ((champ, "resolve_champion"), (new_data, "curate")):
            place(task, step)
        adapt_and_release(
            run, place, base_model=champ.outputs["base_model"], old_data=old_data, new_data=new_data.outputs["dataset"]
        )

    return continual_pipeline
