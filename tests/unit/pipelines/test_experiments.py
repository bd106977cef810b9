"""The continual experiment's table, plots and arm selection (the runs themselves: make experiments)."""

import pytest

from components.common.errors import ConfigError
from components.continual.forgetting import corpus_metrics
from pipelines.experiments import ARMS, run_experiment, verdicts, write_results


def _run(old_after: float, new_after: float, seed: int = 1234) -> dict:
    curves = {"shakespeare": [[0, 2.0], [5, 2.9], [10, old_after]], "wiki": [[0, 6.0], [5, 5.0], [10, new_after]]}
    metrics = {"final_loss": new_after + 0.1, **corpus_metrics(curves, old=["shakespeare"], new="wiki")}
    return {
        "seed": seed,
        "metrics": metrics,
        "corpora": {"old": ["shakespeare"], "new": "wiki"},
        "heldout_curves": curves,
        "seconds": 3,
    }


def _arm(*runs: tuple[float, float]) -> dict:
    """An arm's result: one run per (old held-out after, new held-out after)."""
    return {"overrides": [], "runs": [_run(old, new, 1234 + i) for i, (old, new) in enumerate(runs)]}


def test_table_lists_every_arm_and_the_claims_all_of_whose_arms_ran(tmp_path):
    write_results({"replay_0": _arm((2.6, 4.0)), "replay_5": _arm((2.3, 4.1))}, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| replay_0 | 4.100 | 2.600 | 4.000 | +0.600 | 0.900 | -1 | 2.000 | 3 |" in table
    assert "| a little replay (5%) cuts forgetting at little cost to adaptation | forgetting replay_5 less" in table
    assert "WSD" not in table  # its arms did not run
    assert (tmp_path / "heldout_shakespeare.png").read_bytes()[:4] == b"\x89PNG"


def test_table_cells_are_seed_means_with_their_standard_deviation(tmp_path):
    write_results({"replay_0": _arm((2.6, 4.0), (2.8, 4.2))}, tmp_path)
    assert "| replay_0 | 4.200 ±0.141 | 2.700 ±0.141 | 4.100 ±0.141 |" in (tmp_path / "table.md").read_text()


def test_a_difference_beyond_the_seeds_noise_decides_the_claim():
    # forgetting: replay_5 0.30 ±0.01 vs replay_0 0.60 ±0.01 (noise 2 x sqrt(2 x 0.0002 / 2) = 0.028)
    results = {"replay_0": _arm((2.59, 4.0), (2.61, 4.0)), "replay_5": _arm((2.29, 4.0), (2.31, 4.0))}
    (claim,) = verdicts(results)[:1]
    forgetting, new = claim["conditions"]
    assert forgetting["noise"] == pytest.approx(2 * (2 * 0.0002 / 2) ** 0.5)
    assert forgetting["delta"] == pytest.approx(-0.3) and forgetting["verdict"] == "holds"
    assert new["verdict"] == "holds" and claim["verdict"] == "holds"


def test_a_difference_inside_the_seeds_noise_is_within_noise():
    results = {"replay_0": _arm((2.5, 4.0), (2.7, 4.0)), "replay_5": _arm((2.55, 4.0), (2.6, 4.0))}
    assert verdicts(results)[0]["conditions"][0]["verdict"] == "within noise"
    assert verdicts(results)[0]["verdict"] == "within noise"


def test_a_claim_goes_the_other_way_when_any_condition_does():
    # replay_5 forgets less, but learns the new corpus worse by far more than the seeds' noise
    results = {"replay_0": _arm((2.6, 4.0), (2.6, 4.01)), "replay_5": _arm((2.3, 4.5), (2.3, 4.51))}
    assert [c["verdict"] for c in verdicts(results)[0]["conditions"]] == ["holds", "does not"]
    assert verdicts(results)[0]["verdict"] == "does not"


def test_one_seed_gives_no_noise_estimate_and_judges_by_the_sign():
    (claim,) = verdicts({"replay_0": _arm((2.6, 4.0)), "replay_5": _arm((2.3, 4.1))})
    assert [c["noise"] for c in claim["conditions"]] == [None, None]
    assert [c["verdict"] for c in claim["conditions"]] == ["holds", "does not"]


def test_unknown_arm_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="experiment arms warp unknown; choose from " + ", ".join(ARMS)):
        run_experiment("tiny", [], tmp_path, ["warp"])


def test_each_quality_arm_differs_from_its_random_baseline_only_in_the_order():
    from pipelines.experiments import CLAIMS

    pairs = {(a, b) for _, conditions in CLAIMS for _, a, b, _ in conditions}
    assert {("quality_decay", "rewarm"), ("quality_constant_ema", "constant_ema")} <= pairs
    for quality, baseline in (("quality_decay", "rewarm"), ("quality_constant_ema", "constant_ema")):
        assert sorted(ARMS[quality][0]) == sorted([*ARMS[baseline][0], "continual.order=quality"])
        assert ARMS[quality][1] == ARMS[baseline][1]


def test_the_constant_arm_carries_on_at_the_base_final_lr():
    from components.common.config import load_config
    from pipelines.experiments import arm_overrides

    def lr_of(*overrides):
        cfg = load_config("tiny", list(overrides))
        [lr] = [o for o in arm_overrides("constant_no_rewarm", cfg) if o.startswith("continual.lr=")]
        return load_config("tiny", [*overrides, lr]).continual.lr

    # tiny: warmup + cosine to 0.1 of 3e-3; the last step sits a hair above the floor
    assert lr_of() == pytest.approx(3e-4, rel=1e-3)
    assert lr_of("pretrain.lr=1e-2") == pytest.approx(1e-3, rel=1e-3)
    assert lr_of("pretrain.schedule=constant") == pytest.approx(3e-3)
    assert arm_overrides("rewarm", load_config("tiny")) == []


def test_the_mini_preset_trains_the_mini_model_with_at_least_20_probes():
    from components.common.config import load_config
    from pipelines.experiments import PRESETS

    overrides, seeds = PRESETS["mini"]
    cfg = load_config("tiny", overrides)
    assert (cfg.model.preset, seeds) == ("mini", 1)
    assert cfg.continual.probes >= 20 and cfg.continual.steps < cfg.pretrain.steps
