"""charts/lmforge rendered by Helm's own engine (helm-python-sdk, Helm v4 as a library; a dev
dependency): `helm lint --strict` is clean, and every rendered object, under the default values and
under the variants a platform team would set, passes the same checks as k8s/. Skipped, with the
reason, where the engine is not installed; test_chart_static.py still guards the templates then."""

from __future__ import annotations

import functools

import pytest
import yaml

from .k8s_checks import (
    CHART,
    REPO,
    check_cli_argv,
    crd_problems,
    helm,
    k8s_objects,
    metadata_problems,
    pod_security_problems,
    pod_templates,
    project_images,
    rbac_problems,
    rendered_objects,
    schema_problems,
    secret_object_problems,
    secret_text_problems,
    text_for_secret_scan,
)

pytestmark = pytest.mark.skipif(
    helm() is None, reason="helm-python-sdk (Helm engine, dev extra) is not installed: pip install -e '.[dev]'"
)

VARIANTS = {
    "defaults": {},
    "external-services": {
        "minio": {"enabled": False},
        "mlflow": {"enabled": False, "externalTrackingUri": "https://mlflow.example.com"},
        "s3": {"externalEndpoint": "s3.example.com:443"},
        "buckets": {"create": False},
    },
    "private-registry": {
        "image": {"repository": "registry.example.com/ml/lmforge", "tag": "0.1.0-cpu"},
        "imagePullSecrets": ["registry-creds"],
        "trigger": {"overrides": ["continual.steps=30000"]},
        "networkPolicy": {"clientNamespaces": ["kubeflow", "team-a"]},
    },
    # What a security review asks for: two profiles, secrets from a store, MLflow auth, pinned image,
    # dedicated nodes, the API server's address known.
    "hardened": {
        "runNamespaces": ["team-a", "team-b"],
        "runSecrets": {"mode": "externalSecret"},
        "mlflow": {"auth": {"enabled": True}},
        "image": {"digest": "sha256:" + "0" * 64},
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "nodeSelector": {"example.com/pool": "platform"},
        "tolerations": [{"key": "example.com/pool", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
        "networkPolicy": {"kubeApiCidrs": ["10.96.0.1/32"]},
    },
}


@functools.cache
def objects(variant: str = "defaults") -> list[tuple[str, dict]]:
    """Rendered once per variant (the tests only read the objects)."""
    return rendered_objects(VARIANTS[variant])


def one(kind: str, name: str, variant: str = "defaults") -> dict:
    (obj,) = [o for _, o in objects(variant) if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container_of(obj: dict) -> dict:
    (_, template), *_ = pod_templates(obj)
    return template["spec"]["containers"][0]


def test_helm_lint_strict_reports_no_errors_or_warnings():
    report = helm().lint(str(CHART), strict=True, kube_version="v1.33.0")
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert (report["errors"], findings) == ([], [])


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_are_named_and_validate_against_kubernetes_schemas(variant):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed")
    rendered = objects(variant)
    assert rendered
    assert [p for where, obj in rendered for p in metadata_problems(where, obj) + schema_problems(where, obj)] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_custom_resources_validate_against_their_crds(variant):
    """KubeRay and Kubeflow Pipelines objects the chart renders (none today: training steps create their
    RayJobs) must validate against the CRDs in ../shared/crds; a kind with no CRD there is reported."""
    problems = []
    for where, obj in objects(variant):
        if obj["apiVersion"].split("/")[0] in ("ray.io", "pipelines.kubeflow.org"):
            try:
                problems += crd_problems(where, obj)
            except LookupError as e:
                problems.append(f"{where}: {e}")
    assert problems == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_pods_run_non_root_with_resources_and_no_escalation(variant):
    problems = [
        p
        for where, obj in objects(variant)
        for at, template in pod_templates(obj)
        for p in pod_security_problems(f"{where} {at}", template["spec"])
    ]
    assert problems == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_chart_holds_no_literal_credentials_and_no_wildcard_rbac(variant):
    problems = []
    for where, obj in objects(variant):
        problems += secret_object_problems(where, obj) + rbac_problems(where, obj)
        problems += secret_text_problems(where, text_for_secret_scan(obj))
    assert problems == []
    assert not [o for _, o in objects(variant) if o["kind"] == "Secret"], (
        "the chart must reference Secrets, not create them"
    )


def test_services_answer_at_the_endpoints_the_cluster_profile_names():
    profile = yaml.safe_load((REPO / "pipelines" / "profiles" / "cluster.yaml").read_text())
    minio, mlflow = one("Service", "minio"), one("Service", "mlflow")
    assert f"minio.lmforge.svc.cluster.local:{minio['spec']['ports'][0]['port']}" == profile["storage"]["s3_endpoint"]
    assert (
        f"http://mlflow.lmforge.svc.cluster.local:{mlflow['spec']['ports'][0]['port']}"
        == profile["lineage"]["tracking_uri"]
    )
    assert profile["storage"]["uri"] == "s3://lmforge/"


def test_only_minio_and_the_bucket_job_hold_the_root_s3_keys_every_other_pod_the_scoped_ones():
    root_holders = set()
    for where, obj in objects():
        for _, template in pod_templates(obj):
            for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"] in (
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                        "MINIO_ROOT_USER",
                        "MINIO_ROOT_PASSWORD",
                    ):
                        secret = e["valueFrom"]["secretKeyRef"]["name"]
                        assert secret in ("lmforge-s3", "lmforge-s3-pipeline"), where
                        if secret == "lmforge-s3":
                            root_holders.add(obj["metadata"]["name"])
    assert root_holders == {"lmforge-minio", "lmforge-buckets"}


def test_mlflow_keeps_runs_in_postgres_and_artifacts_in_minio_with_the_password_from_a_secret():
    container = container_of(one("Deployment", "lmforge-mlflow"))
    args = container["args"]
    assert args[args.index("--backend-store-uri") + 1] == (
        "postgresql+psycopg2://mlflow:$(POSTGRES_PASSWORD)@lmforge-postgres:5432/mlflow"
    )
    assert args[args.index("--artifacts-destination") + 1] == "s3://lmforge/mlflow-artifacts"
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "lmforge-postgres", "key": "password"}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.lmforge.svc.cluster.local:9000"
    assert "mlflow.lmforge.svc.cluster.local:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    postgres = container_of(one("StatefulSet", "lmforge-postgres"))
    assert {e["name"]: e for e in postgres["env"]}["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"][
        "name"
    ] == "lmforge-postgres"


def test_jobs_and_trigger_run_the_pipeline_image():
    image, _ = project_images()
    for name in ("lmforge-buckets", "lmforge-upload-lifecycle", "lmforge-upload-continual"):
        assert container_of(one("Job", name))["image"] == image
    assert container_of(one("CronJob", "lmforge-retrain"))["image"] == image


def test_upload_jobs_register_each_compiled_pipeline_after_install_and_upgrade():
    for name in ("lifecycle", "continual"):
        job = one("Job", f"lmforge-upload-{name}")
        container = container_of(job)
        assert container["command"] == ["lmforge"]
        assert container["args"] == [
            "submit",
            name,
            "--upload-only",
            "--host",
            "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
        ]
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def test_pull_secrets_image_and_overrides_reach_every_pod_and_the_cli():
    for _, obj in objects("private-registry"):
        for _, template in pod_templates(obj):
            spec = template["spec"]
            assert spec["imagePullSecrets"] == [{"name": "registry-creds"}]
            if spec["containers"][0]["image"].startswith("registry.example.com"):
                assert spec["containers"][0]["image"] == "registry.example.com/ml/lmforge:0.1.0-cpu"
    args = container_of(one("CronJob", "lmforge-retrain", "private-registry"))["args"]
    assert args[-2:] == ["--set", "continual.steps=30000"]


def cli_args(variant: str = "defaults") -> list[list[str]]:
    """The argv of every pod that runs the lmforge CLI."""
    out = []
    for _, obj in objects(variant):
        for _, template in pod_templates(obj):
            for c in template["spec"]["containers"]:
                if c.get("command") == ["lmforge"]:
                    out.append(c["args"])
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_jobs_call_the_cli_with_arguments_it_accepts(variant):
    """The contract with pipelines/cli.py: the Jobs' argv parses with the real parser."""
    argvs = cli_args(variant)
    assert len(argvs) == 3  # two uploads, one trigger
    assert all(args.command == "submit" for args in check_cli_argv(argvs))


def test_external_services_replace_minio_mlflow_and_postgres():
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in objects("external-services")}
    assert (
        not {("Deployment", "lmforge-minio"), ("Deployment", "lmforge-mlflow"), ("StatefulSet", "lmforge-postgres")}
        & kinds
    )
    args = container_of(one("CronJob", "lmforge-retrain", "external-services"))["args"]
    assert "storage.s3_endpoint=s3.example.com:443" in args and "storage.s3_secure=true" in args
    assert "lineage.tracking_uri=https://mlflow.example.com" in args


def test_postgres_accepts_connections_only_from_mlflow():
    policy = one("NetworkPolicy", "lmforge-postgres")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "lmforge", "app.kubernetes.io/instance": "lmforge", "app.kubernetes.io/component": "mlflow"}}}]  # fmt: skip


@pytest.mark.parametrize(
    "values",
    [{"s3": {"existingSecret": ""}}, {"postgres": {"existingSecret": ""}}, {"minio": {"rootPassword": "hunter22"}}],
    ids=["no-s3-secret", "no-postgres-secret", "literal-password"],
)
def test_values_without_secret_references_or_with_credentials_are_rejected(values):
    with pytest.raises(helm().HelmValuesError):
        rendered_objects(values)


def test_trigger_and_rbac_agree_with_the_plain_manifests_in_k8s():
    plain = {(o["kind"], o["metadata"]["name"]): o for _, o in k8s_objects()}
    chart = {(o["kind"], o["metadata"]["name"]): o for _, o in objects()}
    plain_cron, chart_cron = plain[("CronJob", "lmforge-retrain")], chart[("CronJob", "lmforge-retrain")]
    assert plain_cron["spec"]["schedule"] == chart_cron["spec"]["schedule"]
    for field in ("command", "args", "env", "volumeMounts", "securityContext", "resources"):
        assert container_of(plain_cron)[field] == container_of(chart_cron)[field], field
    for name in ("lmforge-pipeline", "lmforge-submitter"):
        assert plain[("Role", name)]["rules"] == chart[("Role", name)]["rules"]
        assert plain[("RoleBinding", name)]["subjects"] == chart[("RoleBinding", name)]["subjects"]
        assert plain[("Role", name)]["metadata"]["namespace"] == chart[("Role", name)]["metadata"]["namespace"]
    for name in ("lmforge-pipeline", "lmforge-submitter"):
        assert ("ServiceAccount", name) in chart


@pytest.mark.parametrize("variant", VARIANTS)
def test_trigger_overrides_are_valid_config_for_its_profile(variant):
    """`--set` pairs the chart computes (endpoints, bucket) must load as config, or every
    scheduled check would die on a ConfigError."""
    from components.common.config import load_config

    args = container_of(one("CronJob", "lmforge-retrain", variant))["args"]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    cfg = load_config(args[args.index("--profile") + 1], overrides)
    assert cfg.storage.uri == "s3://lmforge/"
    assert cfg.storage.s3_secure is (variant == "external-services")
