"""Knowing a step runs on a cluster (KFP's pod variables, or LMFORGE_ON_CLUSTER) and what a config needs there."""

import pytest

from components.common.errors import ConfigError
from components.common.runtime import cluster_problems, on_cluster

POD = {"KFP_POD_NAME": "lmforge-lifecycle-x7k2p-system-container-impl-1234", "KFP_POD_UID": "5f1c-..."}


def test_kfp_pod_variables_mean_a_cluster_step():
    assert on_cluster(POD)


def test_no_kfp_pod_variables_mean_this_machine():
    assert not on_cluster({"HOME": "/home/me"})


def test_override_makes_a_step_outside_kfp_a_cluster_step():
    assert on_cluster({"LMFORGE_ON_CLUSTER": "true"})


def test_override_makes_a_kfp_pod_count_as_this_machine():
    assert not on_cluster({**POD, "LMFORGE_ON_CLUSTER": "0"})


def test_empty_override_leaves_the_decision_to_kfp():
    assert on_cluster({**POD, "LMFORGE_ON_CLUSTER": ""})


def test_unrecognised_override_names_the_variable_and_its_values():
    with pytest.raises(ConfigError, match=r"LMFORGE_ON_CLUSTER='maybe': set it to 1 .* or 0"):
        on_cluster({"LMFORGE_ON_CLUSTER": "maybe"})


def test_local_store_is_a_cluster_problem_naming_storage_uri(make_config):
    (problem,) = cluster_problems(make_config("storage.uri=", profile="tiny+cluster"))
    assert problem.startswith("storage.uri is '' (a directory under run.home)")


def test_file_store_is_a_cluster_problem_naming_storage_uri(make_config):
    (problem,) = cluster_problems(make_config("storage.uri=file:///data/store", profile="tiny+cluster"))
    assert problem.startswith("storage.uri is 'file:///data/store'") and "s3://" in problem


def test_sqlite_tracking_is_a_cluster_problem_naming_lineage_tracking_uri(make_config):
    (problem,) = cluster_problems(make_config("lineage.tracking_uri=sqlite:///m.db", profile="tiny+cluster"))
    assert problem.startswith("lineage.tracking_uri is 'sqlite:///m.db'") and "http://mlflow" in problem


def test_default_tracking_is_a_cluster_problem(make_config):
    (problem,) = cluster_problems(make_config("lineage.tracking_uri=", profile="tiny+cluster"))
    assert problem.startswith("lineage.tracking_uri is '' (SQLite under run.home)")


def test_cluster_overlay_leaves_no_problem(make_config):
    assert cluster_problems(make_config(profile="tiny+cluster")) == []
