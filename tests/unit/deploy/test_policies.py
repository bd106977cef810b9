"""The policy checks themselves: each one must flag the violation it exists for, or the clean
results of the manifest and chart tests would prove nothing."""

from __future__ import annotations

import copy

import pytest

from .k8s_checks import (
    crd_available,
    crd_problems,
    pod_security_problems,
    rbac_problems,
    schema_problems,
    secret_object_problems,
    secret_text_problems,
    template_skeleton,
)

try:
    import kubernetes_validate  # noqa: F401

    HAVE_KV = True
except ImportError:
    HAVE_KV = False
needs_schemas = pytest.mark.skipif(not HAVE_KV, reason="kubernetes-validate (dev extra) is not installed")
needs_crds = pytest.mark.skipif(
    not crd_available("ray.io/v1", "RayCluster"), reason="KubeRay CRDs not found at ../shared/crds (see its README)"
)

GOOD_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
    "containers": [
        {
            "name": "app",
            "image": "example/app:1",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    ],
}


def test_pod_check_accepts_a_hardened_pod():
    assert pod_security_problems("pod", GOOD_POD) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser"),
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda p: p["containers"][0]["resources"].pop("limits"), "resources.limits"),
        (lambda p: p["containers"][0]["resources"]["requests"].pop("memory"), "resources.requests lacks memory"),
        (
            lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        (
            lambda p: p["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
            "readOnlyRootFilesystem",
        ),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        (lambda p: p.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]), "hostPath"),
        (lambda p: p.update(initContainers=[{"name": "init", "image": "x"}]), "container init"),
    ],
)
def test_pod_check_flags_each_violation(mutate, expected):
    pod = copy.deepcopy(GOOD_POD)
    mutate(pod)
    problems = pod_security_problems("pod", pod)
    assert any(expected in p for p in problems), problems


def deployment_with_env(env: list[dict]) -> dict:
    pod = copy.deepcopy(GOOD_POD)
    pod["containers"][0]["env"] = env
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": pod}},
    }


def test_secret_check_flags_a_literal_password_env():
    obj = deployment_with_env([{"name": "POSTGRES_PASSWORD", "value": "hunter22"}])
    assert secret_object_problems("d", obj)


def test_secret_check_accepts_credentials_from_a_secret_and_token_paths():
    obj = deployment_with_env(
        [
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": "/var/run/secrets/token"},
        ]
    )
    assert secret_object_problems("d", obj) == []


def test_secret_check_flags_a_secret_object_with_data():
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "x"}}
    assert secret_object_problems("s", obj)


@pytest.mark.parametrize(
    "line",
    [
        "  rootPassword: s3cr3t-value",
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY",
        "uri: postgresql://mlflow:hunter22@db:5432/mlflow",
        "key: AKIAIOSFODNN7EXAMPLE",
        "user: minioadmin",
        '    secret_key="abcd1234efgh",',
    ],
)
def test_secret_text_scan_flags_literal_credentials(line):
    assert secret_text_problems("f", line)


@pytest.mark.parametrize(
    "line",
    [
        "  passwordKey: password",
        "  secretAccessKeyKey: AWS_SECRET_ACCESS_KEY",
        '- "postgresql+psycopg2://mlflow:$(POSTGRES_PASSWORD)@lmforge-postgres:5432/mlflow"',
        "# password: in a comment is documentation",
        '    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],',
    ],
)
def test_secret_text_scan_accepts_references_and_key_names(line):
    assert secret_text_problems("f", line) == []


def test_rbac_check_flags_wildcards_cluster_roles_and_secret_access():
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": ["*"], "resources": ["secrets"], "verbs": ["*"]}],
    }
    problems = " ".join(rbac_problems("r", role))
    assert "cluster-scoped" in problems and "wildcard" in problems and "secrets" in problems


def test_rbac_check_flags_binding_to_cluster_admin():
    binding = {
        "kind": "RoleBinding",
        "metadata": {"name": "b"},
        "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
    }
    assert rbac_problems("b", binding)


@needs_schemas
def test_schema_check_flags_a_misspelled_field_in_a_ray_pod_template():
    pod = copy.deepcopy(GOOD_POD)
    pod["containers"][0]["securityContex"] = {}
    ray = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "r"},
        "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": pod}}},
    }
    problems = schema_problems("r", ray)
    assert any("securityContex" in p for p in problems), problems


@needs_schemas
def test_schema_check_flags_a_wrong_type_in_a_core_object():
    obj = deployment_with_env([])
    obj["spec"]["selector"] = {"matchLabels": {"a": "b"}}
    obj["spec"]["replicas"] = "two"
    assert schema_problems("d", obj)


def test_template_skeleton_keeps_structure_and_drops_actions():
    text = 'metadata:\n  name: {{ .Release.Name }}-x\n  labels:\n    {{- include "l" . | nindent 4 }}\n    a: b\n'
    assert template_skeleton(text) == "metadata:\n  name: TEMPLATED-x\n  labels:\n    a: b"


def ray_cluster() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "r"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": copy.deepcopy(GOOD_POD)}},
            "workerGroupSpecs": [
                {
                    "groupName": "gpu",
                    "replicas": 2,
                    "minReplicas": 2,
                    "maxReplicas": 2,
                    "template": {"spec": copy.deepcopy(GOOD_POD)},
                }
            ],
        },
    }


@needs_crds
def test_crd_check_accepts_a_valid_ray_cluster():
    assert crd_problems("r", ray_cluster()) == []


@needs_crds
@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda s: s["workerGroupSpecs"][0].update(replicas="two"),
            "workerGroupSpecs[0].replicas: 'two' is not of type 'integer'",
        ),
        (lambda s: s["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required property"),
        (lambda s: s["headGroupSpec"].update(rayStartParam={}), "unknown field spec.headGroupSpec.rayStartParam"),
        (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "0 is not of type 'string'"),
        (lambda s: s.update(authOptions={"mode": "password"}), "'password' is not one of ['disabled', 'token']"),
    ],
)
def test_crd_check_flags_each_violation(mutate, expected):
    obj = ray_cluster()
    mutate(obj["spec"])
    problems = crd_problems("r", obj)
    assert any(expected in p for p in problems), problems
