"""The whole curate stage on real text from ../shared/data, with planted defects every step must catch."""

import gzip
import json
from pathlib import Path

import pytest

from components.common.config import load_config
from components.common.errors import DataError
from components.common.shards import read_manifest
from components.curate.run import curate

from .helpers import SHARED, read_documents

PLANTED = {
    "pii": "Contact our office at help.desk@example.org or +44 20 7946 0958. The office is open on weekdays "
    "and the staff will answer questions about the archive and its collections of old letters.",
    "nsfw": "Visit the best xxx site today for free content and more, updated every day with new pictures "
    "and videos from all over the world, and do tell your friends about it.",
    "german": "Die Geschichte der Stadt reicht weit zurück, und viele Menschen kommen jedes Jahr hierher, um "
    "die alten Häuser, die Kirchen und die schönen Gärten am Fluss zu sehen.",
}


def write_corpus(raw: Path) -> None:
    raw.mkdir()
    # Lines 28,001-36,000 of the full works: the evaluation cloze set was cut from lines 30,001-40,000.
    lines = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines()[28_000:36_000]
    (raw / "shakespeare.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    wiki = (SHARED / "wikitext2" / "valid.txt").read_text(encoding="utf-8").splitlines()[:400]
    (raw / "wikitext.txt").write_text("\n".join(wiki) + "\n", encoding="utf-8")
    # GSM8K test questions: the first 100 are the shipped evaluation set gsm8k_mini.
    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "test.jsonl").read_text().splitlines()[:200]]
    records = [{"text": r["question"] + "\n" + r["answer"]} for r in rows]
    records += [{"text": t} for t in PLANTED.values()] + [{"text": PLANTED["pii"]}]  # and one exact repeat
    (raw / "gsm8k.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate_shared")
    write_corpus(tmp / "raw")
    cfg = load_config("tiny", [f"run.home={tmp / 'home'}", "tokenizer.vocab_size=512", "curate.shard_tokens=20000"])
    summary = curate(cfg, source=str(tmp / "raw"), out_dir=tmp / "out")
    return tmp / "out", summary, json.loads((tmp / "out" / "curation_report.json").read_text())


def steps(report: dict) -> dict:
    return {s["name"]: s for s in report["steps"]}


def test_every_step_runs_and_counts_chain(run):
    _, _, report = run
    names = [s["name"] for s in report["steps"]]
    assert names == [
        "read", "repair", "normalize", "length", "language", "gopher_quality", "gopher_repetition",
        "c4_quality", "fineweb_quality", "toxicity", "pii", "decontaminate", "dedup",
    ]  # fmt: skip
    for before, after in zip(report["steps"], report["steps"][1:], strict=False):
        assert after["input"] == before["kept"], after["name"]
    for s in report["steps"]:
        assert s["dropped"] == sum(s["rules"].values()), s["name"]


def test_planted_defects_are_removed_by_their_step(run):
    _, summary, report = run
    print(
        f"\n[curate e2e] {summary['metrics']['records_read']} records read, {summary['metrics']['records_kept']} kept"
    )
    for s in report["steps"]:
        print(f"  {s['name']:<18} in {s['input']:>5}  kept {s['kept']:>5}  {s['rules'] or ''} {s['modified'] or ''}")
    by = steps(report)
    assert by["language"]["rules"]["language_not_allowed"] >= 1
    assert by["toxicity"]["rules"] == {"listed_words": 1}
    assert by["pii"]["modified"]["email"] >= 1 and by["pii"]["modified"]["phone"] >= 1
    # the repeated record: MinHash sees identical signatures first, so it counts as a near duplicate
    assert by["dedup"]["dropped"] >= 1


def test_evaluation_sets_are_decontaminated(run):
    out, _, report = run
    rules = steps(report)["decontaminate"]["rules"]
    assert rules["contaminated"] >= 50, "shakespeare lines 30,001+ and GSM8K test 1-100 are evaluation data"
    texts = [r["text"] for r in read_documents(out)]
    assert not any("Janet’s ducks lay 16 eggs per day" in t for t in texts)


def test_pii_is_redacted_in_the_curated_documents(run):
    out, _, _ = run
    texts = [r["text"] for r in read_documents(out)]
    assert any("<EMAIL>" in t and "<PHONE_NUMBER>" in t for t in texts)
    assert not any("help.desk@example.org" in t for t in texts)


def test_report_has_languages_lengths_examples_and_lineage(run):
    out, summary, report = run
    assert report["languages"] == {"en": summary["metrics"]["records_kept"]}
    assert len(report["lengths"]) == summary["metrics"]["records_kept"]
    assert report["examples"]["listed_words"][0].startswith("Visit the best")
    assert {Path(u).name for s in report["shards"] for u in s["inputs"]} == {
        "shakespeare.txt",
        "wikitext.txt",
        "gsm8k.jsonl.gz",
    }
    manifest = read_manifest(out)
    assert [s["inputs"] for s in manifest["splits"]["train"]["shards"]] == [
        s["inputs"] for s in report["shards"] if s["split"] == "train"
    ]
    assert manifest["curation"]["config"]["minhash_bands"] == 14
    assert report["tokens"]["train"] == manifest["splits"]["train"]["tokens"]


def test_validation_artifacts_are_saved(run):
    out, summary, _ = run
    assert json.loads((out / "validation.json").read_text())["success"] is True
    assert (out / "validation_docs" / "index.html").is_file()
    assert summary["report"] == str(out / "curation_report.json")


def test_documents_are_shuffled_across_input_files(run):
    out, _, _ = run
    files = [Path(r["file"]).name for r in read_documents(out) if r["split"] == "train"][:60]
    assert len(set(files)) >= 2, "the packed stream interleaves the inputs"


def test_empty_result_names_the_filter_that_removed_the_most(tmp_path):
    src = tmp_path / "de.jsonl"
    src.write_text(
        json.dumps({"text": PLANTED["german"]}) + "\n" + json.dumps({"text": PLANTED["german"] + " Ja."}) + "\n"
    )
    cfg = load_config("tiny", [f"run.home={tmp_path}"])
    with pytest.raises(DataError, match=r"de\.jsonl.*'language' \(language_not_allowed: 2\).*curate\.languages"):
        curate(cfg, source=str(src), out_dir=tmp_path / "out")


def test_rephrasing_hook_adds_synthetic_documents_with_their_tokens(tmp_path, tiny_model):
    prompt = tmp_path / "paraphrase.txt"
    prompt.write_text("{text}\nParaphrase:")  # the random tiny model continues it with visible characters
    lines = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines()[:400]
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(
        "tiny",
        [
            f"run.home={tmp_path}",
            "tokenizer.vocab_size=400",
            "curate.min_chars=8",
            "curate.rephrase_enabled=true",
            "curate.rephrase_backend=hf",
            f"curate.rephrase_model={tiny_model}",
            f"curate.rephrase_style={prompt}",
            "curate.rephrase_max_new_tokens=24",
            "curate.rephrase_mix_ratio=0.1",
            "curate.rephrase_below=1.01",  # C4 scores every kept speech 1.0 with the tiny line rules
        ],
    )
    summary = curate(cfg, source=str(tmp_path / "s.txt"), out_dir=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "curation_report.json").read_text())
    rows = read_documents(tmp_path / "out")
    assert report["synthetic"]["documents"] == summary["metrics"]["synthetic_documents"] > 0
    assert 0 < report["synthetic"]["tokens"] < report["tokens"]["train"] + report["tokens"]["heldout"]
    assert report["synthetic"]["style"] == "paraphrase"
    assert len(rows) == summary["metrics"]["records_kept"] + report["synthetic"]["documents"]
