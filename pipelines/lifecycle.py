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

from components.curate.component import curate
from components.pretrain.component import pretrain
from pipelines.graph import adapt_and_release, on_cluster, open_run


@dsl.pipeline(
    name="lmforge-lifecycle",
    description="Curate, pretrain, continually pretrain, align, quantize, evaluate and register a language model.",
)
def lifecycle(profile: str = "tiny", overrides: list = []):  # noqa: B006 (KFP needs a literal default)
    """Args:
    profile: Profile name (tiny, small, 1b) or a path to a profile YAML inside the image.
    overrides: ``key=value`` config overrides, e.g. ``["pretrain.steps=500"]``; keys are listed by ``lmforge config``.
    """
    run = open_run(profile, overrides, "lifecycle")
    data = curate(**run, corpus="pretrain").set_display_name("curate pretrain corpus")
    new_data = curate(**run, corpus="continual", tokenizer_from=data.outputs["dataset"])
    new_data.set_display_name("curate continual corpus")
    base = pretrain(**run, dataset=data.outputs["dataset"])
    for task, component in ((data, "curate"), (new_data, "curate"), (base, "pretrain")):
        on_cluster(task, component)
    adapt_and_release(
        run,
        base_model=base.outputs["model"],
        old_data=data.outputs["dataset"],
        new_data=new_data.outputs["dataset"],
        pretrained=base.outputs["model"],
    )
