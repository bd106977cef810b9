"""Where this process runs, a cluster step pod or this machine, and whether the config can run there.

The same step code runs under ``kfp.local`` (every step a subprocess on one machine, which shares
one filesystem and one SQLite MLflow) and in Kubernetes pods of a Kubeflow Pipelines run (which
share nothing but the object store and the MLflow server). A config that works for the first
silently breaks the second: a ``file://`` store or a SQLite tracking database lives inside one
pod, so step 2 cannot read what step 1 wrote, and the run fails hours later with a missing input.

:func:`on_cluster` decides from an explicit signal, never from the profile's name:

1. ``LMFORGE_ON_CLUSTER`` (``1``/``true``/``yes`` or ``0``/``false``/``no``) when set: the override
   for other orchestrators (Argo, Airflow, a plain Job) and for tests;
2. else ``KFP_POD_NAME``: the KFP backend's Argo compiler sets ``KFP_POD_NAME`` and ``KFP_POD_UID``
   from the pod's own metadata (downward API) in every step container it creates
   (kubeflow/pipelines ``backend/src/v2/compiler/argocompiler``); ``kfp.local`` sets neither.

:func:`require_cluster_ready` is the check a run makes as its first step there
(:func:`components.common.lineage.start_pipeline_run`), and ``lmforge compile``/``submit`` before
anything reaches a cluster; :func:`cluster_problems` lists what it would refuse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError

OVERRIDE_ENV = "LMFORGE_ON_CLUSTER"
KFP_POD_ENV = "KFP_POD_NAME"
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def on_cluster(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a step of a run on a cluster (see the module docstring for the rule)."""
    env = os.environ if environ is None else environ
    override = env.get(OVERRIDE_ENV, "").strip().lower()
    if override in _TRUE:
        return True
    if override in _FALSE:
        return False
    if override:
        raise ConfigError(
            f"environment variable {OVERRIDE_ENV}={env[OVERRIDE_ENV]!r}: set it to 1 (a cluster step) or 0 "
            "(this machine), or unset it to let KFP's pod variables decide"
        )
    return bool(env.get(KFP_POD_ENV))


def cluster_problems(cfg: LifecycleConfig) -> list[str]:
    """What in ``cfg`` cannot work when steps share no filesystem; each names the key and the fix."""
    fix = "or add the cluster overlay to the profile (e.g. --profile small+cluster)"
    problems = []
    store = cfg.storage.uri
    if not store or store.startswith("file://"):
        where = repr(store) if store else "'' (a directory under run.home)"
        problems.append(
            f"storage.uri is {where}, local to one pod, so no other step can read its outputs: set it to the "
            f"platform's bucket, e.g. storage.uri=s3://lmforge/ with storage.s3_endpoint, {fix}"
        )
    tracking = cfg.lineage.tracking_uri
    if not tracking or tracking.startswith("sqlite:"):
        where = repr(tracking) if tracking else "'' (SQLite under run.home)"
        problems.append(
            f"lineage.tracking_uri is {where}, a database inside one pod: set it to the MLflow server, e.g. "
            f"lineage.tracking_uri=http://mlflow.lmforge.svc.cluster.local:5000, {fix}"
        )
    return problems


def require_cluster_ready(cfg: LifecycleConfig, context: str = "on a cluster") -> None:
    """Raise :class:`ConfigError` listing every :func:`cluster_problems` of ``cfg``."""
    problems = cluster_problems(cfg)
    if problems:
        raise ConfigError(f"profile {cfg.run.profile!r} cannot run {context}: " + "; ".join(problems))
