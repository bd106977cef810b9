"""The committed IR YAML is what the pipeline code compiles to today, and runs on a cluster as compiled:
the project images, GPUs where the config says, no cache where registry state is read, retries where
a step is idempotent, credentials from the Secret, and a default profile that is not local."""

import pytest

from components.common.config import load_config
from components.common.images import CUDA_IMAGE, IMAGE
from components.common.runtime import cluster_problems
from pipelines.compile import COMPILE_PROFILE, check_compiled
from pipelines.graph import DRIVER_MEMORY, RETRIED, UNCACHED
from tests.unit.pipelines.conftest import COMPILED, PIPELINE_NAMES, read_compiled, steps_of

DEFAULT = load_config(COMPILE_PROFILE)
GPU_STEPS = set(DEFAULT.cluster.gpu_steps)
CREDENTIAL_WORDS = ("AWS_", "SECRET", "PASSWORD", "TOKEN")


def test_committed_pipelines_are_not_stale():
    assert check_compiled(COMPILED) == [], "run `lmforge compile` and commit pipelines/compiled/"


def test_default_profile_parameter_is_the_compile_profile(committed):
    spec, _ = committed
    assert spec["root"]["inputDefinitions"]["parameters"]["profile"]["defaultValue"] == COMPILE_PROFILE


def test_default_profile_is_not_tiny():
    assert "tiny" not in COMPILE_PROFILE.split("+")


def test_default_profile_runs_on_a_cluster():
    assert cluster_problems(DEFAULT) == []


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_no_file_store_or_sqlite_anywhere_in_the_compiled_yaml(name):
    text = (COMPILED / f"{name}.yaml").read_text().lower()
    assert "file://" not in text and "sqlite" not in text


def test_cpu_steps_run_in_the_project_image(committed):
    _, steps = committed
    assert {s.container["image"] for s in steps if s.step not in GPU_STEPS} == {IMAGE}


def test_gpu_steps_run_in_the_cuda_image(committed):
    _, steps = committed
    assert {s.step: s.container["image"] for s in steps if s.step in GPU_STEPS} == dict.fromkeys(GPU_STEPS, CUDA_IMAGE)


def test_gpus_are_requested_by_gpu_steps_only(committed):
    _, steps = committed
    accelerated = {s.step: s.container["resources"].get("accelerator", {}) for s in steps}
    assert {step for step, a in accelerated.items() if a} == GPU_STEPS
    for step in GPU_STEPS:
        assert accelerated[step]["resourceType"] == DEFAULT.cluster.gpu_resource
        assert accelerated[step]["resourceCount"] == str(DEFAULT.cluster.gpus_per_worker_pod)


def test_gpu_steps_tolerate_the_gpu_taint_and_no_other_step_does(committed):
    _, steps = committed
    tolerating = {s.step for s in steps if s.pod.get("tolerations")}
    assert tolerating == GPU_STEPS
    assert all(s.pod["tolerations"] == DEFAULT.cluster.tolerations for s in steps if s.step in GPU_STEPS)


def test_resolve_champion_is_never_served_from_the_cache():
    (champion,) = [s for s in steps_of(*read_compiled(COMPILED / "continual.yaml")) if s.step == "resolve_champion"]
    assert not champion.spec["cachingOptions"].get("enableCache", False)


def test_cache_is_off_exactly_on_steps_that_read_registry_or_tracking_state(committed):
    _, steps = committed
    uncached = {s.step for s in steps if not s.spec["cachingOptions"].get("enableCache", False)}
    assert uncached == UNCACHED & {s.step for s in steps}


def test_idempotent_steps_retry_and_the_others_do_not(committed):
    _, steps = committed
    retried = {s.step: s.spec["retryPolicy"]["maxRetryCount"] for s in steps if "retryPolicy" in s.spec}
    assert retried == dict.fromkeys(RETRIED & {s.step for s in steps}, DEFAULT.cluster.step_retries)


def test_lineage_and_registration_are_never_retried(committed):
    _, steps = committed
    assert not [s.step for s in steps if s.step in ("start_lineage", "register") and "retryPolicy" in s.spec]


def test_every_step_gets_the_s3_keys_from_the_secret(committed):
    _, steps = committed
    for s in steps:
        (secret,) = s.pod["secretAsEnv"]
        assert secret["secretName"] == DEFAULT.cluster.s3_secret
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_no_step_carries_a_credential_as_a_plain_value(committed):
    _, steps = committed
    plain = [
        (s.task, e["name"])
        for s in steps
        for e in s.container.get("env", [])
        if any(w in e["name"].upper() for w in CREDENTIAL_WORDS)
    ]
    assert plain == []


def test_every_step_runs_non_root(committed):
    _, steps = committed
    assert all(s.pod["securityContext"]["runAsNonRoot"] is True for s in steps)


def test_training_steps_that_drive_a_rayjob_get_driver_memory_not_model_memory(committed):
    _, steps = committed
    training = {s.container["resources"]["resourceMemoryRequest"] for s in steps if s.step in ("pretrain", "continual")}
    assert DEFAULT.pretrain.launcher == "rayjob" and training == {DRIVER_MEMORY}


def test_retries_stay_possible_for_as_long_as_a_training_step_runs(committed):
    _, steps = committed
    windows = {s.spec["retryPolicy"]["backoffMaxDuration"] for s in steps if "retryPolicy" in s.spec}
    assert (
        windows == {f"{DEFAULT.cluster.step_retry_window_hours * 3600}s"}
        and DEFAULT.cluster.step_retry_window_hours >= 24
    )
