"""The register stage on a real MLflow registry (SQLite backend store in a temp dir).

The tests of this module share one tracking database (creating one runs MLflow's migrations, which
takes seconds) and stay independent by registering distinct model names.
"""

from __future__ import annotations

import pytest

from components.common import lineage
from components.common.errors import DataError
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


def verdict(promote: bool, against: str = "", reason: str = "") -> dict:
    """A gate verdict as the evaluate stage writes it (the gate itself is tested in tests/unit/evaluate)."""
    return {"promote": promote, "reason": reason or ("pass" if promote else "fail"), "champion_version": against}


def register_model(
    cfg, metrics: dict[str, float], gate: dict, source: str = "file:///store/models/m1/model", digest: str = "sha256:e1"
) -> dict:
    with lineage.stage_run(cfg, "register") as run_id:
        return register(
            cfg,
            model_uri=source,
            metrics=metrics,
            verdict=gate,
            eval_digest=digest,
            lineage_tags=LINEAGE,
            mlflow_run_id=run_id,
        )


def aliases(cfg) -> dict[str, int]:
    from mlflow import MlflowClient

    lineage.setup(cfg)
    model = MlflowClient().get_registered_model(cfg.register.model_name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def test_first_version_becomes_champion_when_the_gate_passes(config):
    cfg = config()
    out = register_model(cfg, {"heldout_perplexity": 40.0}, verdict(True))
    assert out["metrics"] == {"version": 1, "champion_version": 1, "promoted": 1}
    assert aliases(cfg) == {CHAMPION: 1}


def test_failed_gate_gives_challenger_and_champion_stays(config):
    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0}, verdict(True))
    out = register_model(cfg, {"heldout_perplexity": 55.0}, verdict(False, "1", "champion v1 stays: worse"))
    assert out["metrics"] == {"version": 2, "champion_version": 1, "promoted": 0}
    assert out["reason"] == "champion v1 stays: worse"
    assert aliases(cfg) == {CHAMPION: 1, CHALLENGER: 2}


def test_passed_gate_takes_champion(config):
    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0}, verdict(True))
    register_model(cfg, {"heldout_perplexity": 55.0}, verdict(False, "1"))
    out = register_model(cfg, {"heldout_perplexity": 31.5}, verdict(True, "1"))
    assert out["metrics"] == {"version": 3, "champion_version": 3, "promoted": 1}
    assert aliases(cfg)[CHAMPION] == 3


def test_a_pass_judged_against_a_champion_that_moved_on_keeps_the_new_version_as_stale_challenger(config):
    cfg = config()
    register_model(cfg, {"heldout_perplexity": 40.0}, verdict(True))
    register_model(cfg, {"heldout_perplexity": 30.0}, verdict(True, "1"))  # v2 is champion now
    out = register_model(cfg, {"heldout_perplexity": 35.0}, verdict(True, "1"))  # judged against v1
    assert (out["outcome"], out["alias"], out["metrics"]["champion_version"]) == ("stale", CHALLENGER, 2)
    assert out["metrics"]["promoted"] == 0
    assert "champion moved to v2" in out["reason"] and "judged against v1" in out["reason"]
    assert aliases(cfg) == {CHAMPION: 2, CHALLENGER: 3}


def test_version_carries_lineage_metrics_digest_and_run(config):
    from mlflow import MlflowClient

    cfg = config()
    out = register_model(cfg, {"heldout_perplexity": 40.0, "lmforge_shakespeare_cloze_acc": 0.25}, verdict(True))
    version = MlflowClient().get_model_version(cfg.register.model_name, str(out["metrics"]["version"]))
    assert version.source == "file:///store/models/m1/model"
    assert version.run_id
    assert version.tags["lmforge.kfp_run_id"] == "kfp-1"
    assert version.tags["lmforge.input.pretrain_corpus"].endswith("@sha256:abc")
    assert float(version.tags["lmforge.metric.lmforge_shakespeare_cloze_acc"]) == 0.25
    assert float(version.tags["lmforge.metric.heldout_perplexity"]) == 40.0
    assert version.tags["lmforge.eval_digest"] == "sha256:e1"


def test_registry_reports_the_champions_stored_numbers_and_digest(config):
    from components.common.registry import champion_record

    cfg = config()
    assert champion_record(cfg) is None
    register_model(cfg, {"heldout_perplexity": 40.0, "heldout_perplexity_stderr": 0.5}, verdict(True))
    record = champion_record(cfg)
    assert (record.version, record.eval_digest) == ("1", "sha256:e1")
    assert record.metrics == {"heldout_perplexity": 40.0, "heldout_perplexity_stderr": 0.5}


def test_evaluation_without_a_verdict_is_refused(config):
    cfg = config()
    with pytest.raises(DataError, match="no gate verdict.*rerun evaluate"):
        register(cfg, model_uri="file:///m", metrics={}, verdict={}, eval_digest="", lineage_tags={}, mlflow_run_id="")
