"""The register stage: a new MLflow Model Registry version, and a champion that moves only on a win.

Every evaluated model becomes a version of ``register.model_name``, linked to the stage's MLflow
run and tagged with its lineage (input digests, KFP run id, git SHA, profile) and with every
evaluation metric (``lmforge.metric.<name>``), so a version describes itself without its run.
The ``champion`` alias is what serving loads; it moves to the new version only if the new value of
``register.metric`` is strictly better than the value recorded on the current champion (direction:
``register.greater_is_better``). The first version always becomes champion; a version that does
not win is aliased ``challenger``, so the latest contender is always one alias away.

The decision reads the champion's value from its own tag rather than re-evaluating it: both
numbers were produced by the same evaluate stage, so they are comparable as long as the metric and
its data did not change, and a tie keeps the incumbent (no churn on equal models).

Two runs may register the same model at once, and MLflow has no compare-and-set on aliases. So the
verdict (:func:`judge`, against the champion of that moment) is committed (:func:`commit`) under a
per-model lease in the object store (``components/common/lease.py``): the version is created and the
champion re-read while the lease is held, and ``champion`` moves only if it still points at the
version the verdict was judged against. Otherwise the verdict is stale: the new version becomes
``challenger`` and its tags say so (``lmforge.register.outcome=stale``), so the next retrain or a
person can judge it against the new champion.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from components.common import lineage
from components.common.artifacts import open_run_store, store_root
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError
from components.common.lease import held
from components.common.log import get_logger
from components.common.storage import join

log = get_logger("lmforge.register")

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = "lmforge.metric."
DECISION_TAG = "lmforge.register.decision"
#: The champion version the verdict was judged against ("none" when there was no champion).
JUDGED_AGAINST_TAG = "lmforge.register.judged_against"
#: What became of the version: champion, challenger, or stale (it won against a champion that had
#: moved on by the time it held the lease, so it waits as challenger).
OUTCOME_TAG = "lmforge.register.outcome"


def tag_key(name: str) -> str:
    """An MLflow tag key (alphanumerics, ``_ - . / :`` and space) for an arbitrary metric name."""
    return re.sub(r"[^0-9A-Za-z_\-. /:]", "_", name)


def beats(new: float, old: float, greater_is_better: bool) -> bool:
    """Whether ``new`` is strictly better than ``old``; a NaN never wins, anything beats a NaN."""
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if greater_is_better else new < old


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="Models trained and evaluated by the lmforge lifecycle pipeline."
        )
        log.info("created registered model %s", name)
    except MlflowException as e:
        # Creating and tolerating "already exists" is race-free where get-then-create is not.
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def current_champion(client, name: str):
    """The version holding the ``champion`` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def decide(value: float, champion, metric: str, greater_is_better: bool) -> tuple[bool, str]:
    """(promote?, why) for a new version whose ``metric`` is ``value`` against ``champion`` (or None)."""
    direction = "higher" if greater_is_better else "lower"
    if champion is None:
        return True, f"no champion yet: the new version becomes champion ({metric}={value:.6g})"
    recorded = champion.tags.get(tag_key(METRIC_TAG_PREFIX + metric))
    if recorded is None:
        return (
            True,
            f"champion v{champion.version} has no recorded {metric}, so it cannot be compared: new version promoted",
        )
    old = float(recorded)
    if beats(value, old, greater_is_better):
        return True, f"{metric}={value:.6g} beats champion v{champion.version}'s {old:.6g} ({direction} is better)"
    return False, f"{metric}={value:.6g} does not beat champion v{champion.version}'s {old:.6g} ({direction} is better)"


@dataclass(frozen=True)
class Verdict:
    """The gate's judgement of a new version against the champion of the moment."""

    promote: bool
    reason: str
    judged_against: str | None  # the champion's version number, None when there was none
    value: float


def judge(cfg: LifecycleConfig, metrics: dict[str, float]) -> Verdict:
    """Judge ``metrics`` against the current champion of ``register.model_name`` (no registry writes)."""
    from mlflow import MlflowClient

    rc = cfg.register
    if rc.metric not in metrics:
        raise ConfigError(
            f"register.metric: {rc.metric!r} is not among the evaluation metrics; "
            f"set register.metric to one of: {', '.join(sorted(metrics)) or '(none: did evaluate run?)'}"
        )
    value = float(metrics[rc.metric])
    lineage.setup(cfg)
    client = MlflowClient()
    ensure_registered_model(client, rc.model_name)
    champion = current_champion(client, rc.model_name)
    promote, reason = decide(value, champion, rc.metric, rc.greater_is_better)
    return Verdict(promote, reason, None if champion is None else str(champion.version), value)


def lease_uri(cfg: LifecycleConfig) -> str:
    """Where the per-model register lease lives in the run's object store."""
    return join(store_root(cfg), "leases", "register", tag_key(cfg.register.model_name).replace("/", "_") + ".json")


def commit(
    cfg: LifecycleConfig,
    verdict: Verdict,
    *,
    model_uri: str,
    metrics: dict[str, float],
    lineage_tags: dict[str, str],
    mlflow_run_id: str,
) -> dict[str, Any]:
    """Create the version and move an alias, under the model's lease; see the module docstring."""
    from mlflow import MlflowClient

    rc = cfg.register
    lineage.setup(cfg)
    client = MlflowClient()
    tags = {tag_key(k): str(v) for k, v in lineage_tags.items()}
    tags.update({tag_key(METRIC_TAG_PREFIX + k): repr(float(v)) for k, v in metrics.items()})
    tags[JUDGED_AGAINST_TAG] = verdict.judged_against or "none"
    store = open_run_store(cfg)
    wait_key = "register.lease_wait_seconds"
    with held(
        store, lease_uri(cfg), ttl_seconds=rc.lease_seconds, wait_seconds=rc.lease_wait_seconds, wait_key=wait_key
    ):
        champion = current_champion(client, rc.model_name)
        now = None if champion is None else str(champion.version)
        reason = verdict.reason
        if verdict.promote and now != verdict.judged_against:
            outcome = "stale"
            reason = (
                f"{reason}; but champion moved to v{now} before this version could take it (judged against "
                f"{'v' + verdict.judged_against if verdict.judged_against else 'no champion'}): kept as challenger"
            )
        else:
            outcome = CHAMPION if verdict.promote else CHALLENGER
        tags[DECISION_TAG] = reason
        tags[OUTCOME_TAG] = outcome
        version = client.create_model_version(
            rc.model_name, source=model_uri, run_id=mlflow_run_id or None, tags=tags, description=reason
        ).version
        alias = CHAMPION if outcome == CHAMPION else CHALLENGER
        client.set_registered_model_alias(rc.model_name, alias, version)
    promoted = alias == CHAMPION
    champion_version = int(version) if promoted else int(now or 0)  # 0: the champion vanished meanwhile
    log.info("registered %s v%s as %s: %s", rc.model_name, version, alias, reason)
    return {
        "metrics": {"version": int(version), "champion_version": champion_version, "promoted": int(promoted)},
        "model_name": rc.model_name,
        "registry_uri": f"models:/{rc.model_name}/{version}",
        "source": model_uri,
        "alias": alias,
        "reason": reason,
        "outcome": outcome,
    }


def register(
    cfg: LifecycleConfig, *, model_uri: str, metrics: dict[str, float], lineage_tags: dict[str, str], mlflow_run_id: str
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``register.model_name`` and move the aliases.

    Args:
        cfg: the run's config (``register``, ``lineage`` and ``storage`` are used).
        model_uri: where the model lives (an object-store URI); the version's source.
        metrics: the evaluation metrics; must contain ``register.metric``.
        lineage_tags: tags that tie the version to its inputs (dataset digests, KFP run id, git SHA, profile).
        mlflow_run_id: the MLflow run the version is linked to ('' for none).

    Returns:
        ``{"metrics": {"version", "champion_version", "promoted"}, "model_name", "registry_uri", "source",
        "alias", "reason", "outcome"}``.
    """
    verdict = judge(cfg, metrics)
    return commit(
        cfg, verdict, model_uri=model_uri, metrics=metrics, lineage_tags=lineage_tags, mlflow_run_id=mlflow_run_id
    )
