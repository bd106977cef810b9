"""A stand-in for the Kubeflow Pipelines v2beta1 API server on 127.0.0.1: what ``lmforge submit`` uses.

No KFP backend can run on the development machines, so the submit/trigger tests drive the real
``kfp.Client`` against this server. It speaks the REST protocol (JSON field names as the generated
``kfp_server_api`` models map them) for:

    GET  /apis/v2beta1/healthz                multi_user (the client asks when given no namespace)
    GET  /apis/v2beta1/experiments            list (namespace, filter display_name EQUALS)
    POST /apis/v2beta1/experiments            create
    POST /apis/v2beta1/runs                   create (state PENDING)
    GET  /apis/v2beta1/runs[/{id}]            get, list (experiment_id, page_size, page_token)
    GET  /apis/v2beta1/pipelines              list (filter display_name EQUALS)
    POST /apis/v2beta1/pipelines/upload       multipart upload: a pipeline and its first version
    POST /apis/v2beta1/pipelines/upload_version
    GET  /apis/v2beta1/pipelines/{id}/versions   list (filter display_name EQUALS)

The test plays the KFP backend with :meth:`set_state` (a run finishes, fails, ...). :attr:`runs`,
:attr:`versions` and :attr:`experiments` hold what was created, for assertions.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name_filter(query: dict) -> str | None:
    """The display_name an EQUALS filter asks for, or None (no filter)."""
    raw = (query.get("filter") or [""])[0]
    if not raw:
        return None
    for p in json.loads(raw).get("predicates", []):
        if p.get("key") in ("display_name", "name") and p.get("operation") in ("EQUALS", 1):
            return p.get("stringValue") or p.get("string_value")
    return None


class KfpAPI:
    def __init__(self, *, multi_user: bool = True) -> None:
        self.experiments_by_namespace = multi_user
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}  # pipeline id -> versions
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KfpAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_state(self, run_id: str, state: str) -> None:
        with self.lock:
            self.runs[run_id]["state"] = state
            if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
                self.runs[run_id]["finished_at"] = _now()

    # --- request handling --------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: bytes, content_type: str) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[:2] != ["apis", "v2beta1"]:
            return 404, {"error": f"no route {path}"}
        rest = parts[2:]
        with self.lock:
            if rest == ["healthz"] and method == "GET":
                return 200, {"multi_user": bool(self.experiments_by_namespace)}
            if rest == ["experiments"] and method == "GET":
                ns, name = (query.get("namespace") or [""])[0], _name_filter(query)
                found = [
                    e for e in self.experiments.values()
                    if (not ns or e.get("namespace", "") == ns) and (name is None or e["display_name"] == name)
                ]  # fmt: skip
                return 200, {"experiments": found, "total_size": len(found)} if found else {}
            if rest == ["experiments"] and method == "POST":
                exp = json.loads(body)
                exp.update(experiment_id=uuid.uuid4().hex, created_at=_now(), storage_state="AVAILABLE")
                self.experiments[exp["experiment_id"]] = exp
                return 200, exp
            if rest == ["runs"] and method == "POST":
                run = json.loads(body)
                if run.get("experiment_id") not in self.experiments:
                    return 400, {"error": f"experiment {run.get('experiment_id')!r} does not exist"}
                run.update(run_id=uuid.uuid4().hex, state="PENDING", created_at=_now(), storage_state="AVAILABLE")
                self.runs[run["run_id"]] = run
                return 200, run
            if rest == ["runs"] and method == "GET":
                exp = (query.get("experiment_id") or [""])[0]
                found = [r for r in self.runs.values() if not exp or r["experiment_id"] == exp]
                size = int((query.get("page_size") or ["10"])[0])
                start = int((query.get("page_token") or ["0"])[0] or 0)
                page = found[start : start + size]
                token = str(start + size) if start + size < len(found) else ""
                return 200, {"runs": page, "total_size": len(found), "next_page_token": token}
            if len(rest) == 2 and rest[0] == "runs" and method == "GET":
                run = self.runs.get(rest[1])
                return (200, run) if run else (404, {"error": f"run {rest[1]} not found"})
            if rest == ["pipelines"] and method == "GET":
                name = _name_filter(query)
                found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
                return 200, {"pipelines": found, "total_size": len(found)} if found else {}
            if rest == ["pipelines", "upload"] and method == "POST":
                name = (query.get("name") or query.get("display_name") or [""])[0]
                if any(p["display_name"] == name for p in self.pipelines.values()):
                    return 409, {"error": f"pipeline {name} already exists"}
                pid = uuid.uuid4().hex
                self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "name": name, "created_at": _now()}
                self.versions[pid] = [self._version(pid, name, body, content_type)]
                return 200, self.pipelines[pid]
            if rest == ["pipelines", "upload_version"] and method == "POST":
                pid, name = (query.get("pipelineid") or [""])[0], (query.get("name") or [""])[0]
                if pid not in self.pipelines:
                    return 404, {"error": f"pipeline {pid} not found"}
                if any(v["display_name"] == name for v in self.versions[pid]):
                    return 409, {"error": f"version {name} already exists"}
                version = self._version(pid, name, body, content_type)
                self.versions[pid].append(version)
                return 200, version
            if len(rest) == 3 and rest[0] == "pipelines" and rest[2] == "versions" and method == "GET":
                name = _name_filter(query)
                found = [v for v in self.versions.get(rest[1], []) if name is None or v["display_name"] == name]
                return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
        return 404, {"error": f"no route {method} {path}"}

    @staticmethod
    def _version(pid: str, name: str, body: bytes, content_type: str) -> dict:
        if "multipart/form-data" not in content_type or b"pipelineInfo" not in body:
            raise ValueError("upload without a pipeline package in a multipart body")
        return {"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex, "display_name": name, "name": name,
                "created_at": _now()}  # fmt: skip

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    status, payload = api.handle(
                        method, url.path, parse_qs(url.query), body, self.headers.get("Content-Type", "")
                    )
                except ValueError as e:
                    status, payload = 400, {"error": str(e)}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler
