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


def test_ui_links_name_the_mlflow_and_kubeflow_pages_of_a_run(make_config):
    from components.common.lineage import ui_links

    cfg = make_config(
        "lineage.tracking_uri=http://mlflow.lmforge:5000/", "lineage.kfp_ui_url=https://kubeflow.example/pipeline"
    )
    assert ui_links(cfg, experiment_id="3", run_id="abc", kfp_run_id="k-1") == {
        "MLflow UI": "http://mlflow.lmforge:5000/#/experiments/3/runs/abc",
        "Kubeflow run": "https://kubeflow.example/pipeline/#/runs/details/k-1",
    }


def test_a_local_tracking_store_has_no_ui_links(make_config):
    from components.common.lineage import ui_links

    assert ui_links(make_config(), experiment_id="3", run_id="abc", kfp_run_id="k-1") == {}
