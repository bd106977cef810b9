"""`lmforge submit`: the retrain trigger's decisions tick by tick, on a local store (quiet period) and
end to end against the S3 server and a stand-in KFP API (kfp_api.py) driven through the real kfp.Client."""

import pytest

from components.common.errors import ConfigError, LmforgeError
from components.common.storage import open_store
from pipelines.compile import COMPILE_PROFILE
from pipelines.submit import COMPILED_DIR, TriggerState, compiled_defaults, decide_tick, submit

from .kfp_api import KfpAPI

BUCKET = "lmforge-trigger"


@pytest.fixture
def landing(tmp_path):
    store = open_store("file:///")
    store.write_text(f"file://{tmp_path}/raw/day1.txt", "first drop")
    return store, f"file://{tmp_path}/raw"


def tick(store, state, *, marker="", quiet=0.0, now=0.0, run_state="SUCCEEDED"):
    return decide_tick(
        store, state, marker=marker, quiet_seconds=quiet, run_state=lambda _: run_state, active_runs=list, now=now
    )


def test_new_data_waits_for_the_quiet_period_and_restarts_it_on_every_change(landing):
    store, raw = landing
    state = TriggerState(raw)
    assert tick(store, state, quiet=600, now=1000)[0] is None
    store.write_text(f"{raw}/day2.txt", "still uploading")
    assert tick(store, state, quiet=600, now=1500)[0] is None  # changed: the clock starts again
    assert tick(store, state, quiet=600, now=2000)[0] is None
    assert tick(store, state, quiet=600, now=2100)[0] is not None


def test_a_rewritten_file_is_new_data(landing):
    store, raw = landing
    state = TriggerState(raw)
    state.done = tick(store, state)[0]
    assert tick(store, state)[0] is None
    store.write_text(f"{raw}/day1.txt", "first drop, corrected")
    assert tick(store, state)[0] is not None


@pytest.fixture
def kfp_api():
    api = KfpAPI().start()
    yield api
    api.stop()


@pytest.fixture
def trigger(kfp_api, s3_server, request):
    """``trigger()`` runs one CronJob tick (`lmforge submit continual --if-new-data`) against the stand-ins."""
    store = open_store(f"s3://{BUCKET}", s3_endpoint=s3_server, s3_secure=False)
    raw = f"s3://{BUCKET}/raw/{request.node.name}"  # the S3 server (and so trigger state) is per session
    overrides = [f"storage.uri=s3://{BUCKET}/", f"storage.s3_endpoint={s3_server}", "storage.s3_secure=false"]

    def run(**kw) -> str:
        return submit("continual", host=kfp_api.url, profile=None, overrides=overrides, if_new_data=raw,
                      namespace="team-a", service_account="lmforge-pipeline", **kw)  # fmt: skip

    run.store, run.raw = store, raw
    return run


def test_trigger_ignores_an_upload_until_its_success_marker_lands(trigger, kfp_api):
    trigger.store.write_text(f"{trigger.raw}/part-0.txt", "half of the drop")
    assert "incomplete (no _SUCCESS marker yet)" in trigger()
    assert kfp_api.runs == {}
    trigger.store.write_text(f"{trigger.raw}/_SUCCESS", "")
    assert trigger().startswith("submitted continual")
    (run,) = kfp_api.runs.values()
    assert run["service_account"] == "lmforge-pipeline" and run["display_name"].startswith("lmforge-continual-")
    assert kfp_api.experiments[run["experiment_id"]]["namespace"] == "team-a"


def test_trigger_retries_the_data_of_a_failed_run_and_records_it_only_after_success(trigger, kfp_api):
    trigger.store.write_text(f"{trigger.raw}/part-0.txt", "a drop")
    trigger.store.write_text(f"{trigger.raw}/_SUCCESS", "")
    trigger()
    (first,) = kfp_api.runs
    assert "is PENDING; nothing submitted" in trigger()  # no overlap with our own run
    kfp_api.set_state(first, "FAILED")
    assert trigger().startswith("submitted continual")  # the next tick retries the same data
    (second,) = set(kfp_api.runs) - {first}
    kfp_api.set_state(second, "SUCCEEDED")
    assert "no new data" in trigger()
    assert len(kfp_api.runs) == 2


def test_trigger_does_not_start_a_run_while_another_of_the_same_pipeline_and_model_is_active(trigger, kfp_api):
    submit("continual", host=kfp_api.url, profile=None, overrides=[], namespace="team-a")  # started by hand
    (manual,) = kfp_api.runs
    kfp_api.set_state(manual, "RUNNING")
    trigger.store.write_text(f"{trigger.raw}/part-0.txt", "a drop")
    trigger.store.write_text(f"{trigger.raw}/_SUCCESS", "")
    assert f"run {manual} of this pipeline and model is still active" in trigger()
    kfp_api.set_state(manual, "SUCCEEDED")
    assert trigger().startswith("submitted continual")


def test_upload_registers_one_pipeline_version_per_package_however_often_it_runs(kfp_api):
    for _ in range(3):
        submit("continual", host=kfp_api.url, profile=None, overrides=[], upload_only=True)
    ((pid, pipeline),) = kfp_api.pipelines.items()
    assert pipeline["display_name"] == "lmforge-continual"
    names = [v["display_name"] for v in kfp_api.versions[pid]]
    assert len(names) == 2 and names[0] == "lmforge-continual" and names[1].startswith("lmforge-continual-")


def test_submit_without_endpoint_says_how_to_give_one():
    with pytest.raises(LmforgeError, match="--host URL or set KFP_HOST"):
        submit("lifecycle", host="", profile="tiny", overrides=[])


def test_submit_refuses_a_profile_that_cannot_run_on_a_cluster_before_contacting_it():
    # Nothing listens on port 9 of 127.0.0.1: reaching the client would fail differently.
    with pytest.raises(ConfigError, match=r"profile 'tiny' cannot run on the cluster .*storage\.uri"):
        submit("lifecycle", host="http://127.0.0.1:9", profile="tiny", overrides=[])


def test_compiled_defaults_are_the_profile_the_pipeline_was_compiled_for():
    assert compiled_defaults(COMPILED_DIR / "continual.yaml") == {"profile": COMPILE_PROFILE, "overrides": []}


def test_submit_refuses_a_model_size_the_pipeline_was_not_compiled_for():
    with pytest.raises(LmforgeError, match=r"compiled for 'small\+cluster' \(model.preset=small\).* is 1b"):
        submit("continual", host="http://127.0.0.1:9", profile="1b+cluster", overrides=[])


def test_a_pending_run_the_kfp_api_no_longer_knows_counts_as_failed_and_its_data_is_retried(landing):
    store, raw = landing
    state = TriggerState(raw, pending_run="deleted-run", pending="f" * 64)
    fingerprint, _ = tick(store, state, run_state="NOT_FOUND")
    assert fingerprint is not None and state.pending_run is None and state.done is None
