"""Run a RayJob to its end through the Kubernetes API: create or re-attach, follow, report, delete.

:func:`run_rayjob` is what a training step does with ``pretrain.launcher=rayjob``, given the manifest
from :func:`components.training.rayjob.build_rayjob`. It talks to the API server only through the
official ``kubernetes`` client, within the rights of the ``lmforge-pipeline`` Role (k8s/rbac): RayJobs
create/get/list/watch/delete, pods list/get and pods/log.

**Re-attach.** The RayJob's name comes from the step's content hash, so a KFP retry of a step finds the
RayJob its earlier attempt created:

- absent → create it; a 409 means a concurrent attempt created it first: follow that one;
- initializing or running → follow it, so no second cluster starts;
- succeeded → return at once (``reattached=True``): the caller reuses the output;
- failed → delete it and wait until it is gone, then create it again (counted in ``retries``). The
  deletion is foreground: the RayJob disappears only after its RayCluster and submitter Job did, and
  that Job carries the RayJob's name, so a new RayJob created earlier would adopt the old, failed Job.

**Follow.** The status is followed with the watch API, from the ``resourceVersion`` of a list narrowed
to this one name. A watch that ends (the server's timeout) resumes from the last version seen; a 410
Gone (that version was compacted away) lists again. KubeRay's verdict is final when
``jobDeploymentStatus`` is Complete (jobStatus SUCCEEDED; STOPPED counts as a failure), Failed (reason
AppFailed, SubmissionFailed, DeadlineExceeded, ...) or ValidationFailed. Meanwhile
:class:`~components.training.kube_logs.SubmitterLogs` streams the driver's output into ``log``.

**End.** A finished RayJob is deleted, succeeded or failed, so nothing is left behind; a failure raises
:class:`TrainingJobError` in one line: the RayJob, KubeRay's reason and message, and the driver's last
line. Running past ``timeout_seconds`` and a cancelled step (KeyboardInterrupt) delete it too. When the
API server cannot be reached (after retries) the RayJob is left running and the error says so: the
step's retry re-attaches to it instead of throwing the work away. Nothing from the manifest (Secret
names aside) reaches the log, and no credential is in the manifest to begin with.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch

from components.common.errors import ConfigError, TrainingJobError
from components.common.log import get_logger
from components.training.kube_logs import SubmitterLogs
from components.training.rayjob import API_VERSION, SUBMITTER_CONTAINER

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "rayjobs"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
SUCCEEDED, FAILED = "SUCCEEDED", "FAILED"
# Answers worth another try: throttling and the API server's own trouble.
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RayJobOutcome:
    """How a RayJob ended. ``reattached``: this call found it already created (by an earlier attempt or
    a concurrent one); ``retries``: failed RayJobs it deleted and created again."""

    name: str
    namespace: str
    job_status: str
    deployment_status: str
    reattached: bool
    retries: int
    seconds: float


def run_rayjob(
    manifest: dict[str, Any],
    *,
    api_client: client.ApiClient | None = None,
    log: Callable[[str], None] | None = None,
    timeout_seconds: float | None = None,
    watch_seconds: int = 300,
    poll_seconds: float = 2.0,
    log_drain_seconds: float = 30.0,
    api_attempts: int = 8,
    namespace_file: str = SERVICE_ACCOUNT_NAMESPACE,
) -> RayJobOutcome:
    """Create (or re-attach to) the RayJob, follow it to the end, delete it; raise on failure.

    Args:
        manifest: a RayJob from ``build_rayjob``; ``metadata.namespace`` '' = this pod's namespace.
        api_client: the API connection; None = in-cluster config (a step pod), else the kubeconfig.
        log: receives status changes and each driver log line; default: the ``lmforge.rayjob`` logger.
        timeout_seconds: give up (and delete the RayJob) after this long; None = wait as long as it runs
            (``cluster.job_deadline_seconds`` lets KubeRay enforce a deadline instead).
        watch_seconds: server-side length of one watch request before it is renewed.
        poll_seconds: pause between looks for the submitter pod, and the first back-off after an API error.
        log_drain_seconds: how long the end of the driver's log may take to arrive after the job ended.
        api_attempts: tries per API call on connection errors, throttling and 5xx (back-off doubles).
        namespace_file: where a pod finds its own namespace.
    """
    started = time.monotonic()
    manifest = copy.deepcopy(manifest)
    meta = manifest["metadata"]
    meta["namespace"] = meta.get("namespace") or _own_namespace(namespace_file)
    launcher = _Launcher(
        api_client or _default_api_client(),
        manifest,
        log=log or get_logger("lmforge.rayjob").info,
        deadline=None if timeout_seconds is None else started + timeout_seconds,
        watch_seconds=watch_seconds,
        poll_seconds=poll_seconds,
        log_drain_seconds=log_drain_seconds,
        api_attempts=api_attempts,
    )
    status, reattached, retries = launcher.run()
    return RayJobOutcome(
        name=meta["name"],
        namespace=meta["namespace"],
        job_status=status.get("jobStatus", ""),
        deployment_status=status.get("jobDeploymentStatus", ""),
        reattached=reattached,
        retries=retries,
        seconds=time.monotonic() - started,
    )


def verdict(rayjob: dict) -> str | None:
    """SUCCEEDED, FAILED, or None while KubeRay has not decided."""
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus", "")
    if deployment == "Complete":
        return SUCCEEDED if status.get("jobStatus") == SUCCEEDED else FAILED
    if deployment in ("Failed", "ValidationFailed"):
        return FAILED
    return None


class _GaveUp(Exception):
    """Internal: the launcher's own timeout passed."""


class _Launcher:
    def __init__(
        self, api_client, manifest, *, log, deadline, watch_seconds, poll_seconds, log_drain_seconds, api_attempts
    ):
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.manifest = manifest
        self.name = manifest["metadata"]["name"]
        self.ns = manifest["metadata"]["namespace"]
        self.ref = f"RayJob {self.ns}/{self.name}"
        self.log = log
        self.deadline = deadline
        self.watch_seconds = watch_seconds
        self.poll_seconds = poll_seconds
        self.log_drain_seconds = log_drain_seconds
        self.api_attempts = api_attempts
        self._shown: tuple[str, str] | None = None

    # --- the lifecycle --------------------------------------------------------------------------

    def run(self) -> tuple[dict, bool, int]:
        reattached, retries = False, 0
        current, _ = self._read()
        if current is not None and current["metadata"].get("deletionTimestamp"):
            self.log(f"[{self.ref}] an earlier attempt is being deleted; waiting until it is gone")
            self._wait_gone()
            current = None
        if current is not None:
            outcome = verdict(current)
            if outcome == SUCCEEDED:
                self.log(f"[{self.ref}] already succeeded in an earlier attempt; reusing its output")
                self._delete()
                return current.get("status") or {}, True, 0
            if outcome == FAILED:
                self.log(f"[{self.ref}] an earlier attempt failed ({_reason(current)}); deleting it to start again")
                self._delete()
                self._wait_gone()
                current, retries = None, 1
            else:
                self.log(f"[{self.ref}] re-attaching to the RayJob an earlier attempt started")
                reattached = True
        if current is None:
            current, raced = self._create()
            reattached = reattached or raced

        logs = SubmitterLogs(
            self.core, self.ns, self.name,
            container=_submitter_container(self.manifest),
            not_before=current["metadata"]["creationTimestamp"],
            log=self.log, poll_seconds=self.poll_seconds,
        ).start()  # fmt: skip
        try:
            final = self._follow(current)
        except _GaveUp:
            logs.finish(0)
            self._delete()
            raise TrainingJobError(
                f"{self.ref} did not finish within the launcher's timeout; deleted it"
                + (f"; last driver line: {_clip(logs.last_line)}" if logs.last_line else "")
            ) from None
        except KeyboardInterrupt:
            logs.finish(0)
            self._delete()  # the step was cancelled: stop the cluster too
            raise
        except BaseException:
            logs.finish(0)
            raise
        logs.finish(self.log_drain_seconds)
        self._delete()
        if verdict(final) == FAILED:
            raise TrainingJobError(_failure_line(self.ref, final, logs.last_line))
        self.log(f"[{self.ref}] succeeded; {logs.lines} driver log lines")
        return final.get("status") or {}, reattached, retries

    def _create(self) -> tuple[dict, bool]:
        """(the created RayJob, False), or (the one a concurrent attempt created, True) on a 409."""
        try:
            created = self._call(
                "create",
                self.custom.create_namespaced_custom_object,
                GROUP, VERSION, self.ns, PLURAL, self.manifest,
                field_manager="lmforge", field_validation="Strict",
            )  # fmt: skip
        except TrainingJobError as e:
            if not (isinstance(e.__cause__, ApiException) and e.__cause__.status == 409):
                raise
            current, _ = self._read()
            if current is None:  # created and deleted again in between: rare; say so instead of looping
                raise TrainingJobError(
                    f"{self.ref} was created concurrently and is already gone; retry the step"
                ) from e
            self.log(f"[{self.ref}] created by a concurrent attempt; following it")
            return current, True
        self.log(f"[{self.ref}] created ({_shape(self.manifest)})")
        return created, False

    def _follow(self, current: dict) -> dict:
        """Watch until KubeRay's verdict is final; return the RayJob as it was then."""
        resource_version = current["metadata"].get("resourceVersion", "")
        failures = 0
        while True:
            if current is None:
                raise TrainingJobError(f"{self.ref} was deleted by someone else while it ran")
            self._show(current)
            if verdict(current) is not None:
                return current
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise _GaveUp()
            try:
                current, resource_version = self._watch(current, resource_version)
                failures = 0
            except ApiException as e:
                if e.status == 410:  # our version was compacted away: start again from a fresh list
                    current, resource_version = self._read()
                    continue
                if e.status not in _TRANSIENT_STATUS:
                    raise TrainingJobError(f"{self.ref}: watch refused: {_api_message(e)}{_hint(e)}") from e
                failures = self._transient(e, failures, "watch")
                current, resource_version = self._read()
            except (urllib3.exceptions.HTTPError, OSError) as e:
                failures = self._transient(e, failures, "watch")
                current, resource_version = self._read()

    def _watch(self, current: dict, resource_version: str) -> tuple[dict | None, str]:
        """One watch request from ``resource_version``; returns at the first final state, a deletion or
        when the server ends the request."""
        timeout = self.watch_seconds
        if self.deadline is not None:
            timeout = max(1, min(timeout, int(self.deadline - time.monotonic()) + 1))
        stream = Watch().stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL,
            field_selector=f"metadata.name={self.name}", resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=timeout, _request_timeout=(30, timeout + 30),
        )  # fmt: skip
        try:
            for event in stream:
                obj = event["raw_object"]
                resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                if event["type"] == "BOOKMARK":
                    continue
                if event["type"] == "DELETED":
                    return None, resource_version
                current = obj
                self._show(current)
                if verdict(current) is not None:
                    break
        finally:
            stream.close()
        return current, resource_version

    def _read(self) -> tuple[dict | None, str]:
        """(the RayJob or None, the list's resourceVersion to watch from)."""
        listing = self._call(
            "list", self.custom.list_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL,
            field_selector=f"metadata.name={self.name}",
        )  # fmt: skip
        items = listing.get("items") or []
        return (items[0] if items else None), listing["metadata"]["resourceVersion"]

    def _delete(self) -> None:
        try:
            self._call(
                "delete", self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL, self.name,
                propagation_policy="Foreground",
            )  # fmt: skip
        except TrainingJobError as e:
            if not (isinstance(e.__cause__, ApiException) and e.__cause__.status == 404):
                raise

    def _wait_gone(self) -> None:
        """Until the RayJob is gone; with foreground deletion, after its RayCluster and submitter Job."""
        current, resource_version = self._read()
        failures = 0
        while current is not None:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise TrainingJobError(f"{self.ref} was still being deleted when the launcher's timeout passed")
            try:
                for event in Watch().stream(
                    self.custom.list_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL,
                    field_selector=f"metadata.name={self.name}", resource_version=resource_version,
                    timeout_seconds=self.watch_seconds, _request_timeout=(30, self.watch_seconds + 30),
                ):  # fmt: skip
                    if event["type"] == "DELETED":
                        return
                    resource_version = event["raw_object"]["metadata"].get("resourceVersion", resource_version)
            except ApiException as e:
                if e.status != 410 and e.status not in _TRANSIENT_STATUS:
                    raise TrainingJobError(f"{self.ref}: watching its deletion refused: {_api_message(e)}") from e
                if e.status != 410:
                    failures = self._transient(e, failures, "watch")
            except (urllib3.exceptions.HTTPError, OSError) as e:
                failures = self._transient(e, failures, "watch")
            current, resource_version = self._read()

    # --- API calls ---------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` with retries on transient errors; other errors become one line."""
        failures = 0
        while True:
            try:
                return fn(*args, _request_timeout=(30, 60), **kwargs)
            except ApiException as e:
                if e.status not in _TRANSIENT_STATUS:
                    raise TrainingJobError(f"{self.ref}: {what} refused: {_api_message(e)}{_hint(e)}") from e
                failures = self._transient(e, failures, what)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                failures = self._transient(e, failures, what)

    def _transient(self, error: Exception, failures: int, what: str) -> int:
        """Back off after a transient error, or give up when the budget is spent (the RayJob stays)."""
        failures += 1
        detail = _api_message(error) if isinstance(error, ApiException) else f"{type(error).__name__}: {error}"
        if failures >= self.api_attempts:
            raise TrainingJobError(
                f"{self.ref}: {what} failed {failures} times, last: {_clip(detail)}; the RayJob is left as it is, "
                "so a retry of this step re-attaches to it"
            ) from error
        self.log(f"[{self.ref}] {what}: {_clip(detail)}; trying again")
        time.sleep(min(self.poll_seconds * 2 ** (failures - 1), 30.0))
        return failures

    def _show(self, rayjob: dict) -> None:
        status = rayjob.get("status") or {}
        shown = (status.get("jobDeploymentStatus", ""), status.get("jobStatus", ""))
        if shown != self._shown:
            self._shown = shown
            self.log(f"[{self.ref}] deployment {shown[0] or 'New'}, job {shown[1] or '-'}")


def _own_namespace(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(
            f"cluster.namespace is '' (the step pod's own namespace) but {path} cannot be read ({e.strerror}): "
            "not running in a pod; set cluster.namespace"
        ) from e


def _default_api_client() -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as e:
            raise ConfigError(
                f"pretrain.launcher=rayjob needs the Kubernetes API: no in-cluster service account and no usable "
                f"kubeconfig ({e}); run the step in the cluster or set KUBECONFIG"
            ) from e
    return client.ApiClient(configuration)


def _submitter_container(manifest: dict) -> str:
    template = manifest["spec"].get("submitterPodTemplate") or {}
    containers = (template.get("spec") or {}).get("containers") or [{}]
    return containers[0].get("name") or SUBMITTER_CONTAINER


def _shape(manifest: dict) -> str:
    groups = manifest["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])
    return ", ".join(f"{g['replicas']} {g['groupName']} worker pod(s)" for g in groups) or "head only"


def _reason(rayjob: dict) -> str:
    status = rayjob.get("status") or {}
    parts = [status.get("reason") or status.get("jobDeploymentStatus") or "failed"]
    if status.get("jobStatus"):
        parts.append(f"job {status['jobStatus']}")
    return ", ".join(parts)


def _failure_line(ref: str, rayjob: dict, last_line: str) -> str:
    message = (rayjob.get("status") or {}).get("message", "")
    line = f"{ref} failed ({_reason(rayjob)})"
    if message:
        line += f": {_clip(message)}"
    if last_line:
        line += f"; last driver line: {_clip(last_line)}"
    return line


def _clip(text: str, limit: int = 300) -> str:
    """One line: whitespace runs (newlines included) become one space; long texts are cut."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _api_message(e: ApiException) -> str:
    """``403 Forbidden: <the server's message>``, without the response headers ApiException prints."""
    message = ""
    try:
        message = json.loads(e.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = (e.body or "") if isinstance(e.body, str) else ""
    return _clip(f"{e.status} {e.reason}" + (f": {message}" if message else ""))


def _hint(e: ApiException) -> str:
    if e.status in (401, 403):
        return "; the step's ServiceAccount needs the lmforge-pipeline Role (k8s/rbac/pipeline-rbac.yaml)"
    if e.status == 404:
        return "; is the KubeRay operator (the ray.io/v1 CRDs) installed in this cluster?"
    return ""
