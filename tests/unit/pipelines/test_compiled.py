"""The committed IR YAML is what the pipeline code compiles to today."""

from pathlib import Path

import yaml

from components.common.images import IMAGE
from pipelines.compile import check_compiled

COMPILED = Path(__file__).resolve().parents[3] / "pipelines" / "compiled"


def test_committed_pipelines_are_not_stale():
    assert check_compiled(COMPILED) == [], "run `lmforge compile` and commit pipelines/compiled/"


def test_every_component_runs_in_the_one_project_image():
    spec = yaml.safe_load((COMPILED / "lifecycle.yaml").read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}
