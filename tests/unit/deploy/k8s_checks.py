"""What the deploy tests share: where the manifests are, how to load and render them, and the
policy checks every Kubernetes object must pass.

The checks return lists of problems (strings naming the object and the field) instead of asserting,
so a test reports every violation at once, and ``test_policies.py`` can prove each check fires on a
bad object. Pod specs are found in every workload kind lmforge ships, including the KubeRay
custom resources (head group, worker groups, RayJob submitter), so the same non-root/resources
rules cover training pods too.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "lmforge"
K8S = REPO / "k8s"
IMAGES = REPO / "images"
# CustomResourceDefinitions copied from KubeRay and Kubeflow Pipelines (see their README): next to the
# checkout, as ../shared/crds.
CRDS = REPO.parent / "shared" / "crds"
# The Kubernetes version manifests are validated against (kubernetes-validate ships its schemas).
KUBE_VERSION = "1.33.0"

Obj = dict[str, Any]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


COMPILE_IMAGE_VARIABLES = ("LMFORGE_COMPILE_IMAGE", "LMFORGE_COMPILE_GPU_IMAGE")


def load_images_module(env: dict[str, str] | None = None):
    """A fresh copy of components/common/images.py, imported with the compile-time overrides set to
    ``env`` (unset when absent), so a test sees what a compile with that environment would see. The
    process environment and ``sys.modules`` are left as they were."""
    saved = {var: os.environ.pop(var, None) for var in COMPILE_IMAGE_VARIABLES}
    os.environ.update(env or {})
    try:
        spec = importlib.util.spec_from_file_location("_lmforge_images", REPO / "components" / "common" / "images.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for var in COMPILE_IMAGE_VARIABLES:
            os.environ.pop(var, None)
            if saved[var] is not None:
                os.environ[var] = saved[var]
    return module


def project_images() -> tuple[str, str]:
    """(IMAGE, CUDA_IMAGE) of components/common/images.py as shipped, i.e. without the
    LMFORGE_COMPILE_IMAGE / LMFORGE_COMPILE_GPU_IMAGE overrides a developer may have set."""
    module = load_images_module()
    return module.IMAGE, module.CUDA_IMAGE


def load_documents(text: str) -> list[Obj]:
    """The non-empty YAML documents of a (multi-document) manifest."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def k8s_objects() -> list[tuple[str, Obj]]:
    """(file:kind/name, object) for every object under k8s/."""
    out = []
    for path in k8s_manifest_files():
        for doc in load_documents(path.read_text()):
            out.append((f"{path.relative_to(REPO)}:{describe(doc)}", doc))
    return out


def describe(obj: Obj) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def helm():
    """The Helm v4 engine (helm-python-sdk, a dev dependency), or None where it is not installed."""
    try:
        import helm_python
    except ImportError:
        return None
    return helm_python


def render_chart(values: Obj | None = None, *, namespace: str = "lmforge", release: str = "lmforge") -> dict[str, str]:
    """``helm template``: rendered manifest text per template path (NOTES.txt left out)."""
    engine = helm()
    with engine.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    return {path: text for path, text in rendered.items() if path.endswith((".yaml", ".yml"))}


def rendered_objects(values: Obj | None = None, **kw: str) -> list[tuple[str, Obj]]:
    out = []
    for path, text in sorted(render_chart(values, **kw).items()):
        for doc in load_documents(text):
            out.append((f"{path}:{describe(doc)}", doc))
    return out


# --- where the pods are ------------------------------------------------------------------------


def pod_templates(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """(location, PodTemplateSpec) of every pod an object creates."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield "spec.template", spec["template"]
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template", spec["jobTemplate"]["spec"]["template"]
    elif kind == "Pod":
        yield "", {"metadata": obj.get("metadata", {}), "spec": spec}
    elif kind == "RayCluster":
        yield from _ray_cluster_templates(spec, "spec")
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from _ray_cluster_templates(spec["rayClusterSpec"], "spec.rayClusterSpec")
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]


def _ray_cluster_templates(spec: Obj, at: str) -> Iterator[tuple[str, Obj]]:
    yield f"{at}.headGroupSpec.template", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"{at}.workerGroupSpecs[{group['groupName']}].template", group["template"]


def containers(pod_spec: Obj) -> list[Obj]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


# --- policies ----------------------------------------------------------------------------------

RESOURCE_KEYS = ("cpu", "memory")


def pod_security_problems(where: str, pod_spec: Obj) -> list[str]:
    """Non-root, no escalation, no capabilities, read-only root, requests and limits everywhere."""
    problems = []
    pod_ctx = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"{where}: {flag} is set")
    for vol in pod_spec.get("volumes", []):
        if "hostPath" in vol:
            problems.append(f"{where}: volume {vol['name']} is a hostPath")
    if not containers(pod_spec):
        problems.append(f"{where}: no containers")
    for c in containers(pod_spec):
        at = f"{where} container {c.get('name')}"
        ctx = c.get("securityContext") or {}
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        if non_root is not True:
            problems.append(f"{at}: runAsNonRoot is not true")
        if not isinstance(uid, int) or uid == 0:
            problems.append(f"{at}: runAsUser must be a non-zero uid, got {uid!r}")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{at}: privileged")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{at}: capabilities do not drop ALL")
        if (ctx.get("capabilities") or {}).get("add"):
            problems.append(f"{at}: adds capabilities {ctx['capabilities']['add']}")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem is not true")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            missing = [k for k in RESOURCE_KEYS if k not in (res.get(section) or {})]
            if missing:
                problems.append(f"{at}: resources.{section} lacks {', '.join(missing)}")
    return problems


# Env names that carry credentials; their value must come from a Secret. *_PATH/*_FILE name a
# file (e.g. a projected token's path), not the credential.
SENSITIVE_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY", re.I)
SECRET_TEXT_PATTERNS = {
    "AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "MinIO default credentials": re.compile(r"\bminioadmin\b"),
    # user:password@host in a URL, unless the password is a $(VAR)/${VAR} reference.
    "credentials in a URL": re.compile(r"://[^/\s:@\"']+:(?!\$[({])[^/\s@\"']+@"),
    "literal password/secret key": re.compile(
        r"(?i)(password|passwd|secret[_-]?key|secretaccesskey|access[_-]?key[_-]?id|aws_secret_access_key)"
        r"\s*[:=]\s*[\"']?(?![\"']?\s*$)(?!\$[({])(?!<)(?!os\.(environ|getenv))[^\s\"'#]{4,}"
    ),
}


def secret_text_problems(where: str, text: str) -> list[str]:
    """Credential-looking literals in a file's text (values, manifests, Dockerfiles)."""
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for what, pattern in SECRET_TEXT_PATTERNS.items():
            if pattern.search(line):
                problems.append(f"{where}:{lineno}: {what}: {line.strip()}")
    return problems


def text_for_secret_scan(obj: Obj) -> str:
    """The object as YAML for :func:`secret_text_problems`, without the fields whose *name* looks like a
    credential but whose value is a key name (an ExternalSecret's ``spec.data[].secretKey``)."""
    if obj.get("kind") == "ExternalSecret":
        obj = {**obj, "spec": {**obj["spec"], "data": [
            {k: v for k, v in d.items() if k != "secretKey"} for d in obj["spec"].get("data", [])]}}  # fmt: skip
    return yaml.safe_dump(obj)


def secret_object_problems(where: str, obj: Obj) -> list[str]:
    """Secrets with data, and credential env vars given as literal values."""
    problems = []
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        problems.append(f"{where}: a Secret with literal data (reference an existing Secret instead)")
    for at, template in pod_templates(obj):
        for c in containers(template.get("spec") or {}):
            for env in c.get("env", []):
                name = env.get("name", "")
                if SENSITIVE_ENV.search(name) and not name.endswith(("_PATH", "_FILE")):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if "value" in env or not ref:
                        problems.append(f"{where} {at} container {c['name']}: env {name} is not from a secretKeyRef")
    return problems


def rbac_problems(where: str, obj: Obj) -> list[str]:
    """No wildcards, no cluster-wide grants, nothing bound to cluster-admin."""
    problems = []
    kind = obj.get("kind")
    if kind in ("ClusterRole", "ClusterRoleBinding"):
        problems.append(f"{where}: cluster-scoped RBAC ({kind}); lmforge needs only namespaced rights")
    if kind in ("Role", "ClusterRole"):
        for i, rule in enumerate(obj.get("rules", [])):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                if any("*" in v for v in rule.get(field) or []):
                    problems.append(f"{where}: rules[{i}].{field} has a wildcard")
            if (
                "escalate" in rule.get("verbs", [])
                or "bind" in rule.get("verbs", [])
                or "impersonate" in rule.get("verbs", [])
            ):
                problems.append(f"{where}: rules[{i}] grants escalate/bind/impersonate")
            if "secrets" in rule.get("resources", []):
                problems.append(f"{where}: rules[{i}] grants access to secrets")
    if kind in ("RoleBinding", "ClusterRoleBinding") and (obj.get("roleRef") or {}).get("name") in (
        "cluster-admin",
        "admin",
        "edit",
    ):
        problems.append(f"{where}: bound to built-in role {obj['roleRef']['name']}")
    return problems


def metadata_problems(where: str, obj: Obj) -> list[str]:
    problems = [f"{where}: missing {key}" for key in ("apiVersion", "kind") if not obj.get(key)]
    if not (obj.get("metadata") or {}).get("name"):
        problems.append(f"{where}: missing metadata.name")
    return problems


# --- schema validation -------------------------------------------------------------------------

# Kinds whose schemas are not Kubernetes' own (CRDs); their embedded pod templates are still
# validated, as core/v1 PodTemplates.
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"),
    ("ray.io/v1", "RayJob"),
    ("argoproj.io/v1alpha1", "Application"),
    # external-secrets' CRD is not among ../shared/crds yet: test_chart_security checks its fields.
    ("external-secrets.io/v1", "ExternalSecret"),
}


def schema_problems(where: str, obj: Obj) -> list[str]:
    """Strict validation against the Kubernetes OpenAPI schemas (unknown fields are errors)."""
    import kubernetes_validate

    if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS:
        docs = [
            (f"{where} {at}", {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": t})
            for at, t in pod_templates(obj)
        ]
    else:
        docs = [(where, obj)]
    problems = []
    for at, doc in docs:
        try:
            _validate(yaml.safe_dump(doc, sort_keys=True), KUBE_VERSION)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{at}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(
                f"{at}: no Kubernetes {KUBE_VERSION} schema for {doc.get('apiVersion')}/{doc.get('kind')}: {e}"
            )
    return problems


@functools.cache
def _validate(doc_yaml: str, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(yaml.safe_load(doc_yaml), version, strict=True)


# --- custom resources against their CRDs -------------------------------------------------------


def crd_available(api_version: str, kind: str) -> bool:
    return _crd_validator(api_version, kind) is not None


def crd_violations(obj: Obj) -> tuple[list[str], list[str]]:
    """(schema violations, unknown fields) of a custom resource, each as ``path: message``.

    The schema is the CRD's ``openAPIV3Schema`` for the version ``apiVersion`` names. Unknown fields are
    reported apart: the API server drops them silently by default and rejects them only under
    ``fieldValidation=Strict`` (which the RayJob launcher uses), so a misspelled field would otherwise
    vanish. CEL rules (``x-kubernetes-validations``) are not evaluated here.
    """
    validator = _crd_validator(obj.get("apiVersion", ""), obj.get("kind", ""))
    if validator is None:
        raise LookupError(f"no CRD for {obj.get('apiVersion')}/{obj.get('kind')} under {CRDS}")
    invalid, unknown = [], []
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _json_path(error.absolute_path)
        if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            unknown += [f"{where}.{name}" if where else name for name in extra]
        else:
            invalid.append(f"{where or '(root)'}: {error.message}")
    return invalid, unknown


def crd_problems(where: str, obj: Obj) -> list[str]:
    """Everything a strict API server would refuse in a custom resource (see crd_violations)."""
    invalid, unknown = crd_violations(obj)
    return [f"{where}: {p}" for p in invalid] + [f"{where}: unknown field {p}" for p in unknown]


def _json_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@functools.cache
def _crd_validator(api_version: str, kind: str):
    import jsonschema

    group, _, version = api_version.partition("/")
    # Files are named <group>_<plural>.yaml (controller-gen); these kinds' plurals are kind + "s". Parsing
    # a CRD takes about a second, so only the one named is read.
    path = CRDS / f"{group}_{kind.lower()}s.yaml"
    if group and path.is_file():
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
            return None
        for v in crd["spec"]["versions"]:
            if v["name"] == version:
                return jsonschema.Draft7Validator(_closed(v["schema"]["openAPIV3Schema"]))
    return None


def _closed(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever properties are listed, i.e. the fields a
    structural schema would prune, except under ``x-kubernetes-preserve-unknown-fields``."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: _closed(v) if k in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not") else v
        for k, v in schema.items()
    }
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


# --- the example RayJob in k8s/ray ---------------------------------------------------------------

# k8s/ray/rayjob-pretrain.yaml is what components/training/rayjob.py builds for a pretrain step of the
# 1b profile with these cluster settings; test_k8s_manifests.py checks that the two agree.
EXAMPLE_RAYJOB_SETTINGS = (
    "pretrain.launcher=rayjob",
    "cluster.namespace=lmforge",
    "cluster.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    "cluster.shm_size=24Gi",
    "cluster.job_deadline_seconds=1209600",
)
EXAMPLE_DIGEST = "3f9a1c2e7b5d4a60"


def example_rayjob() -> Obj:
    """The RayJob a 1b pretrain step creates (regenerate the YAML with ``write_example_rayjob()``)."""
    from components.common.config import load_config
    from components.training.rayjob import build_rayjob, rayjob_name

    cfg = load_config("1b", list(EXAMPLE_RAYJOB_SETTINGS))
    image, cuda_image = project_images()
    return build_rayjob(
        cfg,
        name=rayjob_name("pretrain", EXAMPLE_DIGEST),
        namespace=cfg.cluster.namespace,
        entrypoint=f"python -m components.training.job --spec s3://lmforge/training-jobs/{EXAMPLE_DIGEST}/spec.json",
        image=image,
        gpu_image=cuda_image,
    )


def write_example_rayjob() -> None:
    """Rewrite the YAML body of k8s/ray/rayjob-pretrain.yaml from the builder, keeping its header comment."""
    path = K8S / "ray" / "rayjob-pretrain.yaml"
    header = itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines(keepends=True))
    path.write_text("".join(header) + yaml.safe_dump(example_rayjob(), sort_keys=False, width=120))


# --- chart templates without Helm --------------------------------------------------------------

_TEMPLATE_COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.S)
_TEMPLATE_ACTION = re.compile(r"\{\{.*?\}\}", re.S)


def template_skeleton(text: str) -> str:
    """A template's YAML with the Go-template parts neutralised, for checking without Helm.

    Lines holding only actions (control flow, ``include ... | nindent``, ``toYaml``) are dropped;
    inline actions become the scalar ``TEMPLATED``. What remains must still be YAML with the
    object's structure. This cannot prove a template renders (that needs Helm: test_chart_render),
    but it catches broken indentation, unbalanced quotes and missing keys in the literal parts.
    """
    text = _TEMPLATE_COMMENT.sub("", text)
    lines = []
    for line in text.splitlines():
        if _TEMPLATE_ACTION.search(line) and not _TEMPLATE_ACTION.sub("", line).strip():
            continue
        lines.append(_TEMPLATE_ACTION.sub("TEMPLATED", line))
    return "\n".join(lines)


def chart_manifest_templates() -> list[Path]:
    """The chart's templates that produce manifests (helpers and NOTES excluded)."""
    return sorted(p for p in (CHART / "templates").iterdir() if p.suffix in (".yaml", ".yml"))


def check_cli_argv(argvs: list[list[str]]) -> list:
    """Parse each argv with pipelines/cli.py's own parser (the contract between manifests and CLI).

    Returns the parsed namespaces. An argv naming a pipeline the CLI does not offer yet (the
    continual pipeline is registered by the lead later) is reported as a skip naming it, after every
    other argv was checked, so the gap stays visible without hiding real mismatches.
    """
    import pytest

    from pipelines.cli import PIPELINES, build_parser

    parsed, pending = [], []
    for argv in argvs:
        if len(argv) > 1 and argv[0] in ("run", "submit") and argv[1] not in PIPELINES:
            pending.append(" ".join(argv))
            continue
        parsed.append(build_parser().parse_args(argv))
    if pending:
        pytest.skip(f"pipelines.cli offers {sorted(PIPELINES)}; argv left unchecked until it offers theirs: {pending}")
    return parsed
