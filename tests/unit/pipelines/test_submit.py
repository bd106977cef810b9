"""The retrain trigger's new-data check: submit once per data drop, not once per CronJob tick."""

import pytest

from components.common.errors import ConfigError, LmforgeError
from components.common.storage import open_store
from pipelines.compile import COMPILE_PROFILE
from pipelines.submit import COMPILED_DIR, compiled_defaults, new_data_since_last_submit, record_submission, submit


@pytest.fixture
def landing(tmp_path):
    store = open_store("file:///")
    root = f"file://{tmp_path}/store"
    store.write_text(f"file://{tmp_path}/raw/day1.txt", "first drop")
    return store, root, f"file://{tmp_path}/raw"


def test_first_look_counts_as_new_data(landing):
    store, root, raw = landing
    assert new_data_since_last_submit(store, root, raw)[0]


def test_unchanged_data_after_a_submission_is_not_new(landing):
    store, root, raw = landing
    _, fingerprint, state = new_data_since_last_submit(store, root, raw)
    record_submission(store, state, raw, fingerprint, "run-1")
    assert not new_data_since_last_submit(store, root, raw)[0]


def test_a_new_file_is_new_data(landing):
    store, root, raw = landing
    _, fingerprint, state = new_data_since_last_submit(store, root, raw)
    record_submission(store, state, raw, fingerprint, "run-1")
    store.write_text(f"{raw}/day2.txt", "second drop")
    assert new_data_since_last_submit(store, root, raw)[0]


def test_submit_without_endpoint_says_how_to_give_one():
    with pytest.raises(LmforgeError, match="--host URL or set KFP_HOST"):
        submit("lifecycle", host="", profile="tiny", overrides=[])


def test_a_rewritten_file_is_new_data(landing):
    store, root, raw = landing
    _, fingerprint, state = new_data_since_last_submit(store, root, raw)
    record_submission(store, state, raw, fingerprint, "run-1")
    store.write_text(f"{raw}/day1.txt", "first drop, corrected")
    assert new_data_since_last_submit(store, root, raw)[0]


def test_submit_refuses_a_profile_that_cannot_run_on_a_cluster_before_contacting_it():
    # Nothing listens on port 9 of 127.0.0.1: reaching the client would fail differently.
    with pytest.raises(ConfigError, match=r"profile 'tiny' cannot run on the cluster .*storage\.uri"):
        submit("lifecycle", host="http://127.0.0.1:9", profile="tiny", overrides=[])


def test_compiled_defaults_are_the_profile_the_pipeline_was_compiled_for():
    assert compiled_defaults(COMPILED_DIR / "continual.yaml") == {"profile": COMPILE_PROFILE, "overrides": []}


def test_submit_refuses_a_model_size_the_pipeline_was_not_compiled_for():
    with pytest.raises(LmforgeError, match=r"compiled for 'small\+cluster' \(model.preset=small\).* is 1b"):
        submit("continual", host="http://127.0.0.1:9", profile="1b+cluster", overrides=[])
