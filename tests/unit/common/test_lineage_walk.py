"""The lineage walker on a real MLflow SQLite store: curate → pretrain → quantize → registered version.

The chain is logged exactly as the stages log it (``stage_run``, ``log_input``, ``log_raw_files``, the
``lmforge.output_uri`` tag), so the walker is checked against the records the pipeline writes.
"""

from __future__ import annotations

import pytest

from components.common import lineage
from components.common.errors import LmforgeError
from components.common.lineage_walk import TAG_SOURCE_ARTIFACT, TAG_SOURCE_RUN, walk
from components.common.storage import file_digest

STORE = "file:///store"
CORPUS = f"{STORE}/datasets/corpus0001"
BASE = f"{STORE}/models/base0001"
QUANT = f"{STORE}/models/quant0001"
REG = f"{STORE}/registrations/reg0001"


def _stage(cfg, stage: str, output_uri: str, inputs: list[tuple[str, str]], raw=(), skipped=False) -> str:
    import mlflow

    with lineage.stage_run(cfg, stage) as run_id:
        mlflow.set_tag("lmforge.output_uri", output_uri)
        if skipped:
            mlflow.set_tag("lmforge.skipped", "true")
        for name, uri in inputs:
            lineage.log_input(name=name, digest=uri.rsplit("/", 1)[-1], source_uri=uri)
        if raw:
            lineage.log_raw_files(list(raw), role="corpus")
    return run_id


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    import mlflow

    from components.common.config import load_config

    home = tmp_path_factory.mktemp("walk")
    cfg = load_config("tiny", [f"run.home={home}"])
    files = []
    for name, text in (("a.txt", "first corpus file\n"), ("b.jsonl", '{"text": "second"}\n')):
        (home / name).write_text(text)
        files.append((str(home / name), file_digest(home / name)))
    ids = {
        "curate": _stage(cfg, "curate", CORPUS, [], raw=files),
        "pretrain": _stage(cfg, "pretrain", BASE, [("datasets/dataset", CORPUS)]),
    }
    # A later run that reused the corpus (skipped): it must not hide the run that made it.
    ids["curate_reuse"] = _stage(cfg, "curate", CORPUS, [], skipped=True)
    ids["quantize"] = _stage(cfg, "quantize", QUANT, [("models/base_model", BASE), ("datasets/dataset", CORPUS)])
    # As the register step does: its run consumed the model and names the corpus again.
    ids["register"] = _stage(cfg, "register", REG, [("models/model", QUANT), ("datasets/pretrain_corpus", CORPUS)])
    client = mlflow.MlflowClient()
    client.create_registered_model("walk-model")
    tags = {TAG_SOURCE_RUN: ids["quantize"], TAG_SOURCE_ARTIFACT: QUANT}
    v1 = client.create_model_version("walk-model", source=f"{QUANT}/model", run_id=ids["register"], tags=tags)
    client.set_registered_model_alias("walk-model", "champion", v1.version)
    # A version registered before the source tags existed: found through its source's parent.
    client.create_model_version("walk-model", source=f"{QUANT}/model", run_id=ids["register"])
    return {"client": client, "ids": ids, "files": files}


def test_walk_from_an_alias_reaches_every_raw_file_with_its_full_digest(chain):
    tree = walk(chain["client"], "models:/walk-model@champion")
    assert {(n.uri.removeprefix("file://"), n.digest) for n in tree.raw_files()} == set(chain["files"])
    assert [c.uri for c in tree.corpora()] == [CORPUS]
    assert not tree.broken_nodes()


def test_walk_names_the_run_that_made_each_artifact_not_one_that_reused_it(chain):
    tree = walk(chain["client"], "models:/walk-model/1")
    made = {n.uri: n.run_id for n in tree.iter() if n.kind == "artifact"}
    ids = chain["ids"]
    assert made == {QUANT: ids["quantize"], BASE: ids["pretrain"], CORPUS: ids["curate"]}


def test_an_artifact_consumed_twice_is_expanded_once(chain):
    text = walk(chain["client"], "models:/walk-model@champion").render()
    assert text.count("corpus/a.txt") == 1
    assert "(see above)" in text


def test_a_version_without_source_tags_is_walked_from_its_source_directory(chain):
    tree = walk(chain["client"], "2", model_name="walk-model")
    assert {n.digest for n in tree.raw_files()} == {d for _, d in chain["files"]}


def test_walk_from_a_run_id_starts_at_that_run(chain):
    tree = walk(chain["client"], chain["ids"]["pretrain"])
    assert tree.kind == "run" and tree.stage == "pretrain"
    assert len(tree.raw_files()) == 2


def test_an_unknown_reference_names_the_accepted_forms(chain):
    with pytest.raises(LmforgeError, match="models:/NAME@ALIAS"):
        walk(chain["client"], "not-a-run")
    with pytest.raises(LmforgeError, match="no such model version"):
        walk(chain["client"], "models:/walk-model@nobody")


def test_a_deleted_run_breaks_the_lineage_and_is_reported(chain):
    client, ids = chain["client"], chain["ids"]
    client.delete_run(ids["pretrain"])
    try:
        tree = walk(client, "models:/walk-model@champion")
    finally:
        client.restore_run(ids["pretrain"])
    [broken] = tree.broken_nodes()
    assert broken.uri == BASE and ids["pretrain"] in broken.broken and "deleted" in broken.broken
    assert "BROKEN" in tree.render() and tree.to_dict()["children"]


def test_a_deleted_registering_run_is_reported_beside_the_intact_model_lineage(chain):
    client, ids = chain["client"], chain["ids"]
    client.delete_run(ids["register"])
    try:
        tree = walk(client, "models:/walk-model@champion")
    finally:
        client.restore_run(ids["register"])
    [broken] = tree.broken_nodes()
    assert broken.run_id == ids["register"] and "deleted" in broken.broken
    assert len(tree.raw_files()) == 2  # the model's own history is still walked
