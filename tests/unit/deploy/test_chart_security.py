"""What a security review of the chart checks (issue 9): multi-user Kubeflow, default-deny networking
evaluated as Kubernetes would (netpol.py) on the rendered policies, Ray token auth, scoped S3
credentials, MLflow schema upgrade and auth, `helm test`, pinned images, scheduling values."""

from __future__ import annotations

import pytest

from .k8s_checks import CHART, crd_problems, helm, pod_templates
from .netpol import Pod, allowed, network_policies, selects
from .test_chart_render import container_of, objects, one

pytestmark = pytest.mark.skipif(helm() is None, reason="helm-python-sdk (Helm engine, dev extra) is not installed")

RELEASE = "lmforge"
RUN_NS = "kubeflow-user-example-com"
LMFORGE = {"app.kubernetes.io/name": "lmforge", "app.kubernetes.io/instance": "lmforge"}
STEP = {"app.kubernetes.io/part-of": "lmforge"}
RAY_HEAD = {"app.kubernetes.io/name": "lmforge", "app.kubernetes.io/component": "ray-head", "lmforge.io/rayjob": "j"}
RAY_WORKER = {**RAY_HEAD, "app.kubernetes.io/component": "ray-worker"}


def component(name: str) -> Pod:
    return Pod(RELEASE, {**LMFORGE, "app.kubernetes.io/component": name})


def policies(variant: str = "defaults") -> list[dict]:
    return network_policies([o for _, o in objects(variant)], RELEASE)


def in_namespace(variant: str, ns: str) -> list[tuple[str, dict]]:
    return [(o["kind"], o) for _, o in objects(variant) if o["metadata"].get("namespace") == ns]


# --- the evaluator itself ------------------------------------------------------------------------


def test_evaluator_ands_namespace_and_pod_selectors_of_one_peer_and_ors_separate_peers():
    def policy(peers):
        return {"metadata": {"namespace": "a"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                "ingress": [{"from": peers}]}}  # fmt: skip

    ns_b = {"matchLabels": {"kubernetes.io/metadata.name": "b"}}
    both = policy([{"namespaceSelector": ns_b, "podSelector": {"matchLabels": {"x": "1"}}}])
    either = policy([{"namespaceSelector": ns_b}, {"podSelector": {"matchLabels": {"x": "1"}}}])
    dst = Pod("a")
    assert allowed([both], Pod("b", {"x": "1"}), dst, 80)
    assert not allowed([both], Pod("b"), dst, 80) and not allowed([both], Pod("a", {"x": "1"}), dst, 80)
    assert allowed([either], Pod("b"), dst, 80) and allowed([either], Pod("a", {"x": "1"}), dst, 80)
    assert not allowed([either], Pod("c", {"x": "1"}), dst, 80)  # a bare podSelector is the policy's namespace
    assert selects({"matchExpressions": [{"key": "k", "operator": "Exists"}]}, {"k": ""})


# --- reachability on the rendered policies ------------------------------------------------------


@pytest.mark.parametrize("port", [8265, 10001])
@pytest.mark.parametrize(
    "src",
    [
        Pod("default", {}),
        Pod("other-team", STEP),  # an lmforge-labelled pod outside the run namespaces
        Pod(RUN_NS, {"app": "notebook"}),  # a pod of the profile that is not an lmforge step
        Pod(RELEASE, {**LMFORGE, "app.kubernetes.io/component": "minio"}),
    ],
    ids=["default-ns", "other-namespace", "notebook-in-run-ns", "release-pod"],
)
def test_pods_outside_the_run_namespaces_steps_cannot_reach_the_ray_dashboard_or_client(src, port):
    assert not allowed(policies(), src, Pod(RUN_NS, RAY_HEAD), port)


def test_steps_reach_their_ray_head_and_the_operator_only_its_dashboard():
    ps, head = policies(), Pod(RUN_NS, RAY_HEAD)
    assert allowed(ps, Pod(RUN_NS, STEP), head, 8265) and allowed(ps, Pod(RUN_NS, STEP), head, 10001)
    operator = Pod("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
    assert allowed(ps, operator, head, 8265) and not allowed(ps, operator, head, 10001)


def test_ray_pods_talk_among_themselves_and_to_the_object_store_and_mlflow_only():
    ps, head, worker = policies(), Pod(RUN_NS, RAY_HEAD), Pod(RUN_NS, RAY_WORKER)
    assert allowed(ps, worker, head, 6379) and allowed(ps, head, worker, 12345)
    assert allowed(ps, worker, component("minio"), 9000) and allowed(ps, worker, component("mlflow"), 5000)
    assert not allowed(ps, worker, component("postgres"), 5432)
    assert not allowed(ps, worker, Pod("default", {"app": "anything"}), 443)


def test_steps_reach_minio_and_mlflow_but_postgres_only_from_mlflow():
    ps, step = policies(), Pod(RUN_NS, STEP)
    assert allowed(ps, step, component("minio"), 9000) and allowed(ps, step, component("mlflow"), 5000)
    assert not allowed(ps, step, component("postgres"), 5432)
    assert allowed(ps, component("mlflow"), component("postgres"), 5432)
    assert not allowed(ps, component("trigger"), component("postgres"), 5432)


def test_release_namespace_denies_by_default_in_both_directions():
    ps = policies()
    assert not allowed(ps, Pod("default"), component("minio"), 9000)
    assert not allowed(ps, Pod("default"), component("mlflow"), 5000)
    assert not allowed(ps, component("minio"), Pod("default"), 443)  # no egress for MinIO
    assert not allowed(ps, component("mlflow"), Pod("default"), 443)
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    assert allowed(ps, component("minio"), dns, 53, "UDP")


def test_jobs_and_helm_tests_reach_the_services_and_the_kfp_api():
    ps = policies()
    kfp = Pod("kubeflow", {"app": "ml-pipeline"})
    for name in ("trigger", "upload", "buckets", "test"):
        assert allowed(ps, component(name), component("minio"), 9000), name
        assert allowed(ps, component(name), component("mlflow"), 5000), name
    assert allowed(ps, component("trigger"), kfp, 8888)


# --- multi-user Kubeflow -------------------------------------------------------------------------


def test_every_run_namespace_gets_accounts_secrets_and_ray_policies():
    for ns in ("team-a", "team-b"):
        kinds = {(k, o["metadata"]["name"]) for k, o in in_namespace("hardened", ns)}
        assert {
            ("ServiceAccount", "lmforge-pipeline"),
            ("Role", "lmforge-pipeline"),
            ("RoleBinding", "lmforge-pipeline"),
            ("Role", "lmforge-submitter"),
            ("RoleBinding", "lmforge-submitter"),
            ("ExternalSecret", "lmforge-s3-pipeline"),
            ("ExternalSecret", "lmforge-ray-token"),
            ("NetworkPolicy", "lmforge-ray-head"),
            ("NetworkPolicy", "lmforge-ray-default-deny"),
            ("NetworkPolicy", "lmforge-steps-default-deny"),
        } <= kinds, ns
    # A step reaches the Ray heads of its own namespace only (its egress), not another team's.
    ps = policies("hardened")
    assert allowed(ps, Pod("team-b", STEP), Pod("team-b", RAY_HEAD), 10001)
    assert not allowed(ps, Pod("team-a", STEP), Pod("team-b", RAY_HEAD), 10001)


def test_external_secrets_name_keys_the_pods_read_from_the_configured_store():
    for _, es in in_namespace("hardened", "team-a"):
        if es["kind"] != "ExternalSecret":
            continue
        assert es["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "lmforge"}
        assert es["spec"]["target"]["name"] == es["metadata"]["name"]
        keys = {d["secretKey"] for d in es["spec"]["data"]}
        assert keys in ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, {"auth_token"}, {"username", "password"})


def test_external_secrets_validate_against_their_crd_when_shared_crds_has_it():
    problems = []
    for where, obj in [(f"{o['metadata']['namespace']}/{o['metadata']['name']}", o) for k, o in
                       in_namespace("hardened", "team-a") if k == "ExternalSecret"]:  # fmt: skip
        try:
            problems += crd_problems(where, obj)
        except LookupError as e:
            pytest.skip(f"{e}: add external-secrets' external-secrets.io_externalsecrets.yaml to shared/crds")
    assert problems == []


def test_trigger_submits_into_the_run_namespace_with_the_pipeline_account_token_and_scoped_keys():
    args = container_of(one("CronJob", "lmforge-retrain"))["args"]
    assert args[args.index("--namespace") + 1] == RUN_NS
    assert args[args.index("--service-account") + 1] == "lmforge-pipeline"
    sets = {args[i + 1] for i, a in enumerate(args) if a == "--set"}
    assert {"cluster.ray_token_secret=lmforge-ray-token", "cluster.s3_secret=lmforge-s3-pipeline"} <= sets


# --- MLflow, helm test, images, scheduling ---------------------------------------------------------


def test_mlflow_upgrades_its_schema_before_the_server_starts_on_the_same_database():
    pod = one("Deployment", "lmforge-mlflow")["spec"]["template"]["spec"]
    (upgrade,) = pod["initContainers"]
    args = pod["containers"][0]["args"]
    assert upgrade["command"][:3] == ["mlflow", "db", "upgrade"]
    assert upgrade["command"][3] == args[args.index("--backend-store-uri") + 1]


def test_mlflow_basic_auth_takes_its_admin_from_a_secret_and_writes_its_config_into_memory():
    pod = one("Deployment", "lmforge-mlflow", "hardened")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["args"][1:3] == ["--app-name", "basic-auth"]
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "lmforge-mlflow-auth"
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/auth/basic_auth.ini"
    (auth,) = [v for v in pod["volumes"] if v["name"] == "auth"]
    assert auth["emptyDir"]["medium"] == "Memory"
    assert [c["name"] for c in pod["initContainers"]] == ["db-upgrade", "auth-config"]
    # Its clients log in: the trigger from the client Secret, and it tells the steps and Ray pods where theirs is.
    trigger = container_of(one("CronJob", "lmforge-retrain", "hardened"))
    env = {e["name"]: e for e in trigger["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "lmforge-mlflow-client",
        "key": "password",
    }
    assert "cluster.mlflow_secret=lmforge-mlflow-client" in trigger["args"]
    assert ("ExternalSecret", "lmforge-mlflow-client") in {
        (k, o["metadata"]["name"]) for k, o in in_namespace("hardened", "team-a")
    }


def test_helm_test_checks_mlflow_health_and_the_bucket_with_the_scoped_keys():
    tests = {o["metadata"]["name"]: o for _, o in objects() if o["kind"] == "Pod"}
    assert set(tests) == {"lmforge-test-mlflow", "lmforge-test-bucket"}
    for pod in tests.values():
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in pod["spec"]["containers"][0]["env"][:2]}
        assert set(env.values()) == {"lmforge-s3-pipeline"}
    assert "/health" in tests["lmforge-test-mlflow"]["spec"]["containers"][0]["args"][0]
    assert "bucket_exists('lmforge')" in tests["lmforge-test-bucket"]["spec"]["containers"][0]["args"][0]


def test_pinned_digest_scheduling_and_annotations_reach_every_pod():
    for where, obj in objects("hardened"):
        for _, template in pod_templates(obj):
            spec = template["spec"]
            assert spec["nodeSelector"] == {"example.com/pool": "platform"}, where
            assert spec["tolerations"][0]["key"] == "example.com/pool", where
            assert template["metadata"]["annotations"]["example.com/owner"] == "ml-platform", where
            image = spec["containers"][0]["image"]
            if "lmforge/lmforge" in image:
                assert image == "ghcr.io/lmforge/lmforge@sha256:" + "0" * 64, where


def test_notes_say_to_create_the_secrets_before_installing():
    with helm().Chart.load(str(CHART)) as chart:
        rendered = chart.render({}, name="lmforge", namespace="lmforge", is_install=True)
    (notes,) = [text for path, text in rendered.items() if path.endswith("NOTES.txt")]
    assert "BEFORE `helm install`" in notes and "helm test lmforge" in notes
    assert "create secret generic lmforge-s3-pipeline" in notes and RUN_NS in notes


def test_the_argocd_application_values_render_every_image_by_digest():
    from .k8s_checks import k8s_objects, rendered_objects

    (app,) = [o for _, o in k8s_objects() if o["kind"] == "Application"]
    images = {
        c["image"]
        for _, obj in rendered_objects(app["spec"]["source"]["helm"]["valuesObject"])
        for _, template in pod_templates(obj)
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]
    }
    assert images and all("@sha256:" in image for image in images), images
