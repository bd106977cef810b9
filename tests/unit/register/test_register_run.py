"""The register stage on a real MLflow registry (SQLite backend store in a temp dir).

The tests of this module share one tracking database (creating one runs MLflow's migrations, which
takes seconds) and stay independent by registering distinct model names.
"""

from __future__ import annotations

import pytest

from components.common import lineage
from components.common.errors import ConfigError
from components.register.run import CHALLENGER, CHAMPION, register

LINEAGE = {"lmforge.input.pretrain_corpus": "file:///store/datasets/abc@sha256:abc", "lmforge.kfp_run_id": "kfp-1"}


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory):
    return tmp_path_factory.mktemp("registry_home")


@pytest.fixture
def config(make_config, registry_home, request):
    """``config(*overrides)``: a tiny config on the shared registry, model name unique to the test."""

    def build(*overrides: str):
        return make_config(f"run.home={registry_home}", f"register.model_name={request.node.name}", *overrides)

    return build


def register_model(cfg, metrics: dict[str, float], source: str = "file:///store/models/m1/model") -> dict:
    with lineage.stage_run(cfg, "register") as run_id:
        return register(cfg, model_uri=source, metrics=metrics, lineage_tags=LINEAGE, mlflow_run_id=run_id)


def aliases(cfg) -> dict[str, int]:
    from mlflow import MlflowClient

    lineage.setup(cfg)
    model = MlflowClient().get_registered_model(cfg.register.model_name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def test_first_version_becomes_champion(config):
    cfg = config()
    out = register_model(cfg, {"heldout_perplexity": 40.0})
    assert out["metrics"] == {"version": 1, "champion_version": 1, "promoted": 1}
    assert aliases(cfg) == {CHAMPION: 1}


def test_worse_version_gets_challenger_and_champion_stays(config):
    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0})
    out = register_model(cfg, {"heldout_perplexity": 55.0})
    assert out["metrics"] == {"version": 2, "champion_version": 1, "promoted": 0}
    assert "does not beat" in out["reason"]
    assert aliases(cfg) == {CHAMPION: 1, CHALLENGER: 2}


def test_better_version_takes_champion(config):
    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0})
    register_model(cfg, {"heldout_perplexity": 55.0})
    out = register_model(cfg, {"heldout_perplexity": 31.5})
    assert out["metrics"] == {"version": 3, "champion_version": 3, "promoted": 1}
    assert aliases(cfg)[CHAMPION] == 3


def test_greater_is_better_reverses_the_direction(config):
    cfg = config("register.metric=cloze_acc", "register.greater_is_better=true")
    register_model(cfg, {"cloze_acc": 0.40})
    lower = register_model(cfg, {"cloze_acc": 0.30})
    higher = register_model(cfg, {"cloze_acc": 0.45})
    assert (lower["metrics"]["promoted"], higher["metrics"]["promoted"]) == (0, 1)
    assert aliases(cfg) == {CHAMPION: 3, CHALLENGER: 2}


def test_tie_keeps_the_incumbent_champion(config):
    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0})
    out = register_model(cfg, {"heldout_perplexity": 40.0})
    assert out["metrics"]["champion_version"] == 1 and out["metrics"]["promoted"] == 0


def test_version_carries_lineage_metrics_and_run(config):
    from mlflow import MlflowClient

    cfg = config()
    out = register_model(cfg, {"heldout_perplexity": 40.0, "lmforge_shakespeare_cloze_acc": 0.25})
    version = MlflowClient().get_model_version(cfg.register.model_name, str(out["metrics"]["version"]))
    assert version.source == "file:///store/models/m1/model"
    assert version.run_id
    assert version.tags["lmforge.kfp_run_id"] == "kfp-1"
    assert version.tags["lmforge.input.pretrain_corpus"].endswith("@sha256:abc")
    assert float(version.tags["lmforge.metric.lmforge_shakespeare_cloze_acc"]) == 0.25
    assert float(version.tags["lmforge.metric.heldout_perplexity"]) == 40.0


def test_missing_metric_names_the_key_and_the_available_metrics(config):
    cfg = config("register.metric=bleu")
    with pytest.raises(ConfigError, match=r"register\.metric.*'bleu'.*heldout_perplexity"):
        register(cfg, model_uri="file:///m", metrics={"heldout_perplexity": 40.0}, lineage_tags={}, mlflow_run_id="")


def test_a_verdict_judged_against_a_champion_that_moved_on_keeps_the_new_version_as_stale_challenger(config):
    from components.register.run import commit, judge

    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0})
    verdict = judge(cfg, {"heldout_perplexity": 30.0})  # beats v1 ...
    register_model(cfg, {"heldout_perplexity": 20.0})  # ... but v2 takes champion before it commits
    out = commit(cfg, verdict, model_uri="file:///store/models/m3/model", metrics={"heldout_perplexity": 30.0},
                 lineage_tags=LINEAGE, mlflow_run_id="")  # fmt: skip
    assert (out["outcome"], out["alias"], out["metrics"]["champion_version"]) == ("stale", CHALLENGER, 2)
    assert aliases(cfg) == {CHAMPION: 2, CHALLENGER: 3}
    assert "champion moved to v2" in out["reason"] and "judged against v1" in out["reason"]
