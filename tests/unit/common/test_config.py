"""The config tree: profiles, overrides, validation messages and what enters the content hash."""

import pytest

from components.common.config import describe, load_config, versioned_dict
from components.common.errors import ConfigError


@pytest.mark.parametrize("profile", ["tiny", "small", "1b"])
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
    with pytest.raises(ConfigError, match="known profiles: 1b, small, tiny"):
        load_config("huge")


def test_inconsistent_values_name_the_fix():
    with pytest.raises(ConfigError, match="pretrain.warmup_steps: must be below pretrain.steps=5"):
        load_config("tiny", ["pretrain.steps=5"])


def test_list_field_accepts_comma_separated_override():
    assert load_config("tiny", ["evaluate.tasks=a,b"]).evaluate.tasks == ["a", "b"]


def test_versioned_dict_leaves_out_log_interval():
    cfg = load_config("tiny")
    assert "log_every" not in versioned_dict(cfg.pretrain)
    assert "steps" in versioned_dict(cfg.pretrain)


def test_every_key_is_documented():
    undocumented = [key for key, _, _, doc in describe() if not doc.strip()]
    assert undocumented == []
