"""Lineage in MLflow: one parent run per pipeline run, one nested run per stage.

Each KFP step is its own process (its own pod on the cluster), so the parent run is created once by
the pipeline's first step and its id is passed to every later step, which opens a nested run under
it. Inputs are logged with ``mlflow.log_input`` (name, digest, source URI), so from a registered
model one can walk back run by run to the raw files and the filters that fed it.

Locally MLflow uses a SQLite backend store under ``run.home`` (a real database, not file-store
mocks); on the cluster ``lineage.tracking_uri`` points at the MLflow server from the Helm chart,
and the parent run is not started with a SQLite or ``file://`` setting there (see
:mod:`components.common.runtime`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from components.common.config import LifecycleConfig, flatten, resolve_home
from components.common.runtime import on_cluster, require_cluster_ready

TAG_PROFILE = "lmforge.profile"
TAG_GIT_SHA = "lmforge.git_sha"
TAG_KFP_RUN = "lmforge.kfp_run_id"
TAG_STAGE = "lmforge.stage"
TAG_PIPELINE = "lmforge.pipeline"
TAG_IMAGE = "lmforge.image"
TAG_LOGS = "lmforge.logs"
#: Where `lmforge run` writes the run's step logs (it sets this for the pipeline process it starts).
LOG_DIR_ENV = "LMFORGE_LOG_DIR"


def tracking_uri(cfg: LifecycleConfig) -> str:
    if cfg.lineage.tracking_uri:
        return cfg.lineage.tracking_uri
    home = resolve_home(cfg)
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def _artifact_location(cfg: LifecycleConfig) -> str | None:
    # A local tracking DB keeps its artifacts beside it; a server decides for itself.
    return None if cfg.lineage.tracking_uri else (resolve_home(cfg) / "mlartifacts").as_uri()


def setup(cfg: LifecycleConfig) -> str:
    """Point MLflow at this run's tracking store and experiment; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    exp = mlflow.get_experiment_by_name(cfg.lineage.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.lineage.experiment, artifact_location=_artifact_location(cfg))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_sha() -> str:
    """The commit of the code that runs (from the image's env on the cluster, from git locally)."""
    if sha := os.environ.get("LMFORGE_GIT_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_pipeline_run(cfg: LifecycleConfig, pipeline: str, kfp_run_id: str) -> str:
    """Create the parent run of a pipeline run, log the resolved config; returns its run id.

    On a cluster (:func:`components.common.runtime.on_cluster`) this, the pipeline's first step,
    refuses a config whose store or tracking database would live inside its own pod, before it
    creates anything: otherwise the run would fail steps later, at the first input it cannot read.
    """
    if on_cluster():
        require_cluster_ready(cfg)
    import mlflow

    setup(cfg)
    tags = {
        TAG_PIPELINE: pipeline,
        TAG_PROFILE: cfg.run.profile,
        TAG_GIT_SHA: git_sha(),
        TAG_KFP_RUN: kfp_run_id,
        TAG_IMAGE: os.environ.get("LMFORGE_IMAGE", "local"),
    }
    if logs := os.environ.get(LOG_DIR_ENV):  # set by `lmforge run`, which files each step's log there
        tags[TAG_LOGS] = logs
    with mlflow.start_run(run_name=f"{pipeline}-{kfp_run_id[:12]}", tags=tags) as run:
        params = {k: str(v)[:500] for k, v in flatten(cfg).items()}
        mlflow.log_params(params)
        # The run stays open (RUNNING) until the pipeline's last step closes it.
        run_id = run.info.run_id
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")
    return run_id


def ui_links(
    cfg: LifecycleConfig, *, experiment_id: str = "", run_id: str = "", kfp_run_id: str = ""
) -> dict[str, str]:
    """Pages of a run in the MLflow UI and the Kubeflow Pipelines UI, where those UIs are known.

    The MLflow UI is ``lineage.ui_url``, else the tracking server itself when it is http(s) (a local
    SQLite store has no UI until ``lmforge mlflow-ui`` serves one); Kubeflow is ``lineage.kfp_ui_url``.
    """
    links = {}
    mlflow_ui = mlflow_ui_url(cfg)
    if mlflow_ui and experiment_id and run_id:
        links["MLflow UI"] = f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}"
    if cfg.lineage.kfp_ui_url and kfp_run_id:
        links["Kubeflow run"] = f"{cfg.lineage.kfp_ui_url.rstrip('/')}/#/runs/details/{kfp_run_id}"
    return links


def mlflow_ui_url(cfg: LifecycleConfig) -> str:
    """Base URL of the MLflow UI for links ('' when there is none to link to)."""
    url = cfg.lineage.ui_url or (cfg.lineage.tracking_uri if cfg.lineage.tracking_uri.startswith("http") else "")
    return url.rstrip("/")


def finish_pipeline_run(cfg: LifecycleConfig, parent_run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    setup(cfg)
    mlflow.MlflowClient().set_terminated(parent_run_id, status=status)


@contextlib.contextmanager
def stage_run(cfg: LifecycleConfig, stage: str, parent_run_id: str = "") -> Iterator[str]:
    """Open the nested MLflow run of one stage; yields its run id.

    Without a parent (a stage run on its own, e.g. from a test) the run is top-level.
    """
    import mlflow

    setup(cfg)
    tags = {TAG_STAGE: stage, TAG_PROFILE: cfg.run.profile, TAG_GIT_SHA: git_sha()}
    if parent_run_id:
        parent = mlflow.MlflowClient().get_run(parent_run_id)
        tags[TAG_KFP_RUN] = parent.data.tags.get(TAG_KFP_RUN, "")
    with mlflow.start_run(
        run_name=stage, parent_run_id=parent_run_id or None, nested=bool(parent_run_id), tags=tags
    ) as run:
        section = getattr(cfg, stage, None)
        if section is not None:
            mlflow.log_params({f"{stage}.{k}": str(v)[:500] for k, v in flatten(section).items()})
        yield run.info.run_id


#: MLflow input context of an artifact another step produced (the walker follows it to that step's run).
INPUT_CONTEXT = "input"
#: MLflow input context of a file that enters the platform from outside (raw text, SFT pairs, task
#: data): the walker's leaves, which no run produced.
RAW_CONTEXT = "raw"
#: Input tag holding a digest in full: MLflow's dataset digest column holds only 36 characters.
TAG_FULL_DIGEST = "lmforge.digest"


def log_input(name: str, digest: str, source_uri: str, context: str = INPUT_CONTEXT) -> None:
    """Record a dataset (or model) this stage consumed, by name, digest and source URI."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # MLflow registers a local source for both '' and 'file' schemes and warns that a file://
        # URI matches "LocalArtifactDatasetSource, LocalArtifactDatasetSource": the same class.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(source_uri)
    dataset = MetaDataset(source=source, name=name, digest=digest[:36])
    mlflow.log_input(dataset, context=context, tags={TAG_FULL_DIGEST: digest})


def log_raw_files(files: list[tuple[str, str]], role: str) -> None:
    """Record the raw files a stage read, ``(uri or local path, sha256)`` each, as MLflow inputs.

    Every stage that reads data from outside the platform calls this (curate for its corpus, align
    for its SFT pairs, ...): each file becomes a dataset input named ``<role>/<file name>`` with its
    digest and source URI, in context :data:`RAW_CONTEXT`, so :func:`components.common.lineage_walk.walk`
    reaches it from any model built on it. ``role`` says what the file was for (``corpus``, ``sft``).
    """
    for uri, digest in files:
        if "://" not in uri:
            uri = Path(uri).resolve().as_uri()
        log_input(
            name=f"{role}/{uri.rstrip('/').rsplit('/', 1)[-1]}", digest=digest, source_uri=uri, context=RAW_CONTEXT
        )


def digest_files(files: list[str], store=None) -> list[tuple[str, str]]:
    """``(file, digest)`` for :func:`log_raw_files`: sha256 of a local file, the store's digest (ETag) of an
    ``s3://`` object (``store`` reads those, without a download)."""
    from components.common.storage import file_digest

    return [(f, store.digest(f) if f.startswith("s3://") else file_digest(Path(f))) for f in files]


def log_curve(run_id: str, key: str, values: list[tuple[int, float]]) -> None:
    """Log a step-wise metric curve in one batch (from processes without an active run, e.g. Ray workers)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, int(s)) for s, v in values]
    client = mlflow.MlflowClient()
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])


def log_text(text: str, artifact_file: str) -> None:
    """Attach ``text`` as an artifact of the active stage run (a no-op outside one, e.g. a library test)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_text(text, artifact_file)
