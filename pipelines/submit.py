"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint, optionally only when new data landed.

``--if-new-data URI`` is what the retrain CronJob (k8s/, charts/) calls: it fingerprints the object
listing under URI, compares it with the fingerprint recorded at the last submission (kept in the
object store under ``triggers/``), and submits only on a change, so a trigger firing every hour
starts one run per data drop.

A run uses the profile the pipeline was compiled with unless ``--profile`` names another, and
``--set`` overrides add to the compiled ones. Either way the config must run on a cluster
(components/common/runtime.py): a ``tiny`` submission fails here, naming the key, not in the pod;
and its model size must be the one the pipeline was compiled for, whose step memory is fixed in it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from components.common.artifacts import open_run_store, store_root
from components.common.config import load_config
from components.common.errors import LmforgeError
from components.common.runtime import require_cluster_ready
from components.common.storage import ObjectStore, join

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def data_fingerprint(store: ObjectStore, uri: str) -> str:
    """sha256 over each object's URI and digest under ``uri`` (ETags on S3: no download)."""
    lines = (f"{obj}\t{store.digest(obj)}" for obj in store.list(uri))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def new_data_since_last_submit(store: ObjectStore, root: str, uri: str) -> tuple[bool, str, str]:
    """(changed?, fingerprint now, where the last fingerprint is kept)."""
    state_uri = join(root, "triggers", hashlib.sha256(uri.encode()).hexdigest()[:16] + ".json")
    now = data_fingerprint(store, uri)
    if not store.exists(state_uri):
        return True, now, state_uri
    before = json.loads(store.read_text(state_uri)).get("fingerprint")
    return before != now, now, state_uri


def record_submission(store: ObjectStore, state_uri: str, uri: str, fingerprint: str, run_id: str) -> None:
    """Remember what the data under ``uri`` looked like when run ``run_id`` was submitted."""
    store.write_text(state_uri, json.dumps({"uri": uri, "fingerprint": fingerprint, "run_id": run_id}))


def compiled_defaults(package: Path) -> dict:
    """The default values of a compiled pipeline's parameters (``profile``, ``overrides``)."""
    spec = next(yaml.safe_load_all(package.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: p["defaultValue"] for name, p in params.items() if "defaultValue" in p}


def submit(
    pipeline: str,
    *,
    host: str,
    profile: str | None,
    overrides: list[str],
    experiment: str = "lmforge",
    upload_only: bool = False,
    if_new_data: str | None = None,
    service_account: str = "",
) -> str:
    """Upload or run ``pipelines/compiled/<pipeline>.yaml``; returns a one-line description of what happened.

    ``profile`` None means the compiled default; ``overrides`` are added to the compiled ones.
    """
    package = COMPILED_DIR / f"{pipeline}.yaml"
    if not package.is_file():
        raise LmforgeError(f"{package} does not exist; run `lmforge compile` first")
    if not host:
        raise LmforgeError("no KFP endpoint: pass --host URL or set KFP_HOST")
    defaults = compiled_defaults(package)
    profile = profile or defaults["profile"]
    overrides = [*defaults.get("overrides", []), *overrides]
    cfg = load_config(profile, overrides)  # fail here, not on the cluster, on a bad key
    require_cluster_ready(cfg, context="on the cluster it is submitted to")
    placed_for = load_config(defaults["profile"], defaults.get("overrides", [])).model.preset
    if cfg.model.preset != placed_for:
        # Step memory is compiled in for one model size: a 1b run in a pipeline placed for small
        # would be OOM-killed in align after the whole pretraining.
        raise LmforgeError(
            f"{package.name} was compiled for {defaults['profile']!r} (model.preset={placed_for}), but this run's "
            f"model.preset is {cfg.model.preset}: compile for it (`lmforge compile --profile {profile}`, or "
            f"`make compile PROFILE={profile}`) and submit that"
        )
    trigger = None
    if if_new_data:
        store = open_run_store(cfg)
        changed, fingerprint, state_uri = new_data_since_last_submit(store, store_root(cfg), if_new_data)
        if not changed:
            return f"no new data under {if_new_data}; nothing submitted"
        trigger = (store, state_uri, fingerprint)

    import kfp

    # In-cluster the client authenticates with the pod's service-account token; no secret in args.
    client = kfp.Client(host=host)
    if upload_only:
        name = f"lmforge-{pipeline}"
        try:
            pipeline_id = client.get_pipeline_id(name)
        except Exception:  # noqa: BLE001 -- kfp raises a bare ApiException subclass when absent
            pipeline_id = None
        if pipeline_id:
            import time

            client.upload_pipeline_version(str(package), f"{name}-{int(time.time())}", pipeline_id=pipeline_id)
        else:
            client.upload_pipeline(str(package), pipeline_name=name)
        return f"uploaded {package.name} to {host} as {name}"
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments={"profile": profile, "overrides": overrides},
        experiment_name=experiment,
        service_account=service_account or None,
    )
    if trigger:
        store, state_uri, fingerprint = trigger
        record_submission(store, state_uri, if_new_data, fingerprint, run.run_id)
    return f"submitted {pipeline} to {host}: run {run.run_id}"
