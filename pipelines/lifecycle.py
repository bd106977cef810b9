"""The ``lifecycle`` pipeline: raw text to a registered, quantized, evaluated chat model.

::

    start_lineage ─▶ curate(pretrain corpus) ─▶ pretrain ─▶ continual ─▶ align ─▶ quantize ─▶ evaluate ─▶ register ─▶ report
                     curate(continual corpus, same tokenizer) ──┘                                   (both corpora)

Only pointers travel between steps (see components/common/artifacts.py); every step reads the same
``profile`` and ``overrides``, so the graph has two parameters and the config tree stays the single
source of truth. :func:`build_lifecycle` places the steps for the cluster from a config (see
pipelines/graph.py); the same graph runs under ``kfp.local`` (``lmforge run lifecycle``, which passes
its profile) and compiles to the IR YAML in ``pipelines/compiled/`` (``lmforge compile``, which
makes its ``--profile`` the ``profile`` parameter's default).
"""

from kfp import dsl

from components.common.config import LifecycleConfig
from components.curate.component import curate
from components.pretrain.component import pretrain
from pipelines.compile import COMPILE_PROFILE
from pipelines.graph import Placement, adapt_and_release, open_run


def build_lifecycle(cfg: LifecycleConfig):
    """The lifecycle pipeline with every step placed as ``cfg`` says (a KFP ``GraphComponent``)."""
    place = Placement(cfg)

    @dsl.pipeline(
        name="lmforge-lifecycle",
        description="Curate, pretrain, continually pretrain, align, quantize, evaluate and register a language model.",
    )
    def lifecycle(profile: str = COMPILE_PROFILE, overrides: list = []):  # noqa: B006 (KFP needs a literal default)
        """Args:
        profile: Profile name (tiny, small, 1b, cluster), a path to a profile YAML inside the image, or
            several joined by '+' (small+cluster); the compiled default is the profile it was compiled with.
        overrides: ``key=value`` config overrides, e.g. ``["pretrain.steps=500"]``; keys are listed by ``lmforge config``.
        """
        run = open_run(profile, overrides, "lifecycle", place)
        data = curate(**run, corpus="pretrain").set_display_name("curate pretrain corpus")
        new_data = curate(**run, corpus="continual", tokenizer_from=data.outputs["dataset"])
        new_data.set_display_name("curate continual corpus")
        base = pretrain(**run, dataset=data.outputs["dataset"])
        for task, step in ((data, "curate"), (new_data, "curate"), (base, "pretrain")):
            place(task, step)
        adapt_and_release(
            run,
            place,
            base_model=base.outputs["model"],
            old_data=data.outputs["dataset"],
            new_data=new_data.outputs["dataset"],
            pretrained=base.outputs["model"],
        )

    return lifecycle
