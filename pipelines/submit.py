"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint, optionally only when new data landed.

``--if-new-data URI`` is what the retrain CronJob (k8s/, charts/) calls every tick. It is idempotent:

- **Complete data only.** The objects under URI count once the upload is finished: a
  ``continual.complete_marker`` object (``_SUCCESS``) is among them, and/or their listing has stayed
  the same for ``continual.quiet_seconds`` (seen unchanged on ticks that far apart).
- **Recorded on success.** The fingerprint (sha256 over each object's URI and ETag) is recorded as
  *done* only when the run it started has SUCCEEDED, read from the KFP API on a later tick; a
  failed or cancelled run leaves it unrecorded, so the next tick submits the same data again.
- **No overlap.** While the run this trigger started is still active, or any run of the same
  pipeline and model (display name ``lmforge-<pipeline>-<model>-…``) is active in the experiment,
  nothing is submitted.

The trigger's state lives in the object store (``triggers/<hash of URI>.json``), so the CronJob's
pods share nothing else. ``--upload-only`` registers the package as a pipeline version named after
the package's content hash, and does nothing when that version exists: one version per release, not
one per Argo CD sync (a post-sync hook runs on every sync).

A run uses the profile the pipeline was compiled with unless ``--profile`` names another, and
``--set`` overrides add to the compiled ones. Either way the config must run on a cluster
(components/common/runtime.py): a ``tiny`` submission fails here, naming the key, not in the pod;
and its model size must be the one the pipeline was compiled for, whose step memory is fixed in it.
In multi-user Kubeflow ``--namespace`` names the profile namespace the run (and its experiment) lives in.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from components.common.artifacts import open_run_store, store_root
from components.common.config import load_config
from components.common.errors import LmforgeError
from components.common.runtime import require_cluster_ready
from components.common.storage import ObjectStore, join

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"

#: KFP v2 run states after which a run does nothing more.
SUCCEEDED = "SUCCEEDED"
FINISHED_UNSUCCESSFULLY = frozenset({"FAILED", "CANCELED", "SKIPPED"})
#: What :func:`run_state_of` says of a run the KFP API no longer knows (deleted): as good as failed.
NOT_FOUND = "NOT_FOUND"


def data_fingerprint(store: ObjectStore, uri: str) -> tuple[str, list[str]]:
    """(sha256 over each object's URI and digest under ``uri``, the object URIs): ETags on S3, no download."""
    objects = sorted(store.list(uri))
    lines = (f"{obj}\t{store.digest(obj)}" for obj in objects)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), objects


@dataclass
class TriggerState:
    """What the trigger remembers about one watched prefix between ticks."""

    uri: str
    done: str | None = None  # fingerprint of the data the last SUCCEEDED run learned
    pending_run: str | None = None  # KFP run id started for ``pending``, not finished when last looked at
    pending: str | None = None
    seen: str | None = None  # fingerprint seen on an earlier tick, and since when (quiet period)
    seen_since: float = 0.0


def state_uri(root: str, uri: str) -> str:
    return join(root, "triggers", hashlib.sha256(uri.encode()).hexdigest()[:16] + ".json")


def load_state(store: ObjectStore, root: str, uri: str) -> TriggerState:
    where = state_uri(root, uri)
    if not store.exists(where):
        return TriggerState(uri)
    data = json.loads(store.read_text(where))
    if "fingerprint" in data and "done" not in data:  # written by lmforge before runs were followed
        return TriggerState(uri, pending_run=data.get("run_id"), pending=data["fingerprint"])
    return TriggerState(**{k: v for k, v in data.items() if k in TriggerState.__dataclass_fields__})


def save_state(store: ObjectStore, root: str, state: TriggerState) -> None:
    store.write_text(state_uri(root, state.uri), json.dumps(asdict(state)))


def decide_tick(
    store: ObjectStore,
    state: TriggerState,
    *,
    marker: str,
    quiet_seconds: float,
    run_state: Callable[[str], str],
    active_runs: Callable[[], list[str]],
    now: float | None = None,
) -> tuple[str | None, str]:
    """One tick of the trigger: (fingerprint to submit a run for, or None; what was decided and why).

    Updates ``state`` in place (the caller saves it): a finished pending run is folded into ``done``
    (success) or dropped (failure, so its data is submitted again), and the quiet period's clock.
    """
    now = time.time() if now is None else now
    if state.pending_run:
        run = state.pending_run
        status = run_state(run)
        if status == SUCCEEDED:
            state.done, state.pending_run, state.pending = state.pending, None, None
        elif status in FINISHED_UNSUCCESSFULLY or status == NOT_FOUND:
            state.pending_run, state.pending = None, None
            # fall through: the same data is submitted again below (a retry), if it is still complete
        else:
            return None, f"run {run} is {status}; nothing submitted until it finishes"
    busy = active_runs()
    if busy:
        return None, f"run {busy[0]} of this pipeline and model is still active; nothing submitted"
    fingerprint, objects = data_fingerprint(store, state.uri)
    if not objects:
        return None, f"no objects under {state.uri}; nothing submitted"
    if fingerprint == state.done:
        return None, f"no new data under {state.uri} since the last successful run; nothing submitted"
    if marker and not any(o.rstrip("/").rsplit("/", 1)[-1] == marker for o in objects):
        return None, f"upload under {state.uri} is incomplete (no {marker} marker yet); nothing submitted"
    if quiet_seconds > 0:
        if state.seen != fingerprint:
            state.seen, state.seen_since = fingerprint, now
        if now - state.seen_since < quiet_seconds:
            waited = now - state.seen_since
            return None, (
                f"data under {state.uri} changed {waited:.0f}s ago; waiting for continual.quiet_seconds="
                f"{quiet_seconds:g} without changes; nothing submitted"
            )
    return fingerprint, f"new data under {state.uri}"


def run_name_prefix(pipeline: str, model_name: str) -> str:
    """Display-name prefix of the runs ``submit`` starts: how it recognises runs of the same pipeline and model."""
    return f"lmforge-{pipeline}-{model_name}-"


def package_version_name(package: Path) -> str:
    """The pipeline version a package is uploaded as: its content decides, so re-uploads are no-ops."""
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    return f"lmforge-{package.stem}-{digest}"


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
    namespace: str = "",
) -> str:
    """Upload or run ``pipelines/compiled/<pipeline>.yaml``; returns a one-line description of what happened.

    ``profile`` None means the compiled default; ``overrides`` are added to the compiled ones.
    ``namespace`` is the Kubeflow profile namespace of the run and its experiment ('' = single-user KFP).
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
    import kfp

    # In-cluster the client authenticates with the pod's projected token (KF_PIPELINES_SA_TOKEN_PATH).
    client = kfp.Client(host=host, namespace=namespace or "kubeflow")
    ns = namespace or None
    if upload_only:
        return upload(client, package, host)

    prefix = run_name_prefix(pipeline, cfg.register.model_name)
    trigger = None
    if if_new_data:
        store, root = open_run_store(cfg), store_root(cfg)
        state = load_state(store, root, if_new_data)
        fingerprint, why = decide_tick(
            store,
            state,
            marker=cfg.continual.complete_marker,
            quiet_seconds=cfg.continual.quiet_seconds,
            run_state=lambda run_id: run_state_of(client, run_id),
            active_runs=lambda: active_runs(client, experiment, ns, prefix),
        )
        save_state(store, root, state)
        if fingerprint is None:
            return why
        trigger = (store, root, state, fingerprint)

    run = client.create_run_from_pipeline_package(
        str(package),
        arguments={"profile": profile, "overrides": overrides},
        run_name=prefix + time.strftime("%Y%m%d-%H%M%S", time.gmtime()),
        experiment_name=experiment,
        namespace=ns,
        service_account=service_account or None,
    )
    if trigger:
        store, root, state, fingerprint = trigger
        state.pending_run, state.pending = run.run_id, fingerprint
        save_state(store, root, state)
    return f"submitted {pipeline} to {host}: run {run.run_id}"


def run_state_of(client, run_id: str) -> str:
    """The KFP state of run ``run_id`` (PENDING, RUNNING, SUCCEEDED, FAILED, ...), NOT_FOUND if deleted."""
    from kfp_server_api.exceptions import ApiException

    try:
        return str(client.get_run(run_id).state)
    except ApiException as e:
        if e.status == 404:
            return NOT_FOUND
        raise


def active_runs(client, experiment: str, namespace: str | None, prefix: str) -> list[str]:
    """Ids of runs in ``experiment`` whose display name starts with ``prefix`` and that have not finished."""
    try:
        exp = client.get_experiment(experiment_name=experiment, namespace=namespace)
    except ValueError:  # kfp: "No experiment is found with name ..."
        return []
    out, token = [], ""
    while True:
        page = client.list_runs(experiment_id=exp.experiment_id, namespace=namespace, page_size=100, page_token=token)
        for run in page.runs or []:
            state = str(run.state)
            if (
                (run.display_name or "").startswith(prefix)
                and state != SUCCEEDED
                and state not in FINISHED_UNSUCCESSFULLY
            ):
                out.append(run.run_id)
        token = page.next_page_token
        if not token:
            return out


def upload(client, package: Path, host: str) -> str:
    """Register ``package`` as pipeline ``lmforge-<name>``, version :func:`package_version_name`, once."""
    name, version = f"lmforge-{package.stem}", package_version_name(package)
    pipeline_id = client.get_pipeline_id(name)
    if not pipeline_id:
        client.upload_pipeline(str(package), pipeline_name=name)
        pipeline_id = client.get_pipeline_id(name)
    by_name = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version}]})
    if client.list_pipeline_versions(pipeline_id, filter=by_name).pipeline_versions:
        return f"{package.name} is already registered at {host} as {name} version {version}; nothing uploaded"
    client.upload_pipeline_version(str(package), version, pipeline_id=pipeline_id)
    return f"uploaded {package.name} to {host} as {name} version {version}"
