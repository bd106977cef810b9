"""Forgetting, adaptation and the stability gap computed from held-out probe curves."""

import pytest

from components.continual.forgetting import (
    corpus_label,
    corpus_metrics,
    probe_steps,
    recovery_steps,
    stability_gap,
    unique_labels,
)

DIP = [[0, 2.0], [10, 3.0], [20, 2.6], [30, 1.9], [40, 1.8]]


def test_gap_is_the_largest_rise_over_the_start():
    assert stability_gap(DIP) == pytest.approx(1.0)


def test_steadily_falling_old_loss_has_no_gap():
    assert stability_gap([[0, 6.2], [4, 6.0], [8, 5.8]]) == 0.0


def test_steady_forgetting_is_a_gap_that_never_recovers():
    curve = [[0, 2.0], [4, 2.2], [8, 2.5]]
    assert stability_gap(curve) == pytest.approx(0.5)
    assert recovery_steps(curve) == -1


def test_recovery_is_the_first_step_back_at_the_start_after_the_peak():
    assert recovery_steps(DIP) == 30


def test_no_rise_needs_no_recovery():
    assert recovery_steps([[0, 2.0], [5, 1.9], [10, 1.8]]) == 0


def test_metrics_are_named_per_corpus_with_the_worst_old_corpus_unsuffixed():
    curves = {"shakespeare": DIP, "web": [[0, 2.0], [40, 2.5]], "wiki": [[0, 5.0], [40, 3.5]]}
    m = corpus_metrics(curves, old=["shakespeare", "web"], new="wiki")
    assert m["forgetting/shakespeare"] == pytest.approx(-0.2)
    assert m["forgetting/web"] == pytest.approx(0.5)
    assert m["forgetting"] == pytest.approx(0.5)
    assert m["adaptation/wiki"] == m["adaptation"] == pytest.approx(1.5)
    assert m["stability_gap/shakespeare"] == pytest.approx(1.0) and m["recovery_steps/shakespeare"] == 30
    assert m["heldout_loss_before/wiki"] == 5.0 and m["heldout_loss_after/wiki"] == 3.5
    assert "adaptation/shakespeare" not in m and "forgetting/wiki" not in m


def test_default_probes_are_at_least_twenty_and_denser_while_rewarming():
    points = probe_steps(150, probes=24, every=0, warmup_steps=15, density=4)
    assert len(points) >= 20 and points[-1] == 150
    early = [s for s in points if s <= 30]  # re-warming and as long again
    late = [s for s in points if 120 < s <= 150]
    assert len(early) >= 4 * len(late) - 1


def test_uniform_probes_every_n_steps_end_at_the_last_step():
    assert probe_steps(14, probes=24, every=4, warmup_steps=4, density=1) == (4, 8, 12, 14)


@pytest.mark.parametrize(
    ("source", "uri", "label"),
    [
        ("quickstart/wikitext2.txt", "file:///s/datasets/ab12", "wikitext2"),
        ("s3://raw/web/", "s3://b/datasets/cd34", "web"),
        ("/data/news.jsonl.gz", "file:///s/datasets/ef56", "news"),
        ("", "file:///s/datasets/ab12cd", "ab12cd"),
    ],
)
def test_corpus_label_is_the_source_stem_else_the_dataset_directory(source, uri, label):
    assert corpus_label(source, uri) == label


def test_repeated_labels_are_numbered():
    assert unique_labels(["web", "wiki", "web"]) == ["web", "wiki", "web-2"]
