"""The data card renders a curation report as one self-contained, safe HTML page."""

from __future__ import annotations

import base64
import copy
import re

import pytest

from components.common.errors import DataError
from components.curate.datacard import CARD, log_data_card, render_data_card

SCRIPT = "<script>alert('pwned')</script>"


@pytest.fixture
def report() -> dict:
    return {
        "source": "/data/web",
        "inputs": [
            {"uri": "/data/web/a.jsonl.gz", "sha256": "ab" * 32, "records": 1200, "quarantined": 3, "error": None},
            {
                "uri": "/data/web/b.jsonl.gz",
                "sha256": "cd" * 32,
                "records": 40,
                "quarantined": 0,
                "error": "truncated gzip stream",
            },
        ],
        "steps": [
            {"name": "read", "input": 1240, "kept": 1237, "dropped": 3, "rules": {"malformed_json": 3}},
            {"name": "language", "input": 1237, "kept": 1101, "dropped": 136, "rules": {"not_allowed_language": 136}},
            {
                "name": "gopher_quality",
                "input": 1101,
                "kept": 907,
                "dropped": 194,
                "rules": {"gopher_short_doc": 150, "gopher_below_alpha_threshold": 44},
            },
            {"name": "minhash_dedup", "input": 907, "kept": 861, "dropped": 46, "rules": {}},
        ],
        "examples": {
            "gopher_short_doc": ["tiny", f"click here {SCRIPT}"],
            "not_allowed_language": ["Dies ist ein deutscher Satz & mehr."],
        },
        "languages": {"en": 840, "fr": 21},
        "lengths": [40 + (i * 37) % 5000 for i in range(861)],
        "dedup_clusters": {"2": 30, "3": 8},
        "synthetic": {"documents": 50, "tokens": 12_000, "style": "wikipedia"},
        "tokens": {"train": 114_000, "heldout": 6_000},
        "quarantined": 3,
        "shards": [
            {
                "path": "train/shard-00000.bin",
                "split": "train",
                "tokens": 114_000,
                "inputs": ["/data/web/a.jsonl.gz", "/data/web/b.jsonl.gz"],
            },
            {
                "path": "heldout/shard-00000.bin",
                "split": "heldout",
                "tokens": 6_000,
                "inputs": ["/data/web/a.jsonl.gz"],
            },
        ],
        "config": {"min_chars": 32, "languages": ["en", "fr"], "minhash_ngram": 5},
    }


def render(report: dict, tmp_path) -> str:
    path = render_data_card(report, tmp_path)
    assert path == tmp_path / CARD
    return path.read_text(encoding="utf-8")


def rows(page: str) -> list[list[str]]:
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page)]


def test_card_shows_every_steps_counts_and_per_rule_drops(report, tmp_path):
    table = rows(render(report, tmp_path))
    for step in report["steps"]:
        assert [step["name"], f"{step['input']:,}", f"{step['kept']:,}", str(step["dropped"])] in [r[:4] for r in table]
        for rule, n in step["rules"].items():
            assert any(rule in r[0] and r[3] == str(n) for r in table if len(r) == 5)


def test_histograms_are_embedded_as_png_images(report, tmp_path):
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', render(report, tmp_path))
    assert len(images) == 2  # languages, lengths
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)


def test_dropped_examples_and_names_are_html_escaped(report, tmp_path):
    report["inputs"][0]["uri"] = f"/data/{SCRIPT}.jsonl"
    page = render(report, tmp_path)
    assert "<script" not in page
    assert "click here &lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "deutscher Satz &amp; mehr." in page


def test_summary_reports_tokens_quarantine_and_synthetic_share(report, tmp_path):
    summary = dict(r for r in rows(render(report, tmp_path)) if len(r) == 2)
    assert summary["train tokens"] == "114,000" and summary["held-out tokens"] == "6,000"
    assert summary["documents read"] == "1,240" and summary["documents kept"] == "861"
    assert summary["quarantined records"] == "3"
    assert summary["synthetic tokens"] == "12,000 (10.0% of all tokens)"


def test_inputs_with_digests_and_shard_lineage_are_listed(report, tmp_path):
    page = render(report, tmp_path)
    table = rows(page)
    assert ["/data/web/b.jsonl.gz", "<code>cdcdcdcdcdcdcdcd</code>", "40", "0", "truncated gzip stream"] in table
    assert f'title="{"ab" * 32}"' in page
    assert ["train/shard-00000.bin", "train", "114,000", "/data/web/a.jsonl.gz<br>/data/web/b.jsonl.gz"] in table


def test_dedup_clusters_count_the_removed_duplicates(report, tmp_path):
    page = render(report, tmp_path)
    assert "46 documents removed as duplicates" in page  # 30 pairs + 8 triples
    assert ["3", "8"] in rows(page)


def test_filter_config_is_included(report, tmp_path):
    assert "&quot;minhash_ngram&quot;: 5" in render(report, tmp_path)


@pytest.mark.parametrize("key", ["source", "inputs", "steps", "tokens"])
def test_a_missing_required_key_raises_naming_it(report, tmp_path, key):
    del report[key]
    with pytest.raises(DataError, match=f"missing required key '{key}'"):
        render_data_card(report, tmp_path)


def test_a_step_missing_a_count_raises_naming_the_step_and_key(report, tmp_path):
    del report["steps"][2]["kept"]
    with pytest.raises(DataError, match=r"steps\[2\] \('gopher_quality'\) misses key 'kept'"):
        render_data_card(report, tmp_path)


@pytest.mark.parametrize("key", ["examples", "languages", "lengths", "dedup_clusters", "shards", "config"])
def test_a_missing_optional_key_renders_as_not_reported(report, tmp_path, key):
    partial = copy.deepcopy(report)
    del partial[key]
    assert f"not reported (the curation report has no &#x27;{key}&#x27; key)" in render(partial, tmp_path)


def test_card_is_logged_to_an_mlflow_run(report, tmp_path, make_config):
    import mlflow

    from components.common import lineage

    path = render_data_card(report, tmp_path / "card")
    with lineage.stage_run(make_config(), "curate") as run_id:
        log_data_card(path, run_id)
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "data_card")] == ["data_card/data_card.html"]
