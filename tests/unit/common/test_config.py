"""The config tree: profiles, overrides, validation messages and what enters the content hash."""

import pytest

from components.common.config import describe, load_config, versioned_dict
from components.common.errors import ConfigError

SIZES = ["tiny", "small", "1b"]
CLUSTER_ONLY = {"storage", "lineage"}  # sections only the cluster overlay may set


@pytest.mark.parametrize("profile", [*SIZES, *(f"{size}+cluster" for size in SIZES)])
def test_every_shipped_profile_loads(profile):
    assert load_config(profile).run.profile == profile


def test_override_sets_nested_key_with_its_type():
    cfg = load_config("tiny", ["pretrain.steps=7", "pretrain.warmup_steps=2", "pretrain.lr=1e-3"])
    assert cfg.pretrain.steps == 7 and isinstance(cfg.pretrain.lr, float)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain.stpes' \(did you mean 'steps'\?\)"):
        load_config("tiny", ["pretrain.stpes=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"pretrain.steps: expected int, got 'many'"):
        load_config("tiny", ["pretrain.steps=many"])


def test_override_without_equals_sign_explains_the_form():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["pretrain.steps"])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles: 1b, cluster, small, tiny"):
        load_config("huge")


# --- profile overlays: `size+cluster`, merged left to right


@pytest.fixture
def write_profile(tmp_path):
    """``write_profile("a", "pretrain: {steps: 10}")`` → the path of that profile YAML."""

    def write(name: str, text: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        return str(path)

    return write


def test_overlay_adds_its_keys_to_the_size_profile():
    cfg = load_config("small+cluster")
    assert (cfg.model.preset, cfg.storage.uri) == ("small", "s3://lmforge/")


def test_overlay_keeps_the_keys_it_does_not_name_in_a_shared_section():
    cfg = load_config("1b+cluster")
    assert (cfg.pretrain.launcher, cfg.pretrain.num_workers) == ("rayjob", 16)


def test_later_profile_wins_on_a_key_both_set(write_profile):
    a, b = write_profile("a", "pretrain: {steps: 400}"), write_profile("b", "pretrain: {steps: 500}")
    assert load_config(f"{a}+{b}").pretrain.steps == 500


def test_earlier_profile_loses_on_a_key_both_set(write_profile):
    a, b = write_profile("a", "pretrain: {steps: 400}"), write_profile("b", "pretrain: {steps: 500}")
    assert load_config(f"{b}+{a}").pretrain.steps == 400


def test_a_list_in_a_later_profile_replaces_the_whole_list(write_profile):
    gpu = write_profile("gpu", "cluster: {gpu_steps: [align]}")
    assert load_config(f"small+cluster+{gpu}").cluster.gpu_steps == ["align"]


def test_overrides_apply_after_every_profile():
    assert load_config("small+cluster", ["storage.uri=s3://other/"]).storage.uri == "s3://other/"


def test_run_profile_records_the_whole_profile_string(write_profile):
    extra = write_profile("extra", "pretrain: {log_every: 5}")
    assert load_config(f"small+cluster+{extra}").run.profile == "small+cluster+extra"


def test_missing_overlay_is_named_with_the_known_profiles():
    with pytest.raises(ConfigError, match=r"profile 'clustr' \(in 'small\+clustr'\) not found .*known profiles: 1b"):
        load_config("small+clustr")


def test_unknown_key_in_an_overlay_names_that_profile(write_profile):
    bad = write_profile("bad", "storage: {urii: s3://x/}")
    with pytest.raises(
        ConfigError, match=r"profile '.*bad.yaml' .*unknown key 'storage.urii' \(did you mean 'uri'\?\)"
    ):
        load_config(f"small+{bad}")


def test_wrong_type_in_an_overlay_names_that_profile(write_profile):
    bad = write_profile("bad", "cluster: {step_retries: often}")
    with pytest.raises(ConfigError, match=r"profile '.*bad.yaml' .*cluster.step_retries: expected int"):
        load_config(f"small+{bad}")


def test_empty_part_of_a_profile_string_is_refused():
    with pytest.raises(ConfigError, match=r"profile 'small\+' has an empty part"):
        load_config("small+")


@pytest.mark.parametrize("size", SIZES)
def test_size_profiles_hold_no_cluster_settings(size):
    import yaml

    from components.common.config import PROFILES_DIR

    raw = yaml.safe_load((PROFILES_DIR / f"{size}.yaml").read_text())
    assert CLUSTER_ONLY & set(raw) == set() and "launcher" not in raw.get("pretrain", {})


def test_inconsistent_values_name_the_fix():
    with pytest.raises(ConfigError, match="pretrain.warmup_steps: must be below pretrain.steps=5"):
        load_config("tiny", ["pretrain.steps=5"])


def test_wsd_phases_that_do_not_fit_name_the_keys():
    overrides = ["continual.schedule=wsd", "continual.steps=20", "continual.warmup_steps=15"]
    with pytest.raises(ConfigError, match=r"continual.decay_fraction: warmup \(continual.warmup_steps=15\) plus"):
        load_config("tiny", [*overrides, "continual.decay_fraction=0.5"])


def test_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="pretrain.schedule: must be one of cosine, wsd, constant, inverse_sqrt"):
        load_config("tiny", ["pretrain.schedule=step"])


def test_unknown_training_order_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="continual.order: must be 'random' or 'quality', got 'best'"):
        load_config("tiny", ["continual.order=best"])


def test_list_field_accepts_comma_separated_override():
    assert load_config("tiny", ["evaluate.tasks=a,b"]).evaluate.tasks == ["a", "b"]


def test_versioned_dict_leaves_out_log_interval():
    cfg = load_config("tiny")
    assert "log_every" not in versioned_dict(cfg.pretrain)
    assert "steps" in versioned_dict(cfg.pretrain)


def test_every_key_is_documented():
    undocumented = [key for key, _, _, doc in describe() if not doc.strip()]
    assert undocumented == []


def test_health_check_interval_must_be_positive_and_names_the_key():
    with pytest.raises(ConfigError, match=r"pretrain.health_check_interval_s: must be > 0 seconds"):
        load_config("tiny", ["pretrain.health_check_interval_s=0"])


@pytest.mark.parametrize(
    "override, key",
    [("register.lease_seconds=0", "register.lease_seconds"), ("continual.quiet_seconds=-1", "continual.quiet_seconds")],
)
def test_lease_and_trigger_timings_are_checked_naming_the_key(make_config, override, key):
    with pytest.raises(ConfigError, match=key):
        make_config(override)


def test_last_k_snapshots_that_do_not_fit_in_the_run_name_the_keys():
    with pytest.raises(ConfigError, match="continual.average_last_k: 5 snapshots every continual.average_every=50"):
        load_config("tiny", ["continual.average=uniform", "continual.average_every=50"])


def test_branch_steps_accept_a_comma_separated_override():
    cfg = load_config("tiny", ["continual.schedule=wsd", "continual.branch_at=60,90"])
    assert cfg.continual.branch_at == [60, 90]


def test_branch_outside_the_stable_phase_names_the_key_and_the_phase():
    with pytest.raises(
        ConfigError, match=r"continual.branch_at: steps \[130\] are not in the stable phase \[15, 120\)"
    ):
        load_config("tiny", ["continual.schedule=wsd", "continual.branch_at=60,130"])


def test_published_branch_that_is_not_a_branch_names_the_key_and_the_branches():
    with pytest.raises(
        ConfigError,
        match=r"continual.publish_branch=70 names no branch of this run; the branches that exist are "
        r"0 \(the final decay\), 60, 90 \(continual.branch_at=\[60, 90\]\)",
    ):
        load_config("tiny", ["continual.schedule=wsd", "continual.branch_at=60,90", "continual.publish_branch=70"])


def test_fitted_ema_decay_spans_the_decay_tail_of_the_run():
    from components.training.averaging import averaging_fields

    cfg = load_config("tiny", ["continual.average=ema"])  # 150 steps, decay_fraction 0.2: a 30-step window
    assert averaging_fields(cfg.continual)["ema_decay"] == pytest.approx(1 - 1 / 30)
    assert averaging_fields(load_config("tiny", ["continual.ema_decay=0.9"]).continual)["ema_decay"] == 0.9


def test_removed_register_metric_shows_the_gate_form():
    with pytest.raises(ConfigError, match=r"evaluate\.gate\.primary=heldout_perplexity"):
        load_config("tiny", ["register.metric=heldout_perplexity"])


def test_malformed_gate_guard_names_the_key_and_an_example():
    with pytest.raises(ConfigError, match=r"evaluate\.gate\.guards: 'acc less than 3'.*drop<="):
        load_config("tiny", ["evaluate.gate.guards=[acc less than 3]"])


def test_gate_guards_parse_from_a_comma_separated_override():
    cfg = load_config("tiny", ["evaluate.gate.guards=a_acc drop<=0.05, continual_forgetting <=0.5"])
    assert cfg.evaluate.gate.guards == ["a_acc drop<=0.05", "continual_forgetting <=0.5"]


def test_unknown_align_method_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(
        ConfigError, match=r"align\.method: unknown method 'ppo'.*none, dpo, online_dpo, expert_iteration"
    ):
        load_config("tiny", ["align.method=ppo"])


def test_dpo_without_preference_pairs_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"align\.preferences: align\.method=dpo needs preference pairs"):
        load_config("tiny", ["align.method=dpo"])


def test_unknown_online_judge_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"align\.judge: unknown judge 'human'.*verifier, reward_model"):
        load_config("tiny", ["align.judge=human"])


def test_reward_model_judge_without_preference_pairs_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"align\.preferences: align\.judge=reward_model trains"):
        load_config("tiny", ["align.method=online_dpo", "align.judge=reward_model"])


def test_sft_batch_that_does_not_split_across_the_workers_is_refused():
    with pytest.raises(ConfigError, match=r"align\.batch_size: the global batch 8 must split evenly .*num_workers=3"):
        load_config("tiny", ["align.num_workers=3"])


def test_evaluation_may_not_score_preference_pairs_alignment_trains_on():
    with pytest.raises(
        ConfigError, match=r"evaluate\.preference_heldout_fraction: must be in \(0, align\.pref_heldout"
    ):
        load_config("tiny", ["align.pref_heldout_fraction=0.1", "evaluate.preference_heldout_fraction=0.2"])


def test_arithmetic_phase_after_lora_is_refused_naming_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"align.arithmetic_steps: .*align.lora_r=0"):
        load_config("tiny", ["align.arithmetic_steps=10", "align.lora_r=4"])
