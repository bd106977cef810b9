"""A retrain replays every corpus in the base model's lineage, walked through MLflow, in the configured
mixture (no training here). The lineage is logged as the stages log it (``stage_run``, ``log_input``,
the ``lmforge.output_uri`` tag) on a real SQLite tracking store."""

import json
import shutil

import pytest

from components.common import lineage as mlflow_lineage
from components.common.artifacts import MARKER
from components.common.config import load_config
from components.common.errors import ConfigError, DataError
from components.continual.run import ancestor_corpora, continual_spec


def _corpus(src, dest, source: str):
    """A completed curated-dataset output at ``dest``: a copy of ``src`` recording ``source``."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps({**manifest, "source": source}))
    (dest / MARKER).write_text(json.dumps({"kind": "datasets"}))
    return dest.as_uri()


def _stage_run(cfg, stage: str, output_uri: str, inputs: dict[str, str]) -> str:
    import mlflow

    with mlflow_lineage.stage_run(cfg, stage) as run_id:
        mlflow.set_tag("lmforge.output_uri", output_uri)
        for name, uri in inputs.items():
            mlflow_lineage.log_input(name=name, digest=uri.rsplit("/", 1)[-1], source_uri=uri)
    return run_id


@pytest.fixture
def lineage(tmp_path, tiny_model, tiny_dataset, wikitext_dataset):
    """A base model from an earlier continual step that learned Shakespeare then WikiText; a new corpus;
    the runs that made them in MLflow (curate, curate, pretrain, continual)."""
    first = _corpus(tiny_dataset, tmp_path / "datasets" / "a", "quickstart/tinyshakespeare.txt")
    second = _corpus(wikitext_dataset, tmp_path / "datasets" / "b", "quickstart/wikitext2.txt")
    new = _corpus(wikitext_dataset, tmp_path / "datasets" / "c", "s3://raw/news/")
    output = tmp_path / "models" / "base"
    shutil.copytree(tiny_model, output / "model")
    (output / MARKER).write_text(json.dumps({"kind": "models"}))
    cfg = load_config("tiny", [f"run.home={tmp_path / 'home'}"])
    pretrained = (tmp_path / "models" / "pretrained").as_uri()
    runs = {
        "curate_first": _stage_run(cfg, "curate", first, {}),
        "curate_second": _stage_run(cfg, "curate", second, {"datasets/tokenizer": first}),
        "pretrain": _stage_run(cfg, "pretrain", pretrained, {"datasets/dataset": first}),
    }
    runs["continual"] = _stage_run(
        cfg,
        "continual",
        output.as_uri(),
        {"models/base_model": pretrained, "datasets/dataset": second, "datasets/old_dataset": first},
    )
    return {
        "cfg": cfg,
        "model": (output / "model").as_uri(),
        "old": [first, second],
        "new": new,
        "tmp": tmp_path,
        "runs": runs,
    }


def _spec(lineage, *overrides):
    cfg = load_config("tiny", [f"run.home={lineage['tmp'] / 'home'}", *overrides])
    return continual_spec(
        cfg,
        model_uri=lineage["model"],
        dataset_uri=lineage["new"],
        old_dataset_uri=lineage["old"][0],  # the champion's pretraining corpus
        output_uri=(lineage["tmp"] / "out").as_uri(),
        checkpoint_uri=(lineage["tmp"] / "ckpt").as_uri(),
        ancestors=ancestor_corpora(cfg, lineage["model"]),
    )


def test_the_lineage_of_a_continual_model_names_every_corpus_it_learned_oldest_first(lineage):
    assert ancestor_corpora(lineage["cfg"], lineage["model"]) == lineage["old"]


def test_a_lineage_with_a_deleted_run_is_refused_naming_the_run(lineage):
    import mlflow

    mlflow.MlflowClient().delete_run(lineage["runs"]["pretrain"])
    with pytest.raises(DataError, match=f"lineage of base model .* is broken.*{lineage['runs']['pretrain']}"):
        ancestor_corpora(lineage["cfg"], lineage["model"])


def test_a_model_no_run_recorded_is_refused_naming_the_tracking_store(lineage, tiny_model):
    with pytest.raises(DataError, match="cannot be walked: no MLflow run at sqlite"):
        ancestor_corpora(lineage["cfg"], (tiny_model / "model").as_uri())


def test_retrain_replays_every_ancestor_sharing_the_replay_fraction(lineage):
    spec = _spec(lineage, "continual.replay_fraction=0.1")
    assert spec.replays == ((lineage["old"][0], 0.05), (lineage["old"][1], 0.05))
    assert [p.name for p in spec.probes] == ["tinyshakespeare", "wikitext2", "news"]


def test_per_corpus_ratios_replace_the_shared_fraction(lineage):
    spec = _spec(lineage, "continual.replay_ratios={wikitext2: 0.2, tinyshakespeare: 0.05}")
    assert spec.replays == ((lineage["old"][0], 0.05), (lineage["old"][1], 0.2))


def test_a_ratio_for_a_corpus_outside_the_lineage_names_the_lineage(lineage):
    with pytest.raises(ConfigError, match="continual.replay_ratios: web not in the base model's lineage; its corpora"):
        _spec(lineage, "continual.replay_ratios={web: 0.1}")


def test_a_lineage_naming_a_deleted_corpus_is_refused_naming_it(lineage):
    (lineage["tmp"] / "datasets" / "b" / MARKER).unlink()
    with pytest.raises(DataError, match=f"names corpus {lineage['old'][1]}"):
        _spec(lineage)


def test_replay_ratios_summing_to_one_or_more_are_refused():
    with pytest.raises(ConfigError, match="continual.replay_ratios: fractions must be >= 0 and sum to less than 1"):
        load_config("tiny", ["continual.replay_ratios={a: 0.6, b: 0.5}"])


def test_quality_order_on_a_corpus_curated_without_scores_is_refused_before_training(lineage):
    with pytest.raises(DataError, match=f"continual.order=quality: {lineage['new']} has no per-document quality"):
        _spec(lineage, "continual.order=quality")
