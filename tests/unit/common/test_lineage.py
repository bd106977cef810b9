"""Opening a pipeline run's lineage: refused on a cluster when the store or MLflow would live in the pod."""

from pathlib import Path

import pytest

from components.common.errors import ConfigError
from components.common.lineage import start_pipeline_run


def test_start_on_a_cluster_with_a_local_store_fails_naming_the_keys(make_config, monkeypatch):
    monkeypatch.setenv("KFP_POD_NAME", "lmforge-lifecycle-x7k2p-start-lineage")
    with pytest.raises(
        ConfigError, match=r"profile 'tiny' cannot run on a cluster: storage.uri .*lineage.tracking_uri"
    ):
        start_pipeline_run(make_config(), "lifecycle", "run-1")


def test_start_on_a_cluster_fails_before_creating_a_tracking_database(make_config, monkeypatch):
    monkeypatch.setenv("LMFORGE_ON_CLUSTER", "1")
    cfg = make_config()
    with pytest.raises(ConfigError):
        start_pipeline_run(cfg, "lifecycle", "run-1")
    assert not (Path(cfg.run.home) / "mlflow.db").exists()
