"""The run report reads like a release report: summary first, then the stages in pipeline order,
readable names, every score with its standard error, and no section for a stage that did not run."""

from __future__ import annotations

import copy
import re

from components.report.build import build_report
from tests.unit.report.conftest import SUMMARIES, URIS, summaries

PIPELINE_ORDER = [
    "Summary",
    "Curation: pretraining corpus",
    "Curation: continual corpus",
    "Pretraining",
    "Continual pretraining",
    "Alignment",
    "Quantization",
    "Evaluation",
    "Registration",
    "Run details",
]


def h2s(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def section(page: str, key: str) -> str:
    """The HTML of the top-level section with id ``key`` (up to the next top-level section)."""
    start = page.index(f'<section id="{key}"')
    ends = [m.start() for m in re.finditer(r'<section id="[^"]+"( class="\w+")?><h2>', page) if m.start() > start]
    return page[start : ends[0] if ends else len(page)]


def test_sections_follow_the_pipeline_with_the_summary_first(full_report):
    page, md, _ = full_report
    assert h2s(page) == PIPELINE_ORDER
    assert re.findall(r"^## (.+)$", md, re.M) == PIPELINE_ORDER


def test_summary_names_the_registered_version_its_alias_and_the_gate_verdict(full_report):
    summary = section(full_report[0], "summary")
    assert (
        "<b>lmforge-chat v2</b>" in summary and "<b>challenger</b>" in summary and "the champion stays (v1)" in summary
    )
    assert "Promotion gate: <b>FAIL</b>" in summary and "re-evaluated in this run" in summary


def test_summary_sets_each_gate_rule_beside_the_champions_number(full_report):
    md = full_report[1].split("## Curation")[0]
    assert "| rule | this model | champion v1 | noise margin | result | why |" in md
    assert re.search(
        r"^\| \*\*primary\*\*: held-out perplexity \(pretraining corpus\).* \| 39\.5 \| 40 \| 1\.4 \| \*\*FAIL\*\* \|",
        md,
        re.M,
    )
    assert re.search(r"^\| continual: forgetting ≤ 0\.5 \| 0\.2 \| — \| 0 \| pass \|", md, re.M)


def test_a_stale_verdict_says_the_champion_moved_on():
    stale = {**SUMMARIES["register"], "outcome": "stale", "alias": "challenger"}
    page, _, _ = build_report(summaries(register=stale), {})
    assert "challenger (stale verdict)" in section(page, "summary")


def test_stages_that_did_not_run_have_no_section():
    # The continual pipeline starts from the champion: no pretraining; here also no preference step.
    page, md, _ = build_report(summaries(pretrain=None, prefer=None, curate_continual=None), {"pipeline": "continual"})
    assert "Pretraining" not in h2s(page) and "Curation: continual corpus" not in h2s(page)
    assert "Preference step" not in page and "## Pretraining" not in md
    assert h2s(page)[0] == "Summary"


def test_a_run_without_evaluation_or_registration_has_no_summary():
    page, _, _ = build_report(summaries(evaluate=None, register=None), {})
    assert "Summary" not in h2s(page) and "Evaluation" not in h2s(page)


def test_task_table_gives_every_score_with_its_standard_error(full_report):
    evaluation = section(full_report[0], "evaluate")
    assert re.search(
        r"<td>shakespeare cloze</td><td>accuracy \(log-likelihood\)</td><td class=n>0\.22 ± 0\.059</td>", evaluation
    )
    # lm-eval names a filtered metric's stderr '<metric>_stderr_<filter>'
    assert re.search(
        r"<td>arithmetic</td><td>exact match \(first-integer\)</td><td class=n>0\.3 ± 0\.065</td>", evaluation
    )
    assert "0.57 ± 0.05" in evaluation  # preference accuracy on held-out pairs


def test_perplexity_is_reported_per_corpus_with_its_standard_error(full_report):
    md = full_report[1].split("## Evaluation")[1]
    assert "| pretraining corpus | 39.5 ± 0.7 |" in md and "| continual corpus | 116.2 ± 6.5 |" in md


def test_a_number_no_section_shows_is_kept_under_its_mlflow_key(full_report):
    evaluation = section(full_report[0], "evaluate")
    assert (
        "<details><summary>Other numbers (1)</summary>" in evaluation and "<code>brand_new_number</code>" in evaluation
    )


def test_curation_links_each_data_card_in_the_store(full_report):
    page = full_report[0]
    assert '<a href="file:///store/datasets/aaa/data_card.html">data card</a>' in section(page, "curate")
    assert '<a href="file:///store/datasets/bbb/data_card.html">data card</a>' in section(page, "curate_continual")


def test_continual_shows_forgetting_and_adaptation_per_corpus(full_report):
    md = full_report[1].split("## Continual pretraining")[1].split("\n## ")[0]
    assert "| tinyshakespeare (earlier) | 4.83 | 5.1 | 0.27 | — | 0.52 | not recovered |" in md
    assert "| wikitext2 (new) | 7.14 | 3.92 | — | 3.23 | — | — |" in md
    assert "![continual pretraining: stability gap curves](loss_continual.png)" in md


def test_pretraining_lists_its_recoveries(full_report):
    md = full_report[1].split("## Pretraining")[1].split("\n## ")[0]
    assert "| memory | 40 | 42 | 2 | 9.5 s |" in md


def test_alignment_shows_sft_and_the_preference_steps_numbers(full_report):
    md = full_report[1].split("## Alignment")[1].split("\n## ")[0]
    assert "### Supervised fine-tuning (SFT)" in md and "| held-out answer loss | 6 → 4.39 |" in md
    assert "DPO (direct preference optimization)" in md and "| held-out preference accuracy | 0.45 → 0.61 |" in md
    assert "#### Reward model" in md and "| held-out accuracy | 0.5 → 0.58 |" in md


def test_expert_iteration_rounds_are_a_table():
    rounds = [
        {"round": r, "kept": 10 * r, "sample_accuracy": 0.1 * r, "exact_match": 0.2 * r, "heldout_exact_match": 0.1 * r}
        for r in (1, 2)
    ]
    prefer = {"method": "expert_iteration", "metrics": {"ei_exact_match_before": 0.05}, "rounds": rounds}
    _, md, _ = build_report(summaries(prefer=prefer), {})
    assert (
        "| round | verified samples kept | sample accuracy | exact match (training prompts) | held-out exact match |"
        in md
    )
    assert "| 0 | — | — | 0.05 | — |" in md and "| 2 | 20 | 0.2 | 0.4 | 0.2 |" in md


def test_generated_text_is_escaped(full_report):
    assert "<script>" not in full_report[0] and "&lt;script&gt;" in full_report[0]


def test_quantization_compares_the_method_with_the_unquantized_model(full_report):
    md = full_report[1].split("## Quantization")[1].split("\n## ")[0]
    assert "| unquantized | 1 | 32 | 40 | — | 850 |" in md
    assert "| int8_weight_only | 0.64 (×0.64) | 8 | 40.1 | +0.25% | 920 |" in md


def test_quantization_table_shows_peak_memory_when_the_stage_measured_it():
    quantize = copy.deepcopy(SUMMARIES["quantize"])
    quantize.pop("sweep")
    quantize["metrics"].update(peak_memory_mb_before=7.4, peak_memory_mb_after=5.2)
    md = build_report(summaries(quantize=quantize), {"pipeline": "lifecycle"}, URIS)[1]
    table = md.split("## Quantization")[1].split("\n## ")[0]
    assert "| model | weights (MB) | peak memory (MB) |" in table
    assert "| unquantized | 1 | 7.4 | 32 |" in table and "| int8_weight_only | 0.64 (×0.64) | 5.2 | 8 |" in table


def test_the_low_bit_sweep_has_a_table_and_a_plot(full_report):
    _, md, images = full_report
    assert "| 2 | 32 | 2.5 | 45 | +12.50% |" in md
    assert (
        images["quantize_sweep.png"][:4] == b"\x89PNG"
        and "![low-bit sweep: bits vs perplexity](quantize_sweep.png)" in md
    )


def test_images_are_inline_in_the_html_and_files_beside_the_markdown(full_report):
    page, md, images = full_report
    assert page.count("data:image/png;base64,") == len(images) >= 5
    assert all(f"]({name})" in md for name in images)


def test_stability_section_appears_only_when_the_evaluation_measured_it(full_report):
    assert "Stability across checkpoints" not in full_report[0]
    cloze = "lmforge_shakespeare_cloze_acc"
    stability = {  # as components/evaluate/stability.summarize writes it
        "steps": [50, 100, 150],
        "reference": "heldout_perplexity",
        "rows": [
            {"step": s, "heldout_perplexity": 90.0 - s / 10, cloze: 0.2, f"{cloze}_stderr": 0.05}
            for s in (50, 100, 150)
        ],
        "scores": {cloze: True},
        "tau_vs_perplexity": {cloze: {"tau": None, "p_value": None}},
        "tau_vs_step": {"heldout_perplexity": {"tau": 1.0, "p_value": 0.0117}, cloze: {"tau": None, "p_value": None}},
        "tau_methods": {"lmforge_shakespeare_cloze": {"between": [cloze, "x"], "tau": 0.333, "p_value": 0.6}},
    }
    evaluation = copy.deepcopy(SUMMARIES["evaluate"])
    evaluation["stability"] = stability
    evaluation["metrics"]["stability_tau_step_heldout_perplexity"] = 1.0
    _, md, _ = build_report(summaries(evaluate=evaluation), {}, URIS)
    part = md.split("### Stability across checkpoints")[1]
    assert "3 pretraining checkpoints (steps 50, 100, 150)" in part
    assert "| held-out perplexity (pretraining corpus) | — | +1.00 (p 0.012) |" in part
    assert "| shakespeare cloze: acc | undefined (constant score) | undefined (constant score) |" in part
    assert "| shakespeare cloze | +0.33 (p 0.6) |" in part
    assert "| 150 | 75 | 0.2 ± 0.05 |" in part
    assert "stability_tau_step_heldout_perplexity" not in md  # the table shows it: not an "other number"


def test_the_stability_plot_named_by_the_evaluation_is_fetched_from_its_output(tmp_path):
    from components.common.storage import open_store
    from components.report.run import fetch_stability_plot

    store = open_store(f"file://{tmp_path}")
    png = b"\x89PNG fake image bytes"
    store.write_bytes(f"file://{tmp_path}/reports/abc/stability.png", png)
    evaluation = {"stability": {"rows": [{"task": "order", "tau": 0.5}], "plot": "stability.png"}}
    got = {"evaluate": evaluation}
    fetch_stability_plot(store, got, {"evaluate": {"uri": f"file://{tmp_path}/reports/abc"}})
    assert got["evaluate"]["stability"]["plot_png"] == png
    _, md, images = build_report(got, {})
    assert images["evaluate_stability.png"] == png and "](evaluate_stability.png)" in md


def test_online_dpo_names_its_judge_and_the_held_out_score():
    metrics = {"online_updates": 8, "online_heldout_score_before": 0.1, "online_heldout_score_after": 0.3}
    prefer = {"method": "online_dpo", "judge": "verifier", "metrics": metrics, "rounds": []}
    _, md, _ = build_report(summaries(prefer=prefer), {})
    assert "| judge | verifier |" in md and "| held-out judge score | 0.1 → 0.3 |" in md
