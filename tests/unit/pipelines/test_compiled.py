"""The committed IR YAML is what the pipeline code compiles to today."""

from pathlib import Path

import pytest
import yaml

from components.common.images import IMAGE
from pipelines.compile import check_compiled

COMPILED = Path(__file__).resolve().parents[3] / "pipelines" / "compiled"


def test_committed_pipelines_are_not_stale():
    assert check_compiled(COMPILED) == [], "run `lmforge compile` and commit pipelines/compiled/"


@pytest.mark.parametrize("name", ["lifecycle", "continual"])
def test_every_component_runs_in_the_one_project_image(name):
    spec, _platform = yaml.safe_load_all((COMPILED / f"{name}.yaml").read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}


@pytest.mark.parametrize("name", ["lifecycle", "continual"])
def test_every_step_gets_s3_credentials_from_the_secret_and_runs_non_root(name):
    _spec, platform = yaml.safe_load_all((COMPILED / f"{name}.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for config in executors.values():
        assert config["secretAsEnv"][0]["secretName"] == "lmforge-s3"
        assert config["securityContext"]["runAsNonRoot"] is True
