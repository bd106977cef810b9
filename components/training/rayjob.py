"""The KubeRay RayJob a training step runs as: one ``ray.io/v1`` object built from config, no I/O.

With ``pretrain.launcher=rayjob`` a training step does not run Ray itself: it hands KubeRay one RayJob
(:func:`components.training.kube_launcher.run_rayjob` creates and follows it). KubeRay creates a
RayCluster for that job alone, runs a submitter Kubernetes Job (``ray job submit --no-wait`` then
``ray job logs --follow``, so its pod log is the driver's output) and removes the cluster when the job
ends. Everything that cluster needs is decided here, from ``cluster.*`` and
``pretrain.{num_workers,use_gpu}``:

- **Name** (:func:`step_rayjob_name`): ``lmforge-<stage>-<digest of the step's output URI>``, so a KFP
  retry of the same step finds the RayJob its earlier attempt created and re-attaches, while two steps
  writing different outputs (two continual arms, a run and its WSD decay branches) never share one.
  KubeRay refuses RayJob names that are not DNS-1035 labels of at most 47 characters: 53 for the
  RayCluster name, minus the 6 characters it appends (``MaxRayJobNameLength``,
  ray-operator/controllers/ray/utils/constant.go).
- **Lifecycle**: ``K8sJobMode``; ``backoffLimit: 0``, because retries belong to Ray Train (worker-group
  restarts, in-memory snapshots) and to the launcher (a failed RayJob is replaced on a step retry),
  while a KubeRay retry would start a whole new cluster; ``shutdownAfterJobFinishes`` with
  ``cluster.job_ttl_seconds`` is the safety net for when the step that should delete the RayJob died.
- **Head**: CPU only, ``num-cpus: 0`` so that no training worker lands on it. It runs the driver (the
  entrypoint) and serves the dashboard and job API on 0.0.0.0:8265 for the submitter pod. Its GCS checks
  every node's health each ``cluster.node_health_check_ms`` (``RAY_health_check_*``), so a lost node is
  declared dead, and its ranks restarted, within seconds rather than Ray's default 15-50 s.
- **Workers**: one group. With ``pretrain.use_gpu``, ceil(num_workers / gpus_per_worker_pod) pods of
  ``cluster.gpus_per_worker_pod`` GPUs each in ``gpu_image``, with ``cluster.tolerations`` and
  ``cluster.node_selector``; otherwise ``num_workers`` CPU pods. Plus ``cluster.standby_nodes`` pods of
  the same kind that run no rank (hot standby: a node loss restarts the group on them at once, where a
  replacement pod would first have to be scheduled and start; ``components/training/spares.py``).
- **Every pod**: uid 1000, read-only root filesystem with emptyDirs for /tmp (Ray's session directory)
  and $HOME (caches), no Kubernetes API token. Ray pods add a memory-backed /dev/shm of
  ``cluster.shm_size`` (object store, NCCL, snapshot buffers; the container default is 64 MiB) and the
  S3 keys from Secret ``cluster.s3_secret``, by reference only.
- **Host label**: in-memory fault tolerance puts the pieces of a snapshot on distinct hosts, so each Ray
  node carries the Ray node label ``lmforge.io/host`` = its Kubernetes node name. KubeRay rejects
  ``rayStartParams['labels']`` and validates the group ``labels`` field as static Kubernetes label values
  (``$(VAR)`` is not one), so the label travels in ``RAY_OVERRIDE_LABELS``: a JSON object that every
  ``ray start`` merges over its other labels (Ray's ``ResourceAndLabelSpec``), whose value Kubernetes
  fills in from a downward-API variable (``$(VAR)`` in ``env[].value`` expands variables defined
  earlier in the same list). The same JSON carries ``lmforge.io/role``: ``head`` on the head (it holds no
  snapshot pieces: it runs the GCS and the driver, and is no failure domain of the training state),
  ``train`` on the workers (``components/resilience/placement.py`` places pieces on ``train`` and
  ``keeper`` nodes only).
- **Token auth** (``cluster.ray_token_secret``): ``rayClusterSpec.authOptions`` (mode token, that
  Secret), which KubeRay needs for its own job-status calls to the dashboard and to configure the
  containers it injects (the workers' wait-for-GCS init container); and ``RAY_AUTH_MODE=token`` plus
  ``RAY_AUTH_TOKEN`` (Ray 2.60's names) written out on head, workers and submitter, so the object says
  what every pod gets. The Secret's key is ``auth_token``, the key KubeRay reads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import posixpath
import re
from importlib.metadata import version
from typing import Any

from components.common.config import LifecycleConfig
from components.common.errors import ConfigError

API_VERSION = "ray.io/v1"
KIND = "RayJob"
#: KubeRay's MaxRayJobNameLength.
MAX_NAME_LENGTH = 47
#: The Ray node label holding the Kubernetes node a Ray node runs on (for host-distinct placement).
HOST_LABEL = "lmforge.io/host"
#: The Ray node label saying what a Ray node is for: ``train`` (training workers and a snapshot keeper),
#: ``keeper`` (a snapshot keeper only), anything else (``head``, ``cpu``) holds no snapshot pieces.
ROLE_LABEL = "lmforge.io/role"
PIECE_ROLES = ("train", "keeper")
#: Pod label naming the RayJob on every pod of it: ``kubectl get pods -l lmforge.io/rayjob=<name>``.
RAYJOB_LABEL = "lmforge.io/rayjob"
#: KubeRay's SubmitterContainerName; the launcher reads this container's log.
SUBMITTER_CONTAINER = "ray-job-submitter"
#: The key KubeRay reads from the token Secret (RAY_AUTH_TOKEN_SECRET_KEY).
TOKEN_SECRET_KEY = "auth_token"
#: The images' user and home directory (images/Dockerfile.*).
UID = 1000
HOME = "/home/lmforge"
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
# `ray job submit` and `ray job logs --follow` only: small and fixed.
SUBMITTER_RESOURCES = {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}

_NODE_NAME_VAR = "LMFORGE_NODE_NAME"
_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def rayjob_name(stage: str, digest: str) -> str:
    """``lmforge-<stage>-<digest>``: the same for every attempt of one step, a valid KubeRay RayJob name.

    The digest (the step's content hash) keeps up to 16 characters; the stage is shortened first when
    the whole would pass 47 characters.
    """
    tag = re.sub(r"[^a-z0-9]", "", digest.lower())[:16]
    if not tag:
        raise ValueError(f"rayjob_name: digest {digest!r} has no letters or digits to name the RayJob by")
    room = MAX_NAME_LENGTH - len("lmforge--") - len(tag)
    stage_part = re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")[:room].rstrip("-")
    return "-".join(part for part in ("lmforge", stage_part, tag) if part)


def step_rayjob_name(stage: str, output_uri: str) -> str:
    """The RayJob name of the training step that writes ``output_uri``: :func:`rayjob_name` over a
    sha256 of the whole URI. The output URI is the step's content address, fixed across KFP retries and
    different for every step; its last segment alone is not (a WSD decay branch writes
    ``<run>/branches/step-<N>``, the same last segment for every run that branches at step N)."""
    return rayjob_name(stage, hashlib.sha256(output_uri.rstrip("/").encode()).hexdigest())


def build_rayjob(
    cfg: LifecycleConfig,
    *,
    name: str,
    namespace: str,
    entrypoint: str,
    image: str,
    gpu_image: str,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole RayJob for one training run.

    Args:
        cfg: the step's config; reads ``cluster.*`` and ``pretrain.{num_workers,use_gpu,data_cache_dir}``.
        name: from :func:`rayjob_name`.
        namespace: where it runs; '' = the namespace of the step pod that creates it (the launcher fills it in).
        entrypoint: the driver command the submitter hands to ``ray job submit``.
        image: image of the head, CPU workers and submitter (the step's own image).
        gpu_image: image of GPU workers (CUDA build of the same code and Python).
        labels: extra labels for the RayJob and every pod of it (e.g. the pipeline run).
    """
    c, p = cfg.cluster, cfg.pretrain
    if not image:
        raise ConfigError("cluster.image: no image for the Ray head and submitter; set cluster.image")
    if p.use_gpu and not gpu_image:
        raise ConfigError(
            "cluster.gpu_image: pretrain.use_gpu needs a CUDA image for the workers; set cluster.gpu_image"
        )
    if c.job_ttl_seconds < 0:
        raise ConfigError(f"cluster.job_ttl_seconds: must be >= 0, got {c.job_ttl_seconds}")
    if c.job_deadline_seconds < 0:
        raise ConfigError(f"cluster.job_deadline_seconds: must be >= 0 (0 = no deadline), got {c.job_deadline_seconds}")

    extra = dict(labels or {})
    token_env = _token_env(c.ray_token_secret)
    mlflow_env = _mlflow_env(c.mlflow_secret)
    head_env = _ray_node_env(c.s3_secret, "head") + _health_check_env(c.node_health_check_ms) + token_env + mlflow_env
    ray_env = _ray_node_env(c.s3_secret, "train") + token_env + mlflow_env
    cache = _cache_volume(p.data_cache_dir)

    def pod_labels(component: str) -> dict[str, str]:
        return {
            **extra,
            "app.kubernetes.io/name": "lmforge",
            "app.kubernetes.io/component": component,
            RAYJOB_LABEL: name,
        }

    head = _ray_pod(
        "ray-head", image, c.head_cpu, c.head_memory, env=head_env, shm=c.shm_size, cache=cache, ports=HEAD_PORTS
    )
    if p.use_gpu:
        replicas = math.ceil(p.num_workers / c.gpus_per_worker_pod)
        worker = _ray_pod(
            "ray-worker", gpu_image, c.worker_cpu, c.worker_memory, env=ray_env, shm=c.shm_size, cache=cache,
            gpus={c.gpu_resource: str(c.gpus_per_worker_pod)},
        )  # fmt: skip
        if c.tolerations:
            worker["tolerations"] = copy.deepcopy(list(c.tolerations))
        if c.node_selector:
            worker["nodeSelector"] = _node_selector(c.node_selector)
        group, component = "gpu", "ray-worker-gpu"
    else:
        replicas = p.num_workers
        worker = _ray_pod("ray-worker", image, c.worker_cpu, c.worker_memory, env=ray_env, shm=c.shm_size, cache=cache)
        group, component = "cpu", "ray-worker-cpu"
    replicas += c.standby_nodes  # idle until a node is lost: Ray Train's placement group then uses them

    cluster: dict[str, Any] = {
        # The Ray this code was installed with; the images hold the same (checked in tests/unit/deploy).
        # Read from the distribution's metadata: the same string as ray.__version__ without importing ray.
        "rayVersion": version("ray"),
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {"metadata": {"labels": pod_labels("ray-head")}, "spec": head},
        },
        "workerGroupSpecs": [
            {
                "groupName": group,
                # A fixed size: Ray Train asks for exactly num_workers workers (the standby pods wait for a
                # node loss), so nothing autoscales.
                "replicas": replicas,
                "minReplicas": replicas,
                "maxReplicas": replicas,
                "rayStartParams": {},
                "template": {"metadata": {"labels": pod_labels(component)}, "spec": worker},
            }
        ],
    }
    if c.ray_token_secret:
        cluster["authOptions"] = {"mode": "token", "secretName": c.ray_token_secret}

    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": c.job_ttl_seconds,
        "backoffLimit": 0,
        "submitterPodTemplate": {
            "metadata": {"labels": pod_labels("ray-job-submitter")},
            "spec": _submitter_pod(image, token_env),
        },
        "rayClusterSpec": cluster,
    }
    if c.job_deadline_seconds > 0:
        spec["activeDeadlineSeconds"] = c.job_deadline_seconds
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**extra, "app.kubernetes.io/name": "lmforge", "app.kubernetes.io/component": "training-job"},
        },
        "spec": spec,
    }


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _token_env(secret: str) -> list[dict]:
    if not secret:
        return []
    return [{"name": "RAY_AUTH_MODE", "value": "token"}, _secret_env("RAY_AUTH_TOKEN", secret, TOKEN_SECRET_KEY)]


def _mlflow_env(secret: str) -> list[dict]:
    """MLflow basic-auth credentials (cluster.mlflow_secret) for the driver and workers that log to MLflow."""
    if not secret:
        return []
    return [
        _secret_env("MLFLOW_TRACKING_USERNAME", secret, "username"),
        _secret_env("MLFLOW_TRACKING_PASSWORD", secret, "password"),
    ]


def _ray_node_env(s3_secret: str, role: str) -> list[dict]:
    labels = {HOST_LABEL: f"$({_NODE_NAME_VAR})", ROLE_LABEL: role}
    return [
        # Order matters: $(LMFORGE_NODE_NAME) below expands only because it is defined first.
        {"name": _NODE_NAME_VAR, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "RAY_OVERRIDE_LABELS", "value": json.dumps(labels)},
        _secret_env("AWS_ACCESS_KEY_ID", s3_secret, "AWS_ACCESS_KEY_ID"),
        _secret_env("AWS_SECRET_ACCESS_KEY", s3_secret, "AWS_SECRET_ACCESS_KEY"),
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]


#: failed GCS health checks after which a node is declared dead (Ray's default is 5)
HEALTH_CHECK_FAILURES = 3


def _health_check_env(period_ms: int) -> list[dict]:
    """The GCS's node health check (it runs on the head; Ray reads ``RAY_<setting>`` into its config): a check
    every ``period_ms`` that may take as long, dead after :data:`HEALTH_CHECK_FAILURES` failures. A lost node's
    ranks are then restarted elsewhere within ~3 periods, not Ray's 15-50 s; none when ``period_ms`` is 0."""
    if period_ms <= 0:
        return []
    return [
        {"name": "RAY_health_check_period_ms", "value": str(period_ms)},
        {"name": "RAY_health_check_timeout_ms", "value": str(period_ms)},
        {"name": "RAY_health_check_failure_threshold", "value": str(HEALTH_CHECK_FAILURES)},
    ]


def _cache_volume(data_cache_dir: str) -> str:
    """The mount path a per-node data cache needs, or '' when it lives in a directory already writable.

    The root filesystem is read-only; /tmp and $HOME (the working directory, so relative paths too) are
    emptyDirs already.
    """
    if not data_cache_dir or not posixpath.isabs(data_cache_dir):
        return ""
    path = posixpath.normpath(data_cache_dir)
    writable = ("/tmp", HOME)
    return "" if any(path == w or path.startswith(w + "/") for w in writable) else path


def _node_selector(selector: dict) -> dict[str, str]:
    # nodeSelector values are strings; YAML profiles easily give `true` or `1` unquoted.
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in selector.items()}


def _volumes(shm: str, cache: str) -> tuple[list[dict], list[dict]]:
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME}]
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    if cache:
        mounts.append({"name": "data-cache", "mountPath": cache})
        volumes.append({"name": "data-cache", "emptyDir": {}})
    return mounts, volumes


def _ray_pod(
    container_name: str,
    image: str,
    cpu: str,
    memory: str,
    *,
    env: list[dict],
    shm: str,
    cache: str,
    ports: dict[str, int] | None = None,
    gpus: dict[str, str] | None = None,
) -> dict[str, Any]:
    resources = {"cpu": cpu, "memory": memory, **(gpus or {})}
    mounts, volumes = _volumes(shm, cache)
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": copy.deepcopy(env),
        # Requests = limits: Guaranteed QoS, so a training pod is the last to be evicted.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
        "volumeMounts": mounts,
    }
    if ports:
        container["ports"] = [{"name": n, "containerPort": port} for n, port in ports.items()]
    return {
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(_POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }


def _submitter_pod(image: str, token_env: list[dict]) -> dict[str, Any]:
    # KubeRay fills in the command (ray job submit ... ; ray job logs --follow) when none is given.
    mounts, volumes = _volumes("", "")
    container: dict[str, Any] = {
        "name": SUBMITTER_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": copy.deepcopy(SUBMITTER_RESOURCES),
        "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
        "volumeMounts": mounts,
    }
    if token_env:
        container["env"] = copy.deepcopy(token_env)
    return {
        "restartPolicy": "Never",
        # It talks to the Ray dashboard only, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(_POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }
