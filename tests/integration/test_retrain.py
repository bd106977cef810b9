"""The continual pipeline retrains the lifecycle's champion on new data (after test_lifecycle.py).

Runs on the session's lifecycle home with new WikiText-2 text and shortened steps; checks that it
continued from the champion's *unquantized* base model, replayed the old corpus, and registered a
second version whose champion decision follows the promotion gate's verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, lmforge_cli
from tests.integration.conftest import newest_record

pytestmark = pytest.mark.slow

NEW_DATA = SHARED_DATA / "wikitext2" / "test.txt"
# Shorter than the lifecycle's own SHORT (conftest.py): no test here looks at how well the retrain
# learned, only at what it consumed, registered and printed. evaluate.limit differs from the
# lifecycle's, so the gate must re-evaluate the champion (asserted below).
SHORT = [
    "continual.steps=20",
    "continual.warmup_steps=2",
    "continual.probes=4",
    "align.steps=10",
    "align.warmup_steps=1",
    "evaluate.limit=30",
]


@pytest.fixture(scope="module")
def retrain_run(lifecycle_run):
    """``lmforge run continual`` on the lifecycle's home, its output on a pipe (as in CI or a log file)."""
    if not NEW_DATA.is_file():
        pytest.skip(f"needs the shared data sets beside the repo ({NEW_DATA})")
    sets = [a for o in (f"continual.source={NEW_DATA}", *SHORT) for a in ("--set", o)]
    done = lmforge_cli("run", "continual", "--profile", "tiny", "--home", str(lifecycle_run["home"]), *sets)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {**lifecycle_run, "retrain": newest_record(lifecycle_run["home"]), "retrain_console": done}


def _stage_runs(parent_id: str) -> dict:
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")
    return {r.data.tags["lmforge.stage"]: r for r in runs}


def test_retrain_continues_from_the_champions_unquantized_base_model(retrain_run):
    first = _stage_runs(retrain_run["record"]["parent_run_id"])
    second = _stage_runs(retrain_run["retrain"]["parent_run_id"])
    produced = first["continual"].data.tags["lmforge.output_uri"]
    consumed = {i.dataset.name: i.dataset.source for i in second["continual"].inputs.dataset_inputs}
    assert produced in consumed["models/base_model"]
    assert "quantize" not in consumed["models/base_model"]


def test_retrain_replays_the_corpus_the_base_model_learned(retrain_run):
    first = _stage_runs(retrain_run["record"]["parent_run_id"])
    second = _stage_runs(retrain_run["retrain"]["parent_run_id"])
    old_corpus = first["pretrain"].inputs.dataset_inputs[0].dataset.digest
    consumed = {i.dataset.name: i.dataset.digest for i in second["continual"].inputs.dataset_inputs}
    assert consumed["datasets/old_dataset"] == old_corpus


def test_retrain_registers_a_second_version_and_champion_follows_the_gate(retrain_run):
    import json

    import mlflow

    cfg = retrain_run["cfg"]
    client = mlflow.MlflowClient()
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{cfg.register.model_name}'")}
    assert set(versions) == {"1", "2"}
    second = _stage_runs(retrain_run["retrain"]["parent_run_id"])
    verdict = json.loads(mlflow.artifacts.load_text(second["evaluate"].info.artifact_uri + "/gate/verdict.json"))
    # The retrain evaluates with another evaluate.limit: the champion's stored numbers are not
    # comparable, so the gate re-evaluated it in the same run.
    assert verdict["champion_version"] == "1" and verdict["champion_source"] == "re-evaluated"
    champion = str(client.get_model_version_by_alias(cfg.register.model_name, "champion").version)
    assert champion == ("2" if verdict["promote"] else "1")


RETRAIN_STEPS = (
    "start lineage",
    "resolve champion",
    "curate new data",
    "continual",
    "sft",
    "preference",
    "quantize",
    "evaluate",
)


def test_console_on_a_pipe_prints_plain_lines_as_steps_start_and_end(retrain_run):
    out = retrain_run["retrain_console"].stdout
    lines = out.splitlines()
    assert "\x1b[" not in out and len(lines) <= 40
    for label in RETRAIN_STEPS:
        assert any(re.search(rf"▶ {label}\s+started", line) for line in lines), label
        assert any(re.search(rf"✓ {label}\s+done in [0-9.]+s", line) for line in lines), label
    assert re.search(r"step logs\s+\S+/logs/continual-\d{8}-\d{6}", out)


def test_runs_lists_both_pipeline_runs_with_their_registered_versions(retrain_run, capsys):
    from pipelines.cli import main

    assert main(["runs", "--home", str(retrain_run["home"])]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[1] for r in rows] == ["continual", "lifecycle"]  # newest first
    for row, version in zip(rows, ("v2", "v1"), strict=True):
        assert " tiny " in row and " FINISHED " in row and f"lmforge-chat {version}" in row
        assert row.split()[-1].endswith("/report.html")


def test_show_prints_the_numbers_of_the_runs_report(retrain_run, capsys):
    from pipelines.cli import main

    record = retrain_run["retrain"]
    assert main(["show", record["parent_run_id"][:10], "--home", str(retrain_run["home"])]) == 0
    shown = capsys.readouterr().out
    report = Path(record["report"]).with_name("report.md").read_text()
    evaluation = report.split("## Evaluation")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (pretraining|continual) corpus \| (\S+) ± \S+ \|$", evaluation, re.M)
    assert len(rows) == 2
    for corpus, value in rows:  # the report's readable row and show's line (label, value, MLflow key) agree
        name = {"pretraining": "perplexity_pretrain_corpus", "continual": "perplexity_continual_corpus"}[corpus]
        label = re.escape(f"perplexity ({corpus} corpus)")
        assert re.search(rf"^  {label}\s+{re.escape(value)}\s+\[{name}\]$", shown, re.M), (name, value)
    assert f"registered         {record['registered']}" in shown


def _retrained_version_ref(retrain_run) -> str:
    import mlflow

    name = retrain_run["cfg"].register.model_name
    version = mlflow.MlflowClient().get_model_version(name, "2")
    return f"models:/{name}@{version.aliases[0]}"  # champion or challenger, whichever it became


def test_lineage_of_the_retrained_version_reaches_every_raw_file_of_every_corpus(retrain_run):
    import mlflow

    from components.common.lineage_walk import walk
    from components.common.sources import QUICKSTART_DIR
    from components.common.storage import file_digest

    tree = walk(mlflow.MlflowClient(), _retrained_version_ref(retrain_run))
    assert not tree.broken_nodes()
    reached = {(n.uri, n.digest) for n in tree.raw_files()}
    manifests = list((retrain_run["home"] / "store" / "datasets").glob("*/manifest.json"))
    assert len(manifests) == 3 == len(tree.corpora())  # both lifecycle corpora and the new data
    for manifest in manifests:
        for f in json.loads(manifest.read_text())["files"]:
            assert (Path(f["uri"]).as_uri(), f["sha256"]) in reached, f["uri"]
    sft = QUICKSTART_DIR / retrain_run["cfg"].align.source.removeprefix("quickstart/")
    assert (sft.resolve().as_uri(), file_digest(sft)) in reached


def test_lineage_command_reports_a_deleted_run_as_broken(retrain_run, capsys):
    import mlflow

    from pipelines.cli import main

    home, ref = str(retrain_run["home"]), _retrained_version_ref(retrain_run)
    assert main(["lineage", ref, "--home", home, "--json"]) == 0
    intact = json.loads(capsys.readouterr().out)
    pretrain = _stage_runs(retrain_run["record"]["parent_run_id"])["pretrain"].info.run_id
    client = mlflow.MlflowClient()
    client.delete_run(pretrain)
    try:
        assert main(["lineage", ref, "--home", home]) == 1
    finally:
        client.restore_run(pretrain)
    out = capsys.readouterr().out
    assert f"BROKEN: the run that produced it ({pretrain}) was deleted" in out
    assert intact["broken"] == [] and intact["children"]
