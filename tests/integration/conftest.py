"""One tiny lifecycle run, shared by the integration tests (it takes minutes).

It runs as a person runs it, ``lmforge run lifecycle`` in a (pseudo-)terminal, so the tests also
see the console it printed (``console``); the run record is the one the report step left.
"""

from __future__ import annotations

import json

import pytest

from components.common.config import load_config
from tests.conftest import lmforge_cli


def newest_record(home) -> dict:
    runs = sorted((home / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


@pytest.fixture(scope="session")
def lifecycle_run(tmp_path_factory):
    from components.common.lineage import setup

    home = tmp_path_factory.mktemp("lifecycle")
    overrides = [f"run.home={home}"]
    cfg = load_config("tiny", overrides)
    done = lmforge_cli("run", "lifecycle", "--profile", "tiny", "--home", str(home), tty=True)
    assert done.returncode == 0, done.stdout[-3000:]
    setup(cfg)  # point MLflow at this run's tracking database for the assertions
    return {"home": home, "record": newest_record(home), "cfg": cfg, "overrides": overrides, "console": done.stdout}
