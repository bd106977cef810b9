"""One tiny lifecycle run through kfp.local, shared by the integration tests (it takes minutes)."""

from __future__ import annotations

import pytest

from components.common.config import load_config


@pytest.fixture(scope="session")
def lifecycle_run(tmp_path_factory):
    from components.common.lineage import setup
    from pipelines.lifecycle import build_lifecycle
    from pipelines.local import run_local

    home = tmp_path_factory.mktemp("lifecycle")
    overrides = [f"run.home={home}"]
    cfg = load_config("tiny", overrides)
    record = run_local(build_lifecycle(cfg), "tiny", overrides, home)
    setup(cfg)  # point MLflow at this run's tracking database for the assertions
    return {"home": home, "record": record, "cfg": cfg, "overrides": overrides}
