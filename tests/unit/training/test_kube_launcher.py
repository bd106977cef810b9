"""The RayJob launcher against a stand-in Kubernetes API (kube_api.py) through the real `kubernetes`
client: create, follow and delete; failures in one line; re-attach on a step's retry; a create race;
watch and log streams that break; manifests the CRD schema refuses. The tests play KubeRay's part."""

from __future__ import annotations

import pytest

from components.common.errors import ConfigError, TrainingJobError
from components.training.kube_launcher import FAILED, SUCCEEDED, verdict

from .conftest import NAMESPACE as NS

RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
SUCCESS = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
APP_FAILED = {
    "jobDeploymentStatus": "Failed",
    "jobStatus": "FAILED",
    "reason": "AppFailed",
    "message": "Job entrypoint command failed with exit code 1",
}


def driver_lines(step_log: list[str]) -> list[str]:
    """The step log without the launcher's own status lines."""
    return [line for line in step_log if not line.startswith("[RayJob ")]


def deleted(kube, name: str) -> bool:
    kube.wait_until(lambda: not kube.exists(NS, name))
    return ("delete", name) in kube.journal


def test_creates_the_rayjob_streams_the_driver_log_and_deletes_it_after_success(
    kube, rayjob, launch, operator, step_log
):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, jobDeploymentStatus="Initializing")
        head = kube.start_head(NS, name)
        kube.write_log(NS, head, "raylet started")  # a head pod's log is not the driver's
        kube.set_status(NS, name, jobDeploymentStatus="Running", jobStatus="PENDING")
        submitter = kube.start_submitter(NS, name)
        kube.write_log(NS, submitter, "step 1 loss 5.12", "step 2 loss 4.70")
        kube.set_status(NS, name, jobStatus="RUNNING")
        kube.write_log(NS, submitter, "", "training finished")
        kube.finish_pod(NS, submitter)
        kube.set_status(NS, name, **SUCCESS)

    operator(kuberay)
    outcome = launch(manifest)

    assert (outcome.name, outcome.namespace, outcome.job_status, outcome.deployment_status) == (
        name, NS, "SUCCEEDED", "Complete",
    )  # fmt: skip
    assert (outcome.reattached, outcome.retries) == (False, 0)
    assert driver_lines(step_log) == ["step 1 loss 5.12", "step 2 loss 4.70", "", "training finished"]
    assert f"[RayJob {NS}/{name}] deployment Running, job RUNNING" in step_log
    assert deleted(kube, name)
    assert kube.journal == [("create", name), ("delete", name), ("gone", name)]


def test_deletion_is_foreground_so_the_cluster_and_submitter_job_go_first(kube, rayjob, launch, operator):
    manifest = rayjob()
    name = manifest["metadata"]["name"]
    operator(lambda: (kube.wait_until(lambda: kube.exists(NS, name)), kube.set_status(NS, name, **SUCCESS)))
    launch(manifest)
    assert kube.deletions == [(name, "Foreground")]


def test_a_failed_job_raises_one_line_with_kuberays_reason_and_the_last_driver_line(kube, rayjob, launch, operator):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, **RUNNING)
        submitter = kube.start_submitter(NS, name)
        kube.write_log(
            NS,
            submitter,
            "step 3 loss nan",
            "Traceback (most recent call last):",
            "RuntimeError: loss is NaN at step 3",
        )
        kube.finish_pod(NS, submitter, "Failed")
        kube.set_status(NS, name, **APP_FAILED)

    operator(kuberay)
    with pytest.raises(TrainingJobError) as failure:
        launch(manifest)

    assert str(failure.value) == (
        f"RayJob {NS}/{name} failed (AppFailed, job FAILED): Job entrypoint command failed with exit code 1; "
        "last driver line: RuntimeError: loss is NaN at step 3"
    )
    assert deleted(kube, name)


def test_a_passed_deadline_is_the_reason_even_when_no_driver_ever_ran(kube, rayjob, launch, operator):
    manifest = rayjob("cluster.job_deadline_seconds=60")
    name = manifest["metadata"]["name"]
    message = (
        "The RayJob has passed the activeDeadlineSeconds.\nStartTime: 2026-12-02T05:00:00Z. ActiveDeadlineSeconds: 60"
    )

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, jobDeploymentStatus="Failed", reason="DeadlineExceeded", message=message)

    operator(kuberay)
    with pytest.raises(TrainingJobError, match=r"failed \(DeadlineExceeded\): The RayJob has passed") as failure:
        launch(manifest)
    assert "\n" not in str(failure.value)
    assert deleted(kube, name)


def test_a_retry_follows_the_running_rayjob_instead_of_starting_another(kube, rayjob, launch, operator, step_log):
    manifest = rayjob()
    name = manifest["metadata"]["name"]
    kube.put_rayjob(manifest, status=RUNNING)  # the first attempt's step pod died; its RayJob runs on
    submitter = kube.start_submitter(NS, name)
    kube.write_log(NS, submitter, "step 1 loss 5.12")

    def kuberay():
        kube.wait_until(lambda: kube.watching > 0)
        kube.write_log(NS, submitter, "step 2 loss 4.70")
        kube.finish_pod(NS, submitter)
        kube.set_status(NS, name, **SUCCESS)

    operator(kuberay)
    outcome = launch(manifest)

    assert (outcome.reattached, outcome.retries, outcome.job_status) == (True, 0, "SUCCEEDED")
    assert ("create", name) not in kube.journal
    assert driver_lines(step_log) == ["step 1 loss 5.12", "step 2 loss 4.70"]
    assert deleted(kube, name)


def test_a_retry_reuses_a_succeeded_rayjob_at_once(kube, rayjob, launch):
    manifest = rayjob()
    name = manifest["metadata"]["name"]
    kube.put_rayjob(manifest, status=SUCCESS)

    outcome = launch(manifest)

    assert (outcome.reattached, outcome.retries, outcome.job_status) == (True, 0, "SUCCEEDED")
    assert deleted(kube, name)
    assert kube.journal == [("delete", name), ("gone", name)]


def test_a_retry_replaces_a_failed_rayjob_once_it_is_gone_and_counts_a_retry(kube, rayjob, launch, operator, step_log):
    manifest = rayjob()
    name = manifest["metadata"]["name"]
    kube.put_rayjob(manifest, status=APP_FAILED)

    def kuberay():
        kube.wait_until(lambda: ("create", name) in kube.journal)
        kube.set_status(NS, name, **RUNNING)
        kube.set_status(NS, name, **SUCCESS)

    operator(kuberay)
    outcome = launch(manifest)

    assert (outcome.reattached, outcome.retries, outcome.job_status) == (False, 1, "SUCCEEDED")
    # Created only after the old one was gone (with its cluster and submitter Job: foreground).
    assert kube.journal[:3] == [("delete", name), ("gone", name), ("create", name)]
    assert kube.deletions[0] == (name, "Foreground")
    assert (
        f"[RayJob {NS}/{name}] an earlier attempt failed (AppFailed, job FAILED); deleting it to start again"
        in step_log
    )
    assert deleted(kube, name)


def test_a_create_race_lost_with_409_follows_the_rayjob_the_other_attempt_created(kube, rayjob, launch, operator):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def concurrent_attempt(body):  # another attempt creates it between our look and our create
        kube.before_create = None
        kube.put_rayjob(manifest, status=RUNNING)

    kube.before_create = concurrent_attempt
    operator(lambda: (kube.wait_until(lambda: kube.watching > 0), kube.set_status(NS, name, **SUCCESS)))
    outcome = launch(manifest)

    assert (outcome.reattached, outcome.retries, outcome.job_status) == (True, 0, "SUCCEEDED")
    assert kube.journal[0] == ("conflict", name)
    assert ("create", name) not in kube.journal


def test_a_compacted_watch_version_is_recovered_by_listing_again(kube, rayjob, launch, operator):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, **RUNNING)
        kube.wait_until(lambda: kube.watching > 0)
        with kube.paused():  # the launcher misses the verdict, then finds its version compacted away
            kube.set_status(NS, name, **SUCCESS)
            kube.compact()

    operator(kuberay)
    outcome = launch(manifest)

    assert outcome.job_status == "SUCCEEDED"
    assert kube.gone_served >= 1


def test_a_broken_log_stream_resumes_without_losing_or_repeating_lines(kube, rayjob, launch, operator, step_log):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, **RUNNING)
        submitter = kube.start_submitter(NS, name)
        kube.write_log(NS, submitter, "step 1", "step 2")
        kube.wait_until(lambda: len(driver_lines(step_log)) == 2)
        kube.break_streams()
        kube.wait_until(lambda: kube.log_requests[submitter] == 2)  # the launcher resumed
        kube.write_log(NS, submitter, "step 3")
        kube.finish_pod(NS, submitter)
        kube.set_status(NS, name, **SUCCESS)

    operator(kuberay)
    launch(manifest)

    assert driver_lines(step_log) == ["step 1", "step 2", "step 3"]


def test_each_submitter_attempt_is_streamed_in_order(kube, rayjob, launch, operator, step_log):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, **RUNNING)
        first = kube.start_submitter(NS, name)
        kube.write_log(NS, first, "submitting (attempt 1)", "connection refused")
        kube.finish_pod(NS, first, "Failed")
        second = kube.start_submitter(NS, name, phase="Pending")  # the Job's next pod, not started yet
        kube.set_pod_phase(NS, second, "Running")
        kube.write_log(NS, second, "job already submitted; following", "step 1")
        kube.finish_pod(NS, second)
        kube.set_status(NS, name, **SUCCESS)

    operator(kuberay)
    launch(manifest)

    assert driver_lines(step_log) == [
        "submitting (attempt 1)",
        "connection refused",
        "job already submitted; following",
        "step 1",
    ]


def test_a_briefly_unavailable_api_server_is_retried(kube, rayjob, launch, operator, step_log):
    manifest = rayjob()
    name = manifest["metadata"]["name"]
    kube.unavailable = 2  # the first look and its retry get 503
    operator(lambda: (kube.wait_until(lambda: kube.exists(NS, name)), kube.set_status(NS, name, **SUCCESS)))
    assert launch(manifest).job_status == "SUCCEEDED"
    assert (
        f"[RayJob {NS}/{name}] list: 503 Service Unavailable: the server is currently unable to handle the request; trying again"
        in step_log
    )


def test_an_unreachable_api_server_leaves_the_rayjob_for_the_retry_to_reattach(kube, rayjob, launch, operator):
    manifest = rayjob()
    name = manifest["metadata"]["name"]

    def kuberay():
        kube.wait_until(lambda: kube.exists(NS, name))
        kube.set_status(NS, name, **RUNNING)
        kube.wait_until(lambda: kube.watching > 0)
        kube.unavailable = 100
        kube.break_streams()

    operator(kuberay)
    with pytest.raises(
        TrainingJobError, match=r"failed 3 times, last: 503 .*so a retry of this step re-attaches to it$"
    ):
        launch(manifest)
    assert kube.exists(NS, name) and ("delete", name) not in kube.journal


def test_running_past_the_timeout_deletes_the_rayjob_and_says_so(kube, rayjob, launch, operator):
    manifest = rayjob()
    name = manifest["metadata"]["name"]
    operator(lambda: (kube.wait_until(lambda: kube.exists(NS, name)), kube.set_status(NS, name, **RUNNING)))
    with pytest.raises(
        TrainingJobError, match=rf"^RayJob {NS}/{name} did not finish within the launcher's timeout; deleted it$"
    ):
        launch(manifest, timeout_seconds=0.2)
    assert deleted(kube, name)


def test_an_empty_namespace_means_the_step_pods_own(kube, rayjob, launch, operator, tmp_path):
    (tmp_path / "namespace").write_text(NS + "\n")
    manifest = rayjob(namespace="")
    name = manifest["metadata"]["name"]
    operator(lambda: (kube.wait_until(lambda: kube.exists(NS, name)), kube.set_status(NS, name, **SUCCESS)))
    assert launch(manifest, namespace_file=str(tmp_path / "namespace")).namespace == NS


def test_an_empty_namespace_outside_a_pod_names_the_key_to_set(rayjob, launch, tmp_path):
    with pytest.raises(ConfigError, match=r"^cluster\.namespace is ''.*set cluster\.namespace$"):
        launch(rayjob(namespace=""), namespace_file=str(tmp_path / "absent"))


def test_a_manifest_the_crd_schema_refuses_is_a_one_line_error_naming_the_field(kube, rayjob, launch):
    manifest = rayjob()
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(
        TrainingJobError, match=r"create refused: 422 .*workerGroupSpecs\[0\]\.replicas: 'two' is not of type 'integer'"
    ):
        launch(manifest)
    assert not kube.exists(NS, manifest["metadata"]["name"])


def test_a_misspelled_field_is_refused_instead_of_dropped(kube, rayjob, launch):
    manifest = rayjob()
    manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}
    with pytest.raises(
        TrainingJobError,
        match=r'create refused: 400 .*unknown field "spec\.rayClusterSpec\.headGroupSpec\.rayStartParam"',
    ):
        launch(manifest)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, None),
        ({"jobDeploymentStatus": "Initializing"}, None),
        (RUNNING, None),
        ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}, None),
        (SUCCESS, SUCCEEDED),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, FAILED),
        (APP_FAILED, FAILED),
        ({"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed"}, FAILED),
    ],
)
def test_verdict_is_final_only_when_kuberay_says_complete_or_failed(status, expected):
    assert verdict({"status": status}) == expected


def test_log_timestamps_compare_as_times_although_the_kubelet_drops_trailing_zeros():
    from components.training.kube_logs import _split_stamp

    whole, half = _split_stamp("2026-12-02T05:00:05Z a")[0], _split_stamp("2026-12-02T05:00:05.5Z b")[0]
    tenth, ninety = _split_stamp("2026-12-02T05:00:05.1Z c")[0], _split_stamp("2026-12-02T05:00:05.09Z d")[0]
    assert whole < half and ninety < tenth  # as text, "05.5Z" sorts before "05Z"
    assert _split_stamp("no stamp here") == (None, "no stamp here")
    assert _split_stamp("2026-12-02T05:00:05.123456789Z ") == (("2026-12-02T05:00:05", 123456789), "")
