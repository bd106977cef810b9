"""KFP component ``start_lineage``: opens the MLflow parent run of a pipeline run.

Every later step receives its run id and nests its own run under it.
"""

from kfp import dsl

from components.common.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_lineage(profile: str, overrides: list, pipeline: str, kfp_run_id: str) -> str:
    """Create the MLflow parent run and validate the configuration before any work starts.

    On a cluster (``KFP_POD_NAME`` set by KFP, or ``LMFORGE_ON_CLUSTER=1``) it fails at once if the
    store or MLflow would live inside this pod (components/common/runtime.py).

    Args:
        profile: Profile name (tiny, small, 1b) or a path to a profile YAML.
        overrides: ``key=value`` config overrides, e.g. ``["pretrain.steps=50"]``.
        pipeline: Name of the pipeline being run (tagged on the run).
        kfp_run_id: The KFP run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), tagged on the run.

    Returns:
        The MLflow run id of the parent run.
    """
    from components.common.config import load_config
    from components.common.lineage import start_pipeline_run

    return start_pipeline_run(load_config(profile, overrides), pipeline, kfp_run_id)
