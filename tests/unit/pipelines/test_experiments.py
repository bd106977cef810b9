"""The continual experiment's table, plots and arm selection (the runs themselves: make experiments)."""

import pytest

from components.common.errors import ConfigError
from components.continual.forgetting import corpus_metrics
from pipelines.experiments import ARMS, run_experiment, write_results


def _result(old_after: float, new_after: float) -> dict:
    curves = {"shakespeare": [[0, 2.0], [5, 2.9], [10, old_after]], "wiki": [[0, 6.0], [5, 5.0], [10, new_after]]}
    metrics = {"final_loss": new_after + 0.1, **corpus_metrics(curves, old=["shakespeare"], new="wiki")}
    return {
        "metrics": metrics,
        "corpora": {"old": ["shakespeare"], "new": "wiki"},
        "heldout_curves": curves,
        "seconds": 3,
    }


def test_table_lists_every_arm_and_the_claims_both_of_whose_arms_ran(tmp_path):
    write_results({"replay_0": _result(2.6, 4.0), "replay_5": _result(2.3, 4.1)}, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| replay_0 | 4.100 | 2.600 | 4.000 | +0.600 | 0.900 | -1 | 2.000 | 3 |" in table
    assert "| a little replay (5%) cuts forgetting at little cost to adaptation | replay_5 vs replay_0 |" in table
    assert "WSD" not in table  # its arms did not run
    assert (tmp_path / "heldout_shakespeare.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_arm_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="experiment arms warp unknown; choose from " + ", ".join(ARMS)):
        run_experiment("tiny", [], tmp_path, ["warp"])


def test_each_quality_arm_differs_from_its_random_baseline_only_in_the_order():
    from pipelines.experiments import CLAIMS

    pairs = {(a, b) for _, a, b in CLAIMS}
    assert {("quality_decay", "rewarm"), ("quality_constant_ema", "constant_ema")} <= pairs
    for quality, baseline in (("quality_decay", "rewarm"), ("quality_constant_ema", "constant_ema")):
        assert sorted(ARMS[quality][0]) == sorted([*ARMS[baseline][0], "continual.order=quality"])
        assert ARMS[quality][1] == ARMS[baseline][1]
