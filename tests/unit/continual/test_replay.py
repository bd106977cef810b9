"""A retrain replays every corpus in the base model's lineage, in the configured mixture (no training here)."""

import json
import shutil

import pytest

from components.common.artifacts import MARKER
from components.common.config import load_config
from components.common.errors import ConfigError, DataError
from components.continual.run import LINEAGE_KEY, ancestor_corpora, continual_spec


def _corpus(src, dest, source: str):
    """A completed curated-dataset output at ``dest``: a copy of ``src`` recording ``source``."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps({**manifest, "source": source}))
    (dest / MARKER).write_text(json.dumps({"kind": "datasets"}))
    return dest.as_uri()


@pytest.fixture
def lineage(tmp_path, tiny_model, tiny_dataset, wikitext_dataset):
    """A base model from an earlier continual step that learned Shakespeare then WikiText; a new corpus."""
    first = _corpus(tiny_dataset, tmp_path / "datasets" / "a", "quickstart/tinyshakespeare.txt")
    second = _corpus(wikitext_dataset, tmp_path / "datasets" / "b", "quickstart/wikitext2.txt")
    new = _corpus(wikitext_dataset, tmp_path / "datasets" / "c", "s3://raw/news/")
    output = tmp_path / "models" / "base"
    shutil.copytree(tiny_model, output / "model")
    (output / MARKER).write_text(json.dumps({"kind": "models", LINEAGE_KEY: [first, second]}))
    return {"model": (output / "model").as_uri(), "old": [first, second], "new": new, "tmp": tmp_path}


def _spec(lineage, *overrides):
    cfg = load_config("tiny", [f"run.home={lineage['tmp'] / 'home'}", *overrides])
    return continual_spec(
        cfg,
        model_uri=lineage["model"],
        dataset_uri=lineage["new"],
        old_dataset_uri=lineage["old"][0],  # the champion's pretraining corpus
        output_uri=(lineage["tmp"] / "out").as_uri(),
        checkpoint_uri=(lineage["tmp"] / "ckpt").as_uri(),
    )


def test_the_lineage_of_a_continual_model_names_every_corpus_it_learned(lineage):
    assert ancestor_corpora(load_config("tiny"), lineage["model"]) == lineage["old"]


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
