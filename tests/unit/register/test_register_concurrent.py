"""Two register steps at the same moment against MLflow as the chart runs it (conftest.py): PostgreSQL
backend store, artifacts proxied into S3, the register lease in the same S3 server."""

from __future__ import annotations

import threading

from mlflow import MlflowClient

from components.register.run import CHALLENGER, CHAMPION, JUDGED_AGAINST_TAG, OUTCOME_TAG, register

LINEAGE = {"lmforge.kfp_run_id": "kfp-concurrent"}


def passed(against: str) -> dict:
    """A passing gate verdict as the evaluate stage writes it, judged against champion ``against``."""
    return {"promote": True, "reason": f"beats v{against}" if against else "first", "champion_version": against}


def server_config(make_config, tracking_uri: str, s3_endpoint: str, model: str):
    return make_config(
        f"lineage.tracking_uri={tracking_uri}",
        "storage.uri=s3://lmforge-registry/",
        f"storage.s3_endpoint={s3_endpoint}",
        "storage.s3_secure=false",
        f"register.model_name={model}",
        "register.lease_wait_seconds=60",
    )


def test_two_registers_judged_against_one_champion_lose_no_version_and_only_the_lease_holder_promotes(
    make_config, mlflow_server, s3_server
):
    cfg = server_config(make_config, mlflow_server, s3_server, "concurrent-model")
    register(cfg, model_uri="s3://lmforge-registry/models/v1/model", metrics={"heldout_perplexity": 50.0},
             verdict=passed(""), eval_digest="sha256:e", lineage_tags=LINEAGE, mlflow_run_id="")  # fmt: skip
    # Both runs' gates passed against champion v1 before either registers: the race the lease exists for.
    start, results = threading.Barrier(2), {}

    def run(i: int) -> None:
        start.wait()
        results[i] = register(cfg, model_uri=f"s3://lmforge-registry/models/run{i}/model",
                              metrics={"heldout_perplexity": (40.0, 30.0)[i]}, verdict=passed("1"),
                              eval_digest="sha256:e", lineage_tags=LINEAGE, mlflow_run_id="")  # fmt: skip

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    client = MlflowClient(tracking_uri=mlflow_server)
    versions = {int(v.version): v for v in client.search_model_versions("name='concurrent-model'")}
    assert sorted(versions) == [1, 2, 3]  # no version lost
    assert sorted(r["outcome"] for r in results.values()) == ["champion", "stale"]
    winner = next(r for r in results.values() if r["outcome"] == "champion")
    loser = next(r for r in results.values() if r["outcome"] == "stale")
    aliases = client.get_registered_model("concurrent-model").aliases
    assert aliases == {CHAMPION: str(winner["metrics"]["version"]), CHALLENGER: str(loser["metrics"]["version"])}
    champion = versions[winner["metrics"]["version"]]
    assert champion.tags[JUDGED_AGAINST_TAG] == "1" and champion.tags[OUTCOME_TAG] == CHAMPION
    stale = versions[loser["metrics"]["version"]]
    assert stale.tags[OUTCOME_TAG] == "stale" and "champion moved to" in stale.tags["lmforge.register.decision"]
