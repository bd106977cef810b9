"""Where a stage's output lives, how it is marked complete, and how steps point at it.

A stage's output is addressed by the hash of what changes it: the stage name, the *versioned*
fields of its config section (see :func:`components.common.config.knob`) and the digests of its
inputs. The output goes to ``<storage root>/<kind>/<hash>/``; a ``_COMPLETE.json`` marker is written
last, and skip logic reads only the marker, so a step killed half-way is redone, never reused.

Between KFP steps only a small *pointer* travels: a JSON file ``{"uri", "digest", "kind"}`` written at
the KFP artifact's path. The bytes stay in the object store, so the same pointer works in
``kfp.local`` (file:// store) and on the cluster (s3:// on MinIO).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.common.config import LifecycleConfig, resolve_home
from components.common.errors import StorageError
from components.common.storage import ObjectStore, file_digest, join, open_store  # noqa: F401 (file_digest re-exported)

MARKER = "_COMPLETE.json"


def store_root(cfg: LifecycleConfig) -> str:
    """The object-store root URI of this run."""
    return cfg.storage.uri.rstrip("/") if cfg.storage.uri else "file://" + str(resolve_home(cfg) / "store")


def store_options(cfg: LifecycleConfig) -> dict:
    """The :func:`~components.common.storage.open_store` keyword arguments from ``cfg.storage``.

    A plain dict so it can travel to Ray actors and workers that open the store themselves.
    """
    s = cfg.storage
    return {
        "s3_endpoint": s.s3_endpoint,
        "s3_secure": s.s3_secure,
        "s3_region": s.s3_region,
        "max_attempts": s.s3_max_attempts,
        "backoff_seconds": s.s3_backoff_seconds,
        "timeout_seconds": s.s3_timeout_seconds,
    }


def open_run_store(cfg: LifecycleConfig) -> ObjectStore:
    return open_store(store_root(cfg), **store_options(cfg))


def content_hash(stage: str, config: Any, inputs: dict[str, str]) -> str:
    """16 hex digits of sha256 over the stage name, its versioned config and its input digests."""
    payload = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Output:
    """A stage's output location: its store URI, content hash and a local directory to write into."""

    kind: str
    digest: str
    uri: str
    local: Path

    def pointer(self) -> dict:
        return {"kind": self.kind, "digest": self.digest, "uri": self.uri}


def plan_output(cfg: LifecycleConfig, kind: str, stage: str, config: Any, inputs: dict[str, str]) -> Output:
    """Decide where ``stage`` writes; for a local store the local dir *is* the store dir."""
    digest = content_hash(stage, config, inputs)
    uri = join(store_root(cfg), kind, digest)
    parsed = urlparse(uri)
    local = Path(parsed.path) if parsed.scheme == "file" else resolve_home(cfg) / "work" / kind / digest
    return Output(kind=kind, digest=digest, uri=uri, local=local)


def is_complete(store: ObjectStore, out: Output) -> bool:
    return store.exists(join(out.uri, MARKER))


def read_marker(store: ObjectStore, uri: str) -> dict:
    return json.loads(store.read_text(join(uri, MARKER)))


def publish(store: ObjectStore, out: Output, summary: dict) -> None:
    """Upload the local dir (no-op for a local store) and write the completion marker last."""
    store.upload_dir(out.local, out.uri)
    marker = {"kind": out.kind, "digest": out.digest, "completed_at": time.time(), **summary}
    store.write_text(join(out.uri, MARKER), json.dumps(marker, indent=2, default=str))


def fetch(cfg: LifecycleConfig, store: ObjectStore, uri: str) -> Path:
    """A local directory with the objects under ``uri``; refuses an output that never completed."""
    if not store.exists(join(uri, MARKER)):
        raise StorageError(f"{uri} has no {MARKER}: the step that writes it did not finish")
    digest = uri.rstrip("/").rsplit("/", 1)[-1]
    return store.local_dir(uri, resolve_home(cfg) / "cache" / digest)


def write_pointer(path: str | Path, out: Output | dict) -> dict:
    """Write the pointer JSON that a KFP artifact carries between steps."""
    data = out.pointer() if isinstance(out, Output) else dict(out)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2))
    return data


def read_pointer(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise StorageError(f"artifact {path} is not an lmforge pointer: {e}") from e
    if not {"uri", "digest", "kind"} <= data.keys():
        raise StorageError(f"artifact {path} lacks uri/digest/kind: {data}")
    return data
