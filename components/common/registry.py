"""What the model registry says about the current champion, for the stages that need it.

``register`` writes a version's evaluation numbers as tags (``lmforge.metric.<name>``) and the
digest of the evaluation that produced them (``lmforge.eval_digest``); ``evaluate`` reads them back
here to decide whether the champion's stored numbers are comparable with a new evaluation or the
champion must be re-evaluated. Both stages sit above ``common``, so the lookup lives here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from components.common.config import LifecycleConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = "lmforge.metric."
EVAL_DIGEST_TAG = "lmforge.eval_digest"


def tag_key(name: str) -> str:
    """An MLflow tag key (alphanumerics, ``_ - . / :`` and space) for an arbitrary metric name."""
    return re.sub(r"[^0-9A-Za-z_\-. /:]", "_", name)


def find_alias(client, name: str, alias: str = CHAMPION):
    """The version of registered model ``name`` holding ``alias``, or None (also when the model is unknown)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


@dataclass(frozen=True)
class ChampionRecord:
    """The champion as the registry describes it: version, model source, stored numbers."""

    version: str
    source: str
    metrics: dict[str, float] = field(default_factory=dict)
    eval_digest: str = ""


def champion_record(cfg: LifecycleConfig) -> ChampionRecord | None:
    """The current champion of ``register.model_name``, or None when there is none yet."""
    from mlflow import MlflowClient

    from components.common import lineage

    lineage.setup(cfg)
    version = find_alias(MlflowClient(), cfg.register.model_name)
    if version is None:
        return None
    metrics = {}
    for key, value in version.tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key[len(METRIC_TAG_PREFIX) :]] = float(value)
            except ValueError:
                continue  # a hand-edited tag that is not a number: not a metric the gate can use
    return ChampionRecord(
        version=str(version.version),
        source=version.source,
        metrics=metrics,
        eval_digest=version.tags.get(EVAL_DIGEST_TAG, ""),
    )
