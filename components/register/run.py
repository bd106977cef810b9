"""The register stage: a new MLflow Model Registry version, and a champion that moves only on a pass.

Every evaluated model becomes a version of ``register.model_name``, linked to the stage's MLflow
run and tagged with its lineage (input digests, KFP run id, git SHA, profile), with every
evaluation metric (``lmforge.metric.<name>``) and with the digest of the evaluation that produced
them (``lmforge.eval_digest``), so a version describes itself without its run and a later gate knows
whether its numbers are comparable.

Whether the new version deserves the ``champion`` alias is not decided here: the evaluate stage's
promotion gate (``evaluate.gate``, :mod:`components.evaluate.gate`) judged it against the champion
of that moment and wrote a verdict. This stage obeys the verdict, with one check of its own.

Two runs may register the same model at once, and MLflow has no compare-and-set on aliases. So the
verdict is committed under a per-model lease in the object store (``components/common/lease.py``):
the version is created and the champion re-read while the lease is held, and ``champion`` moves only
if it still points at the version the verdict was judged against. Otherwise the verdict is stale: the
new version becomes ``challenger`` and its tags say so (``lmforge.register.outcome=stale``), so the
next retrain or a person can judge it against the new champion. A version that is not promoted is
aliased ``challenger`` too, so the latest contender is always one alias away.
"""

from __future__ import annotations

import json
from typing import Any

from components.common import lineage
from components.common.artifacts import open_run_store, store_root
from components.common.config import LifecycleConfig
from components.common.errors import DataError
from components.common.lease import held
from components.common.log import get_logger
from components.common.registry import (
    CHALLENGER,
    CHAMPION,
    EVAL_DIGEST_TAG,
    METRIC_TAG_PREFIX,
    find_alias,
    tag_key,
)
from components.common.storage import join

log = get_logger("lmforge.register")

__all__ = ["CHALLENGER", "CHAMPION", "register"]

DECISION_TAG = "lmforge.register.decision"
#: The champion version the verdict was judged against ("none" when there was no champion).
JUDGED_AGAINST_TAG = "lmforge.register.judged_against"
#: What became of the version: champion, challenger, or stale (it passed against a champion that had
#: moved on by the time it held the lease, so it waits as challenger).
OUTCOME_TAG = "lmforge.register.outcome"
STALE = "stale"


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
    return find_alias(client, name, CHAMPION)


def outcome_of(verdict: dict, champion) -> tuple[str, str]:
    """(outcome, why) of the gate's verdict given the champion *now* (read under the lease):
    ``champion`` on a pass against the current champion, ``stale`` on a pass against one that has
    since moved, ``challenger`` on a fail."""
    if not verdict["promote"]:
        return CHALLENGER, verdict["reason"]
    judged = verdict.get("champion_version", "") or ""
    now = str(champion.version) if champion is not None else ""
    if judged != now:
        return STALE, (
            f"{verdict['reason']}; but champion moved to {'v' + now if now else 'none'} before this version could "
            f"take it (judged against {'v' + judged if judged else 'no champion'}): kept as challenger"
        )
    return CHAMPION, verdict["reason"]


def lease_uri(cfg: LifecycleConfig) -> str:
    """Where the per-model register lease lives in the run's object store."""
    return join(store_root(cfg), "leases", "register", tag_key(cfg.register.model_name).replace("/", "_") + ".json")


def register(
    cfg: LifecycleConfig,
    *,
    model_uri: str,
    metrics: dict[str, float],
    verdict: dict,
    eval_digest: str,
    lineage_tags: dict[str, str],
    mlflow_run_id: str,
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``register.model_name`` and move an alias, under
    the model's lease (see the module docstring).

    Args:
        cfg: the run's config (``register``, ``lineage`` and ``storage`` are used).
        model_uri: where the model lives (an object-store URI); the version's source.
        metrics: the evaluation metrics (stored as tags for later gates).
        verdict: the evaluate stage's gate verdict (``promote``, ``reason``, ``champion_version``, ``rules``).
        eval_digest: the digest of the evaluation that produced ``metrics``.
        lineage_tags: tags that tie the version to its inputs (dataset digests, KFP run id, git SHA, profile).
        mlflow_run_id: the MLflow run the version is linked to ('' for none).

    Returns:
        ``{"metrics": {"version", "champion_version" (0: none), "promoted"}, "model_name", "registry_uri",
        "source", "alias", "reason", "outcome"}``.
    """
    from mlflow import MlflowClient

    rc = cfg.register
    if not {"promote", "reason", "champion_version"} <= set(verdict or {}):
        raise DataError(
            "register: the evaluation carries no gate verdict (promote, reason, champion_version); "
            "it was made by an older evaluate stage: rerun evaluate"
        )
    lineage.setup(cfg)
    client = MlflowClient()
    ensure_registered_model(client, rc.model_name)

    tags = {tag_key(k): str(v) for k, v in lineage_tags.items()}
    tags.update({tag_key(METRIC_TAG_PREFIX + k): repr(float(v)) for k, v in metrics.items()})
    tags[EVAL_DIGEST_TAG] = eval_digest
    tags[JUDGED_AGAINST_TAG] = verdict.get("champion_version") or "none"
    store = open_run_store(cfg)
    with held(
        store,
        lease_uri(cfg),
        ttl_seconds=rc.lease_seconds,
        wait_seconds=rc.lease_wait_seconds,
        wait_key="register.lease_wait_seconds",
    ):
        champion = current_champion(client, rc.model_name)
        outcome, reason = outcome_of(verdict, champion)
        tags[DECISION_TAG] = reason[:5000]
        tags[OUTCOME_TAG] = outcome
        version = client.create_model_version(
            rc.model_name, source=model_uri, run_id=mlflow_run_id or None, tags=tags, description=reason
        ).version
        alias = CHAMPION if outcome == CHAMPION else CHALLENGER
        client.set_registered_model_alias(rc.model_name, alias, version)
    promoted = alias == CHAMPION
    champion_version = int(version) if promoted else int(champion.version) if champion is not None else 0
    lineage.log_text(
        json.dumps({**verdict, "registered": reason, "outcome": outcome, "version": int(version)}, indent=2),
        "gate/verdict.json",
    )
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
