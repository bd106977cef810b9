"""The RayJob builder: names KubeRay accepts, objects its CRDs accept, pods the house policies accept,
and the fields each config key must reach (workers, GPUs, placement, shm, S3 and token Secrets, host labels)."""

from __future__ import annotations

import json
import re

import pytest
from packaging.requirements import Requirement

from components.common.errors import ConfigError
from components.training.rayjob import (
    HOST_LABEL,
    MAX_NAME_LENGTH,
    RAYJOB_LABEL,
    ROLE_LABEL,
    TOKEN_SECRET_KEY,
    rayjob_name,
    step_rayjob_name,
)
from components.training.spec import TrainSpec

from ..deploy.k8s_checks import (
    crd_available,
    crd_problems,
    pod_security_problems,
    pod_templates,
    pyproject,
    schema_problems,
    secret_object_problems,
)

GPU = (
    "pretrain.use_gpu=true",
    "pretrain.num_workers=5",
    "cluster.gpus_per_worker_pod=2",
    "cluster.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    "cluster.node_selector={nvidia.com/gpu.present: true}",
)
TOKEN = ("cluster.ray_token_secret=lmforge-ray-token",)
VARIANTS = {"cpu": (), "gpu": GPU, "cpu-token": TOKEN, "gpu-token": GPU + TOKEN}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
needs_crds = pytest.mark.skipif(
    not crd_available("ray.io/v1", "RayJob"), reason="KubeRay CRDs not found at ../shared/crds (see its README)"
)


def worker_group(job: dict) -> dict:
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group


def ray_containers(job: dict) -> dict[str, dict]:
    """head / worker / submitter → its one container."""
    cluster = job["spec"]["rayClusterSpec"]
    return {
        "head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
        "worker": worker_group(job)["template"]["spec"]["containers"][0],
        "submitter": job["spec"]["submitterPodTemplate"]["spec"]["containers"][0],
    }


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def expand_env(env: list[dict], node_name: str) -> dict[str, str]:
    """The environment as the kubelet builds it: downward-API fields filled in, ``$(VAR)`` expanded from
    variables defined *earlier* in the list (later or unknown references stay as written)."""
    out: dict[str, str] = {}
    for e in env:
        if (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            out[e["name"]] = node_name
        elif "value" in e:
            out[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m[1], m[0]), e["value"])
    return out


# --- the name ----------------------------------------------------------------------------------


def test_name_is_the_same_for_every_attempt_and_differs_between_steps():
    assert rayjob_name("pretrain", "0f1e2d3c4b5a6978") == rayjob_name("pretrain", "0f1e2d3c4b5a6978")
    assert rayjob_name("pretrain", "0f1e2d3c4b5a6978") != rayjob_name("pretrain", "0f1e2d3c4b5a6979")
    assert rayjob_name("pretrain", "0f1e2d3c4b5a6978") != rayjob_name("continual", "0f1e2d3c4b5a6978")


def _wsd_spec(make_config, output_uri: str) -> TrainSpec:
    return TrainSpec(
        cfg=make_config(),
        stage="continual",
        dataset_uri="s3://lmforge/datasets/d0",
        output_uri=output_uri,
        checkpoint_uri=output_uri.replace("/models/", "/scratch/"),
        steps=100,
        batch_size=4,
        lr=1e-3,
        warmup_steps=10,
        min_lr_ratio=0.1,
        schedule="wsd",
        decay_steps=20,
    )


def test_every_attempt_of_one_step_gets_the_same_rayjob(make_config):
    first, retry = (_wsd_spec(make_config, "s3://lmforge/models/0f1e2d3c4b5a6978") for _ in range(2))
    assert step_rayjob_name(first.stage, first.output_uri) == step_rayjob_name(retry.stage, retry.output_uri)
    branch, branch_retry = first.decay_branch(50), retry.decay_branch(50)
    assert step_rayjob_name(branch.stage, branch.output_uri) == step_rayjob_name(
        branch_retry.stage, branch_retry.output_uri
    )


def test_two_steps_of_one_stage_get_different_rayjobs(make_config):
    # Two continual arms of the experiment: same stage, different outputs.
    arm_a, arm_b = (
        _wsd_spec(make_config, f"s3://lmforge/models/{d}") for d in ("0f1e2d3c4b5a6978", "9a8b7c6d5e4f3021")
    )
    assert step_rayjob_name(arm_a.stage, arm_a.output_uri) != step_rayjob_name(arm_b.stage, arm_b.output_uri)
    # Their decay branches at the same step: output URIs that end alike (branches/step-00000050).
    branch_a, branch_b = arm_a.decay_branch(50), arm_b.decay_branch(50)
    assert branch_a.output_uri.rsplit("/", 1)[-1] == branch_b.output_uri.rsplit("/", 1)[-1]
    assert step_rayjob_name(branch_a.stage, branch_a.output_uri) != step_rayjob_name(
        branch_b.stage, branch_b.output_uri
    )
    # A run and its own branch.
    assert step_rayjob_name(arm_a.stage, arm_a.output_uri) != step_rayjob_name(branch_a.stage, branch_a.output_uri)


def test_step_name_is_a_dns_1035_label_kuberay_accepts(make_config):
    branch = _wsd_spec(make_config, "s3://lmforge/models/0f1e2d3c4b5a6978").decay_branch(50)
    name = step_rayjob_name(branch.stage, branch.output_uri)
    assert DNS_1035.match(name) and len(name) <= MAX_NAME_LENGTH, name


@pytest.mark.parametrize(
    ("stage", "digest"),
    [
        ("pretrain", "0f1e2d3c4b5a6978"),
        ("Continual_Pretraining.Stage-Two" * 3, "ABCDEF0123456789FFFF"),
        ("", "sha256:9"),
    ],
)
def test_name_is_a_dns_1035_label_kuberay_accepts(stage, digest):
    name = rayjob_name(stage, digest)
    assert DNS_1035.match(name) and len(name) <= MAX_NAME_LENGTH == 47, name


def test_name_keeps_the_whole_digest_when_the_stage_must_be_shortened():
    assert rayjob_name("a-very-long-stage-name-that-goes-on-and-on", "0f1e2d3c4b5a6978").endswith("-0f1e2d3c4b5a6978")


def test_a_digest_without_letters_or_digits_is_refused():
    with pytest.raises(ValueError, match="digest"):
        rayjob_name("pretrain", "--")


# --- validity ----------------------------------------------------------------------------------


@needs_crds
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_validates_against_the_rayjob_and_raycluster_crds(rayjob, variant):
    job = rayjob(*VARIANTS[variant])
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "c"},
        "spec": job["spec"]["rayClusterSpec"],
    }
    assert crd_problems(variant, job) + crd_problems(variant, cluster) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_passes_the_pod_and_secret_policies(rayjob, variant):
    job = rayjob(*VARIANTS[variant])
    problems = [p for at, t in pod_templates(job) for p in pod_security_problems(at, t["spec"])]
    assert problems + secret_object_problems(variant, job) == []
    assert len(list(pod_templates(job))) == 3  # head, workers, submitter: all were checked


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_template_validates_against_the_kubernetes_schemas(rayjob, variant):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed")
    assert schema_problems(variant, rayjob(*VARIANTS[variant])) == []


# --- lifecycle ---------------------------------------------------------------------------------


def test_lifecycle_is_one_k8s_job_submission_without_kuberay_retries(rayjob):
    spec = rayjob("cluster.job_ttl_seconds=120")["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["backoffLimit"] == 0
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 120
    assert spec["entrypoint"] == "python -m components.training.job --spec s3://lmforge/jobs/spec.json"
    assert "activeDeadlineSeconds" not in spec


def test_a_job_deadline_becomes_active_deadline_seconds(rayjob):
    assert rayjob("cluster.job_deadline_seconds=86400")["spec"]["activeDeadlineSeconds"] == 86400


def test_ray_version_is_the_installed_ray_which_pyproject_allows(rayjob):
    from importlib.metadata import version

    ray = next(Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "ray")
    ray_version = rayjob()["spec"]["rayClusterSpec"]["rayVersion"]
    assert ray_version == version("ray") and ray_version in ray.specifier


# --- head and workers --------------------------------------------------------------------------


def test_head_takes_no_training_work_and_serves_the_job_api_to_the_submitter(rayjob):
    head = rayjob(*GPU)["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    container = head["template"]["spec"]["containers"][0]
    assert {"name": "dashboard", "containerPort": 8265} in container["ports"]
    assert container["image"] == "ghcr.io/lmforge/lmforge:test-cpu"
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert "tolerations" not in head["template"]["spec"] and "nodeSelector" not in head["template"]["spec"]


def test_head_gcs_declares_a_lost_node_dead_within_seconds(rayjob):
    containers = ray_containers(rayjob())
    head, worker = env_of(containers["head"]), env_of(containers["worker"])
    assert head["RAY_health_check_period_ms"]["value"] == "1000"
    assert head["RAY_health_check_timeout_ms"]["value"] == "1000", "a machine gone answers no check: bound each"
    assert head["RAY_health_check_failure_threshold"]["value"] == "3"
    assert "RAY_health_check_period_ms" not in worker, "the GCS runs on the head"
    assert "RAY_health_check_period_ms" not in env_of(ray_containers(rayjob("cluster.node_health_check_ms=0"))["head"])


def test_gpu_workers_fill_whole_pods_of_gpus_on_tolerated_selected_nodes(rayjob):
    group = worker_group(rayjob(*GPU))  # 5 workers, 2 GPUs per pod → 3 pods
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == ("gpu", 3, 3, 3)
    pod = group["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "2"
    assert pod["containers"][0]["image"] == "ghcr.io/lmforge/lmforge:test-cuda"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}  # a string, as Kubernetes requires


def test_cpu_workers_are_one_pod_per_worker_without_gpu_placement(rayjob):
    group = worker_group(rayjob("pretrain.num_workers=3", "cluster.worker_cpu=4", "cluster.worker_memory=16Gi"))
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == ("cpu", 3, 3, 3)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert pod["containers"][0]["image"] == "ghcr.io/lmforge/lmforge:test-cpu"
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_standby_nodes_add_idle_worker_pods_of_the_same_kind(rayjob):
    assert worker_group(rayjob(*GPU, "cluster.standby_nodes=1"))["replicas"] == 4  # 3 pods of 2 GPUs + 1
    assert worker_group(rayjob("pretrain.num_workers=3", "cluster.standby_nodes=2"))["replicas"] == 5


def test_gpu_workers_without_a_gpu_image_name_the_key(make_config):
    from components.training.rayjob import build_rayjob

    with pytest.raises(ConfigError, match=r"^cluster\.gpu_image: "):
        build_rayjob(make_config(*GPU), name="lmforge-x-1", namespace="ns", entrypoint="x", image="cpu", gpu_image="")


# --- every pod ---------------------------------------------------------------------------------


def test_ray_pods_get_a_memory_backed_shm_a_writable_tmp_and_no_api_token(rayjob):
    job = rayjob("cluster.shm_size=24Gi")
    for name, (at, template) in zip(("head", "worker"), pod_templates(job), strict=False):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "24Gi"}, name
        assert volumes[mounts["/tmp"]]["emptyDir"] == {}, name
        assert spec["automountServiceAccountToken"] is False, at
        assert spec["securityContext"]["runAsUser"] == 1000, at


def test_submitter_runs_non_root_without_an_api_token_or_s3_keys(rayjob):
    template = rayjob()["spec"]["submitterPodTemplate"]
    spec = template["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert "AWS_SECRET_ACCESS_KEY" not in env_of(spec["containers"][0])
    assert spec["containers"][0]["name"] == "ray-job-submitter"  # the container whose log the launcher reads


def test_s3_keys_reach_every_ray_node_from_the_secret_by_reference(rayjob):
    containers = ray_containers(rayjob("cluster.s3_secret=team-s3"))
    for role in ("head", "worker"):
        env = env_of(containers[role])
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "team-s3", "key": key}}}, role


def test_token_auth_reaches_head_workers_submitter_and_kuberay_itself(rayjob):
    job = rayjob(*TOKEN)
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "lmforge-ray-token"}
    for role, container in ray_containers(job).items():
        env = env_of(container)
        assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, role
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "lmforge-ray-token", "key": TOKEN_SECRET_KEY}
        }, role


def test_without_a_token_secret_nothing_asks_for_token_auth(rayjob):
    job = rayjob()
    assert "authOptions" not in job["spec"]["rayClusterSpec"]
    assert all("RAY_AUTH_MODE" not in env_of(c) for c in ray_containers(job).values())


def test_each_ray_node_labels_itself_with_its_kubernetes_node_and_its_role(rayjob):
    job = rayjob(*GPU)
    for pod, role in (("head", "head"), ("worker", "train")):
        env = expand_env(ray_containers(job)[pod]["env"], node_name="gpu-node-7.example.internal")
        labels = json.loads(env["RAY_OVERRIDE_LABELS"])
        assert labels == {HOST_LABEL: "gpu-node-7.example.internal", ROLE_LABEL: role}, pod
    cluster = job["spec"]["rayClusterSpec"]
    # KubeRay rejects rayStartParams['labels'], and validates group `labels` as static label values.
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert "labels" not in group["rayStartParams"] and "labels" not in group


def test_labels_reach_the_rayjob_and_every_pod_of_it(make_config):
    from components.training.rayjob import build_rayjob

    job = build_rayjob(
        make_config(), name="lmforge-pretrain-1", namespace="ns", entrypoint="x", image="cpu", gpu_image="",
        labels={"pipelines.kubeflow.org/run-id": "run-42"},
    )  # fmt: skip
    assert job["metadata"]["labels"]["pipelines.kubeflow.org/run-id"] == "run-42"
    for at, template in pod_templates(job):
        labels = template["metadata"]["labels"]
        assert labels["pipelines.kubeflow.org/run-id"] == "run-42" and labels[RAYJOB_LABEL] == "lmforge-pretrain-1", at


@pytest.mark.parametrize(
    ("cache_dir", "volume"), [("", False), ("/tmp/lmforge-cache", False), ("cache", False), ("/data/cache", True)]
)
def test_a_data_cache_outside_the_writable_dirs_gets_its_own_volume(rayjob, cache_dir, volume):
    job = rayjob(f"pretrain.data_cache_dir={cache_dir}")
    for at, template in list(pod_templates(job))[:2]:
        mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert ("/data/cache" in mounts) is volume, at


def test_mlflow_client_credentials_reach_the_driver_and_workers_from_their_secret(rayjob):
    job = rayjob("cluster.mlflow_secret=lmforge-mlflow-client")
    for role in ("head", "worker"):
        env = env_of(ray_containers(job)[role])
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "lmforge-mlflow-client", "key": "password"}
        }, role
    assert "MLFLOW_TRACKING_PASSWORD" not in env_of(
        rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    )
