"""The run report opens with what was registered and the gate's verdict, rule by rule."""

from __future__ import annotations

from components.report.build import build_report

VERDICT = {
    "promote": False,
    "reason": "champion v1 stays: primary heldout_perplexity: better by 0.5, within noise 1.4",
    "champion_version": "1",
    "champion_source": "re-evaluated",
    "z": 1.96,
    "rules": [
        {
            "rule": "primary heldout_perplexity",
            "metric": "heldout_perplexity",
            "new": 39.5,
            "champion": 40.0,
            "margin": 1.4,
            "passed": False,
            "note": "better by 0.5, within noise 1.4",
        },
        {
            "rule": "continual_forgetting <= 0.5",
            "metric": "continual_forgetting",
            "new": 0.2,
            "champion": None,
            "margin": 0.0,
            "passed": True,
            "note": "0.2 <= 0.5",
        },
    ],
}
SUMMARIES = {
    "evaluate": {"metrics": {"heldout_perplexity": 39.5}, "verdict": VERDICT},
    "register": {"metrics": {"version": 2}, "registry_uri": "models:/lmforge-chat/2", "alias": "challenger"},
    "quantize": {
        "metrics": {"perplexity_before": 40.0},
        "sweep": [{"bits": b, "group_size": 32, "perplexity": 40.0 + 10 / b} for b in (2, 4, 8)],
    },
}


def test_report_opens_with_the_registration_and_the_gate_verdict():
    page, md, _ = build_report(SUMMARIES, {"pipeline": "continual"})
    assert page.index("<h2>Summary</h2>") < page.index("<table>")
    assert "models:/lmforge-chat/2" in page and "<b>challenger</b>" in page and "<b>fail</b>" in page
    assert md.index("## Summary") < md.index("| rule | new | champion | noise margin | result | why |")
    assert "| primary heldout_perplexity | 39.5 | 40 | 1.4 | FAIL |" in md
    assert "| continual_forgetting <= 0.5 | 0.2 | — | 0 | pass |" in md


def test_report_shows_the_low_bit_sweep_plot():
    _, md, images = build_report(SUMMARIES, {})
    assert images["quantize_sweep.png"][:4] == b"\x89PNG" and "![low-bit sweep](quantize_sweep.png)" in md
