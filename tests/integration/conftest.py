"""One tiny lifecycle run, shared by the integration tests (it takes minutes).

It runs as a person runs it, ``lmforge run lifecycle`` in a (pseudo-)terminal, so the tests also
see the console it printed (``console``); the run record is the one the report step left. The tiny
profile is run with shorter training (:data:`SHORT`, passed with ``--set`` as a user would): every
step and every promise the tests check stays, the minutes of SFT and pretraining steps do not (the
tiny profile itself, as ``make demo`` runs it, is unchanged).
"""

from __future__ import annotations

import json

import pytest

from components.common.config import load_config
from tests.conftest import lmforge_cli


def newest_record(home) -> dict:
    runs = sorted((home / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


# What the tests need of the training steps is that they ran and the pretraining loss fell by more than
# 1 nat (it falls by ~2 in 100 steps); the profile's 300/150/100 steps cost ~4 minutes more on 2 cores.
# continual.probes: the profile's 24 forgetting probes would land on every one of 40 steps (a held-out
# pass on both corpora each); 4 (8 with the re-warming ones) still draw the curve. evaluate.limit must differ from
# test_retrain.py's, whose gate must re-evaluate the champion.
SHORT = [
    "pretrain.steps=100",
    "pretrain.warmup_steps=10",
    "continual.steps=40",
    "continual.warmup_steps=4",
    "continual.probes=4",
    "align.steps=20",
    "align.warmup_steps=2",
    "evaluate.limit=60",
]


@pytest.fixture(scope="session")
def lifecycle_run(tmp_path_factory):
    from components.common.lineage import setup

    home = tmp_path_factory.mktemp("lifecycle")
    overrides = [f"run.home={home}", *SHORT]
    cfg = load_config("tiny", overrides)
    sets = [a for o in SHORT for a in ("--set", o)]
    done = lmforge_cli("run", "lifecycle", "--profile", "tiny", "--home", str(home), *sets, tty=True)
    assert done.returncode == 0, done.stdout[-3000:]
    setup(cfg)  # point MLflow at this run's tracking database for the assertions
    return {"home": home, "record": newest_record(home), "cfg": cfg, "overrides": overrides, "console": done.stdout}
