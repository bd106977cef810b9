"""k8s/ checked statically: every manifest parses into named objects that validate against the
Kubernetes schemas (and the KubeRay objects against KubeRay's CRDs), pods run non-root with resources,
RBAC is least-privilege, no credential is written down, and the KubeRay, Argo CD and trigger objects
say what lmforge needs them to say; the example RayJob is what the RayJob builder makes."""

from __future__ import annotations

import re

import pytest
import yaml
from packaging.requirements import Requirement

from .k8s_checks import (
    CHART,
    K8S,
    REPO,
    check_cli_argv,
    crd_available,
    crd_problems,
    example_rayjob,
    k8s_manifest_files,
    k8s_objects,
    load_documents,
    metadata_problems,
    pod_security_problems,
    pod_templates,
    project_images,
    pyproject,
    rbac_problems,
    schema_problems,
    secret_object_problems,
    secret_text_problems,
)

OBJECTS = k8s_objects()
IDS = [where for where, _ in OBJECTS]
# Spec fields of KubeRay's ray.io/v1 API (ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go):
# a misspelled field would be dropped silently by the API server, so it is caught here.
RAY_CLUSTER_FIELDS = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
    "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAY_JOB_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata", "clusterSelector",
    "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
    "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip


def objects_of(kind: str) -> list[dict]:
    return [obj for _, obj in OBJECTS if obj["kind"] == kind]


@pytest.mark.parametrize("path", k8s_manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_parses_into_named_objects(path):
    docs = load_documents(path.read_text())
    assert docs, f"{path} holds no object"
    assert [p for doc in docs for p in metadata_problems(str(path), doc)] == []


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_objects_validate_against_the_kubernetes_schemas(where, obj):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed")
    assert schema_problems(where, obj) == []


CUSTOM = [(where, obj) for where, obj in OBJECTS if crd_available(obj["apiVersion"], obj["kind"])]


def test_kuberay_objects_have_their_crds_at_hand():
    """Guards the CRD check below against running on nothing (../shared/crds missing or renamed)."""
    assert {obj["kind"] for _, obj in CUSTOM} >= {"RayCluster", "RayJob"}


@pytest.mark.parametrize(("where", "obj"), CUSTOM, ids=[where for where, _ in CUSTOM])
def test_custom_resources_validate_against_their_crds(where, obj):
    assert crd_problems(where, obj) == []


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_pods_run_non_root_with_resources_and_no_escalation(where, obj):
    problems = [p for at, t in pod_templates(obj) for p in pod_security_problems(f"{where} {at}", t["spec"])]
    assert problems == []


def test_every_workload_was_checked_for_pods():
    """Guards the pod checks above against an object kind they do not look into."""
    for where, obj in OBJECTS:
        if obj["kind"] in ("CronJob", "RayCluster", "RayJob", "Deployment", "Job"):
            assert list(pod_templates(obj)), where


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_rbac_is_namespaced_without_wildcards(where, obj):
    assert rbac_problems(where, obj) == []


@pytest.mark.parametrize("path", k8s_manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifests_hold_no_literal_credentials(path):
    problems = secret_text_problems(str(path), path.read_text())
    problems += [p for doc in load_documents(path.read_text()) for p in secret_object_problems(str(path), doc)]
    assert problems == []


def grants_of(role: dict) -> set[tuple[str, str, str]]:
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def named(kind: str, name: str) -> dict:
    (obj,) = [o for o in objects_of(kind) if o["metadata"]["name"] == name]
    return obj


def test_pipeline_role_grants_only_the_rayjob_lifecycle_and_pod_reads_in_the_run_namespace():
    role = named("Role", "lmforge-pipeline")
    rayjob = {("ray.io", "rayjobs", v) for v in ("create", "get", "list", "watch", "delete")}
    pods = {("", "pods", v) for v in ("get", "list", "watch")} | {
        ("", "pods/log", "get"),
        ("ray.io", "rayjobs/status", "get"),
    }
    assert grants_of(role) == rayjob | pods
    binding = named("RoleBinding", "lmforge-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lmforge-pipeline"}
    run_ns = "kubeflow-user-example-com"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lmforge-pipeline", "namespace": run_ns}]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == run_ns


def test_submitter_may_only_file_kfp_runs_in_the_run_namespace():
    role = named("Role", "lmforge-submitter")
    assert {g for g, _, _ in grants_of(role)} == {"pipelines.kubeflow.org"}
    assert not {v for _, _, v in grants_of(role)} - {"create", "get", "list"}
    binding = named("RoleBinding", "lmforge-submitter")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lmforge-submitter", "namespace": "lmforge"}]


def test_submitter_account_has_no_api_token():
    (submitter,) = [sa for sa in objects_of("ServiceAccount") if sa["metadata"]["name"] == "lmforge-submitter"]
    assert submitter["automountServiceAccountToken"] is False


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_objects_use_only_kuberay_fields(kind):
    (obj,) = objects_of(kind)
    spec = obj["spec"]
    if kind == "RayJob":
        assert set(spec) <= RAY_JOB_FIELDS
        spec = spec["rayClusterSpec"]
    assert set(spec) <= RAY_CLUSTER_FIELDS
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert all(isinstance(v, str) for v in spec["headGroupSpec"]["rayStartParams"].values())


def test_standing_cluster_has_cpu_and_gpu_worker_groups_on_the_project_images():
    image, cuda_image = project_images()
    (obj,) = objects_of("RayCluster")
    spec = obj["spec"]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert groups["cpu"]["image"] == image and groups["gpu"]["image"] == cuda_image
    assert groups["gpu"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["resources"]["limits"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == image


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_version_is_one_pyproject_allows(kind):
    (obj,) = objects_of(kind)
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    ray = next(Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "ray")
    assert spec["rayVersion"] in ray.specifier


def test_rayjob_example_is_what_the_builder_makes_for_the_1b_profile():
    """If this fails after a change to components/training/rayjob.py, regenerate the example:
    ``python -c 'from tests.unit.deploy.k8s_checks import write_example_rayjob as w; w()'``."""
    (job,) = objects_of("RayJob")
    assert job == example_rayjob()


def test_rayjob_gpu_group_matches_the_1b_profile_workers():
    profile = yaml.safe_load((REPO / "pipelines" / "profiles" / "1b.yaml").read_text())
    (job,) = objects_of("RayJob")
    (gpu,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    image, cuda_image = project_images()
    assert profile["pretrain"]["use_gpu"] is True
    assert gpu["groupName"] == "gpu" and gpu["template"]["spec"]["containers"][0]["image"] == cuda_image
    # One GPU per pod (cluster.gpus_per_worker_pod's default), so one pod per Ray Train worker.
    assert gpu["replicas"] == gpu["minReplicas"] == gpu["maxReplicas"] == profile["pretrain"]["num_workers"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"] == image


def test_argocd_application_syncs_the_chart_into_lmforge():
    (app,) = objects_of("Application")
    source = app["spec"]["source"]
    assert (REPO / source["path"]).resolve() == CHART.resolve()
    assert (REPO / source["path"] / "Chart.yaml").is_file()
    assert app["spec"]["destination"] == {"server": "https://kubernetes.default.svc", "namespace": "lmforge"}
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def test_argocd_application_pins_a_commit_and_every_image_by_digest():
    import re

    (app,) = objects_of("Application")
    source = app["spec"]["source"]
    assert re.fullmatch(r"[0-9a-f]{40}", source["targetRevision"]), "pin a commit, not a branch or tag"
    values = source["helm"]["valuesObject"]
    digest = re.compile(r"sha256:[0-9a-f]{64}")
    assert digest.fullmatch(values["image"]["digest"])
    for name in ("minio", "postgres", "mlflow"):
        assert digest.fullmatch(values[name]["image"].partition("@")[2]), name


def test_trigger_submits_continual_when_new_data_lands_under_the_profile_source():
    from components.common.config import load_config

    (cron,) = objects_of("CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    profile = load_config(args[args.index("--profile") + 1])
    assert container["image"] == project_images()[0]
    assert container["command"] == ["lmforge"]
    assert args[:4] == ["submit", "continual", "--if-new-data", profile.continual.source]
    sets = {args[i + 1] for i, a in enumerate(args) if a == "--set"}
    assert f"storage.s3_endpoint={profile.storage.s3_endpoint}" in sets
    assert f"lineage.tracking_uri={profile.lineage.tracking_uri}" in sets
    env = {e["name"]: e for e in container["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "lmforge-s3-pipeline", "key": key}
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert args[args.index("--namespace") + 1] == "kubeflow-user-example-com"
    assert args[args.index("--service-account") + 1] == "lmforge-pipeline"
    assert pod["serviceAccountName"] == "lmforge-submitter"


def test_trigger_calls_the_cli_with_arguments_it_accepts():
    """The contract with pipelines/cli.py: the manifest's argv parses with the real parser."""
    (cron,) = objects_of("CronJob")
    trigger_argv = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    (parsed,) = check_cli_argv([trigger_argv])
    assert (parsed.command, parsed.pipeline, parsed.profile) == ("submit", "continual", "1b+cluster")


def test_documented_ray_address_reaches_the_standing_cluster_through_its_head_service():
    # The cluster profile launches RayJobs; a standing RayCluster is opted into with the address its
    # manifest documents (pretrain.launcher=ray, pretrain.ray_address=ray://...).
    (address,) = set(
        re.findall(r"pretrain\.ray_address=(ray://[\w.:-]*\w)", (REPO / "k8s" / "ray" / "raycluster.yaml").read_text())
    )
    (cluster,) = objects_of("RayCluster")
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    client_port = next(p["containerPort"] for p in head["ports"] if p["name"] == "client")
    # KubeRay names the head Service <cluster>-head-svc.
    assert address == f"ray://{name}-head-svc.{namespace}.svc.cluster.local:{client_port}"


def test_standing_cluster_head_notices_a_lost_node_as_fast_as_a_rayjob_head():
    from components.common.config import ClusterConfig
    from components.training.rayjob import _health_check_env

    (cluster,) = objects_of("RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    settings = {e["name"]: e.get("value") for e in head["env"] if e["name"].startswith("RAY_health_check_")}
    expected = _health_check_env(ClusterConfig().node_health_check_ms)
    assert expected and settings == {e["name"]: e["value"] for e in expected}
