"""A stand-in for the Kubernetes API server: just what the RayJob launcher uses, on 127.0.0.1.

No kube-apiserver and no KubeRay operator can run on the development machines, so the launcher's tests
drive the real ``kubernetes`` client against this server. It speaks the API's HTTP protocol for:

    POST   /apis/ray.io/v1/namespaces/{ns}/rayjobs            create
    GET    /apis/ray.io/v1/namespaces/{ns}/rayjobs[/{name}]    get, list, watch (fieldSelector metadata.name=)
    DELETE /apis/ray.io/v1/namespaces/{ns}/rayjobs/{name}     delete (propagationPolicy)
    GET    /api/v1/namespaces/{ns}/pods[/{name}]               get, list (labelSelector k=v,...)
    GET    /api/v1/namespaces/{ns}/pods/{name}/log             follow, timestamps, sinceSeconds, container

with the behaviour the launcher depends on:

- every created RayJob is checked against KubeRay's CRD schema (../shared/crds): 422 Invalid naming the
  field; with ``fieldValidation=Strict`` an unknown field is a 400, as a strict API server answers;
- 409 AlreadyExists for a name in use (also while that object is being deleted), 404 NotFound;
- one resourceVersion counter for all changes; a watch replays the changes after its resourceVersion,
  then streams new ones as JSON lines until its timeoutSeconds; a version older than the last
  compaction gets an ERROR event with a 410 Gone Status, as from a real server;
- foreground deletion keeps the object (deletionTimestamp set) for ``deletion_seconds`` before it is
  gone with its pods, like the garbage collector removing the RayCluster and submitter Job first;
- a pod's log streams chunked and, with ``follow``, stays open until the pod finishes.

The test plays the operator with :meth:`set_status`, :meth:`start_submitter`, :meth:`write_log`,
:meth:`finish_pod`, and the cluster's hiccups with :meth:`compact`, :meth:`break_streams` and
:attr:`unavailable`.
:attr:`journal` records what happened to RayJobs, in order, for assertions.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..deploy.k8s_checks import crd_violations

RAYJOBS = re.compile(r"^/apis/ray\.io/v1/namespaces/([^/]+)/rayjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class KubeAPI:
    def __init__(self, *, deletion_seconds: float = 0.05):
        self.deletion_seconds = deletion_seconds
        self.journal: list[tuple[str, str]] = []  # (what, rayjob name): create, conflict (409), delete, gone
        self.deletions: list[tuple[str, str]] = []  # (rayjob name, propagationPolicy)
        self.watching = 0  # open watch requests
        self.gone_served = 0  # watches answered with 410 Gone
        self.log_requests: dict[str, int] = {}  # pod → pods/log requests
        self.unavailable = 0  # answer this many of the next requests with 503, as an overloaded server does
        #: Called with the request body before a create is handled, e.g. to let a "concurrent attempt" win.
        self.before_create: Callable[[dict], None] | None = None
        self._cond = threading.Condition()
        self._rv = 0
        self._rayjobs: dict[tuple[str, str], dict] = {}
        self._pods: dict[tuple[str, str], dict] = {}
        self._logs: dict[tuple[str, str], list[tuple[float, str, str]]] = {}  # (written at, stamp, text)
        self._history: list[tuple[int, str, dict]] = []  # (resourceVersion, event type, rayjob)
        self._compacted = 0
        self._epoch = 0  # bumped to end every open stream
        self._stopping = False
        self._timers: list[threading.Timer] = []
        self._last_stamp = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for timer in self._timers:
                timer.cancel()
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- what the operator (and the test) does ------------------------------------------------------

    def put_rayjob(self, manifest: dict, status: dict | None = None) -> dict:
        """A RayJob as an earlier attempt left it, created without going through the API."""
        with self._cond:
            obj = self._store_new(manifest["metadata"]["namespace"], copy.deepcopy(manifest))
            if status:
                obj["status"] = dict(status)
                self._changed("MODIFIED", obj)
            return copy.deepcopy(obj)

    def rayjob(self, namespace: str, name: str) -> dict | None:
        with self._cond:
            obj = self._rayjobs.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def set_status(self, namespace: str, name: str, **status: Any) -> None:
        """Merge ``status`` into the RayJob's status, as KubeRay's status updates do."""
        with self._cond:
            obj = self._rayjobs[(namespace, name)]
            obj["status"] = {**(obj.get("status") or {}), **status}
            self._changed("MODIFIED", obj)

    def compact(self) -> None:
        """Forget the change history up to now (etcd compaction) and end every open stream: a watcher that
        resumes from a version before the latest gets 410 Gone."""
        with self._cond:
            self._compacted = self._rv
            self._history.clear()
            self._epoch += 1
            self._cond.notify_all()

    def break_streams(self) -> None:
        """End every open watch and log stream mid-way, as an API server restart does."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def start_submitter(self, namespace: str, rayjob: str, *, phase: str = "Running") -> str:
        """The submitter pod KubeRay's Job runs for ``rayjob``, labelled as KubeRay and the Job controller label it."""
        with self._cond:
            spec = self._rayjobs[(namespace, rayjob)]["spec"]
            template = spec.get("submitterPodTemplate") or {}
            labels = {
                **((template.get("metadata") or {}).get("labels") or {}),
                "ray.io/originated-from-cr-name": rayjob,
                "ray.io/originated-from-crd": "RayJob",
                "app.kubernetes.io/created-by": "kuberay-operator",
                "batch.kubernetes.io/job-name": rayjob,
                "job-name": rayjob,
            }
            container = ((template.get("spec") or {}).get("containers") or [{"name": "ray-job-submitter"}])[0]["name"]
            # The Job controller waits at least 10 s before the next attempt's pod.
            earlier = [p for p in self._pods.values() if _owned_by(p, rayjob) and "job-name" in p["metadata"]["labels"]]
            created = max([time.time()] + [_epoch_of(p["metadata"]["creationTimestamp"]) + 10 for p in earlier])
            return self._new_pod(namespace, f"{rayjob}-{uuid.uuid4().hex[:5]}", labels, container, phase, created)

    def start_head(self, namespace: str, rayjob: str) -> str:
        """The head pod of the RayJob's cluster: KubeRay's node labels, not the submitter's."""
        with self._cond:
            template = self._rayjobs[(namespace, rayjob)]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
            cluster = f"{rayjob}-{uuid.uuid4().hex[:5]}"
            labels = {
                **((template.get("metadata") or {}).get("labels") or {}),
                "ray.io/cluster": cluster,
                "ray.io/node-type": "head",
                "ray.io/is-ray-node": "yes",
                "app.kubernetes.io/created-by": "kuberay-operator",
            }
            return self._new_pod(
                namespace, f"{cluster}-head", labels, template["spec"]["containers"][0]["name"], "Running"
            )

    def set_pod_phase(self, namespace: str, pod: str, phase: str) -> None:
        with self._cond:
            self._pods[(namespace, pod)]["status"]["phase"] = phase
            self._cond.notify_all()

    def write_log(self, namespace: str, pod: str, *lines: str) -> None:
        with self._cond:
            for line in lines:
                self._logs[(namespace, pod)].append((time.time(), self._stamp(), line))
            self._cond.notify_all()

    def finish_pod(self, namespace: str, pod: str, phase: str = "Succeeded") -> None:
        self.set_pod_phase(namespace, pod, phase)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (checked under the server's lock, on every change and every
        10 ms, since it may read the test's own state too); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if time.monotonic() > deadline:
                    raise TimeoutError("the stand-in API server never reached the awaited state")
                self._cond.wait(0.01)

    def paused(self) -> threading.Condition:
        """``with kube.paused():`` holds the server's lock, so that no client sees the changes made inside
        before all of them are made."""
        return self._cond

    def exists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._rayjobs

    # --- state changes (under the lock) ----------------------------------------------------------

    def _store_new(self, namespace: str, obj: dict) -> dict:
        meta = obj.setdefault("metadata", {})
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        obj.pop("status", None)  # status is a subresource: a create cannot set it
        self._rayjobs[(namespace, meta["name"])] = obj
        self._changed("ADDED", obj)
        return obj

    def _changed(self, kind: str, obj: dict) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append((self._rv, kind, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _remove(self, namespace: str, name: str) -> None:
        with self._cond:
            obj = self._rayjobs.pop((namespace, name), None)
            if obj is None:
                return
            for key in [k for k, p in self._pods.items() if _owned_by(p, name) and k[0] == namespace]:
                del self._pods[key]
            self.journal.append(("gone", name))
            self._changed("DELETED", obj)

    def _new_pod(self, namespace: str, name: str, labels: dict, container: str, phase: str, created: float = 0) -> str:
        self._pods[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "labels": labels,
                "creationTimestamp": datetime.fromtimestamp(created or time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "spec": {"containers": [{"name": container, "image": "stand-in"}]},
            "status": {"phase": phase},
        }
        self._logs[(namespace, name)] = []
        self._cond.notify_all()
        return name

    def _stamp(self) -> str:
        """RFC 3339 with nanoseconds and trailing zeros dropped, as the kubelet writes; strictly increasing."""
        ns = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = ns
        seconds, nanos = divmod(ns, 1_000_000_000)
        fraction = f"{nanos:09d}".rstrip("0")
        base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _epoch_of(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _owned_by(pod: dict, rayjob: str) -> bool:
    labels = pod["metadata"]["labels"]
    return labels.get("ray.io/originated-from-cr-name") == rayjob or labels.get("lmforge.io/rayjob") == rayjob


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(api: KubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and each chunk are separate small writes: without TCP_NODELAY, Nagle's algorithm and
        # delayed ACKs add 40 ms to every response.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # quiet: the test output is the launcher's
            pass

        # --- routing ------------------------------------------------------------------------------

        def _refused(self) -> bool:
            with api._cond:
                if api.unavailable <= 0:
                    return False
                api.unavailable -= 1
            self._json(503, _status(503, "ServiceUnavailable", "the server is currently unable to handle the request"))
            return True

        def do_GET(self) -> None:
            if self._refused():
                return
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if m := RAYJOBS.match(url.path):
                ns, name = m.groups()
                if name:
                    return self._get_rayjob(ns, name)
                if _flag(query.get("watch")):
                    return self._watch(ns, query)
                return self._list_rayjobs(ns, query)
            if m := PODS.match(url.path):
                ns, name, log = m.groups()
                if log:
                    return self._pod_log(ns, name, query)
                if name:
                    with api._cond:
                        pod = copy.deepcopy(api._pods.get((ns, name)))
                    return self._json(200, pod) if pod else self._not_found("pods", name)
                return self._list_pods(ns, query)
            self._json(404, _status(404, "NotFound", f"the server could not find the requested resource {url.path}"))

        def do_POST(self) -> None:
            body = self._body()
            if self._refused():
                return
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            m = RAYJOBS.match(url.path)
            if not m or m.group(2):
                return self._json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
            self._create(m.group(1), body, query.get("fieldValidation", ""))

        def do_DELETE(self) -> None:
            body = self._body() or {}
            if self._refused():
                return
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            m = RAYJOBS.match(url.path)
            if not m or not m.group(2):
                return self._json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
            self._delete(
                m.group(1), m.group(2), query.get("propagationPolicy") or body.get("propagationPolicy") or "Background"
            )

        # --- RayJobs ------------------------------------------------------------------------------

        def _create(self, ns: str, body: dict, field_validation: str) -> None:
            if api.before_create:
                api.before_create(body)
            name = (body.get("metadata") or {}).get("name", "")
            if (body.get("apiVersion"), body.get("kind")) != ("ray.io/v1", "RayJob"):
                return self._json(400, _status(400, "BadRequest", "the body is not a ray.io/v1 RayJob"))
            if (body["metadata"].get("namespace") or ns) != ns:
                return self._json(
                    400,
                    _status(
                        400, "BadRequest", "the namespace of the object does not match the namespace of the request"
                    ),
                )
            if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
                return self._invalid(
                    name, [f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain is required"]
                )
            invalid, unknown = crd_violations(body)
            if unknown and field_validation == "Strict":
                fields = ", ".join(f'unknown field "{u}"' for u in unknown)
                return self._json(
                    400,
                    _status(
                        400,
                        "BadRequest",
                        f'RayJob in version "v1" cannot be handled as a RayJob: strict decoding error: {fields}',
                    ),
                )
            if invalid:
                return self._invalid(name, invalid)
            with api._cond:
                if (ns, name) in api._rayjobs:
                    api.journal.append(("conflict", name))
                    return self._json(409, _status(409, "AlreadyExists", f'rayjobs.ray.io "{name}" already exists'))
                obj = copy.deepcopy(api._store_new(ns, copy.deepcopy(body)))
                api.journal.append(("create", name))
            self._json(201, obj)

        def _invalid(self, name: str, problems: list[str]) -> None:
            message = f'RayJob.ray.io "{name}" is invalid: [{", ".join(problems)}]'
            self._json(422, _status(422, "Invalid", message))

        def _get_rayjob(self, ns: str, name: str) -> None:
            obj = api.rayjob(ns, name)
            self._json(200, obj) if obj else self._not_found("rayjobs.ray.io", name)

        def _list_rayjobs(self, ns: str, query: dict) -> None:
            with api._cond:
                items = [
                    copy.deepcopy(o) for (n, _), o in sorted(api._rayjobs.items()) if n == ns and _selected(o, query)
                ]
                rv = str(api._rv)
            self._json(
                200,
                {"apiVersion": "ray.io/v1", "kind": "RayJobList", "metadata": {"resourceVersion": rv}, "items": items},
            )

        def _delete(self, ns: str, name: str, policy: str) -> None:
            with api._cond:
                obj = api._rayjobs.get((ns, name))
                if obj is None:
                    return self._not_found("rayjobs.ray.io", name)
                if not obj["metadata"].get("deletionTimestamp"):
                    api.deletions.append((name, policy))
                    api.journal.append(("delete", name))
                    if policy == "Foreground":
                        obj["metadata"]["deletionTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                        obj["metadata"]["finalizers"] = ["foregroundDeletion"]
                        api._changed("MODIFIED", obj)
                        timer = threading.Timer(api.deletion_seconds, api._remove, (ns, name))
                        timer.daemon = True
                        api._timers.append(timer)
                        timer.start()
                        return self._json(200, copy.deepcopy(obj))
                snapshot = copy.deepcopy(obj)
            if policy != "Foreground":
                api._remove(ns, name)
            self._json(200, snapshot)

        def _watch(self, ns: str, query: dict) -> None:
            deadline = time.monotonic() + float(query.get("timeoutSeconds", 1800))
            since = query.get("resourceVersion", "")
            with api._cond:
                epoch = api._epoch
                if since not in ("", "0") and int(since) < api._compacted:
                    api.gone_served += 1
                    gone = _status(410, "Expired", f"too old resource version: {since} ({api._compacted})")
                    return self._stream([json.dumps({"type": "ERROR", "object": gone})], "application/json")
                if since in ("", "0"):
                    pending = [("ADDED", copy.deepcopy(o)) for (n, _), o in api._rayjobs.items() if n == ns]
                    cursor = api._rv
                else:
                    pending, cursor = [], int(since)
                api.watching += 1
            self._start_stream("application/json")
            try:
                while True:
                    for kind, obj in pending:
                        if obj["metadata"]["namespace"] == ns and _selected(obj, query):
                            self._chunk(json.dumps({"type": kind, "object": obj}) + "\n")
                    with api._cond:
                        while True:
                            fresh = [(rv, k, o) for rv, k, o in api._history if rv > cursor]
                            left = deadline - time.monotonic()
                            if fresh or api._stopping or api._epoch != epoch or left <= 0:
                                break
                            api._cond.wait(left)
                        if not fresh:
                            break
                        cursor = fresh[-1][0]
                        pending = [(k, copy.deepcopy(o)) for _, k, o in fresh]
                self._end_stream()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                with api._cond:
                    api.watching -= 1

        # --- pods ---------------------------------------------------------------------------------

        def _list_pods(self, ns: str, query: dict) -> None:
            wanted = dict(pair.split("=", 1) for pair in query.get("labelSelector", "").split(",") if pair)
            with api._cond:
                items = [
                    copy.deepcopy(p) for (n, _), p in sorted(api._pods.items())
                    if n == ns and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
                ]  # fmt: skip
                rv = str(api._rv)
            self._json(
                200, {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv}, "items": items}
            )

        def _pod_log(self, ns: str, name: str, query: dict) -> None:
            with api._cond:
                pod = api._pods.get((ns, name))
                if pod is None:
                    return self._not_found("pods", name)
                container = pod["spec"]["containers"][0]["name"]
                if query.get("container", container) != container:
                    return self._json(
                        400, _status(400, "BadRequest", f"container {query['container']} is not valid for pod {name}")
                    )
                if pod["status"]["phase"] == "Pending":
                    return self._json(
                        400,
                        _status(
                            400,
                            "BadRequest",
                            f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
                        ),
                    )
                epoch = api._epoch
                api.log_requests[name] = api.log_requests.get(name, 0) + 1
            follow = _flag(query.get("follow"))
            stamps = _flag(query.get("timestamps"))
            since = time.time() - float(query["sinceSeconds"]) if "sinceSeconds" in query else 0.0
            self._start_stream("text/plain")
            sent = 0
            try:
                while True:
                    with api._cond:
                        while True:
                            lines = api._logs[(ns, name)][sent:]
                            done = pod["status"]["phase"] in ("Succeeded", "Failed")
                            if lines or not follow or done or api._stopping or api._epoch != epoch:
                                break
                            api._cond.wait()
                    for written, stamp, text in lines:
                        if written >= since:
                            self._chunk((f"{stamp} {text}" if stamps else text) + "\n")
                    sent += len(lines)
                    if not lines and (not follow or done or api._stopping or api._epoch != epoch):
                        break
                self._end_stream()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        # --- HTTP plumbing ------------------------------------------------------------------------

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}") if length else {}

        def _json(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self, resource: str, name: str) -> None:
            self._json(404, _status(404, "NotFound", f'{resource} "{name}" not found'))

        def _start_stream(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end_stream(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _stream(self, lines: list[str], content_type: str) -> None:
            self._start_stream(content_type)
            for line in lines:
                self._chunk(line + "\n")
            self._end_stream()

    return Handler


def _flag(value: str | None) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool; the Python client
    sends ``True``)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _selected(obj: dict, query: dict) -> bool:
    """fieldSelector ``metadata.name=<name>``, the only one the launcher sends."""
    selector = query.get("fieldSelector", "")
    if not selector:
        return True
    key, _, value = selector.partition("=")
    assert key == "metadata.name", f"the stand-in supports only metadata.name field selectors, got {selector}"
    return obj["metadata"]["name"] == value
