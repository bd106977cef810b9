"""Find what the continual pipeline starts from: the champion's base model and its old corpus.

The ``register`` step tags every model version with the pointers of its inputs
(``lmforge.input.<name> = <uri>@<digest>``), among them the unquantized base model that came out of
continual pretraining and the corpus it was pretrained on. A retrain continues from that base model
(never from the int8 weights) and replays that corpus. ``continual.base_model`` and
``continual.old_dataset`` override the lookup with explicit store URIs.
"""

from __future__ import annotations

from components.common.artifacts import MARKER, open_run_store, read_marker
from components.common.config import LifecycleConfig
from components.common.errors import ConfigError, StorageError
from components.common.storage import ObjectStore, join

BASE_MODEL_TAG = "lmforge.input.base_model"
OLD_DATASET_TAG = "lmforge.input.pretrain_corpus"


def pointer_for(store: ObjectStore, uri: str) -> dict:
    """The pointer of a completed output at ``uri`` (its kind and digest come from its marker)."""
    uri = uri.rstrip("/")
    if not store.exists(join(uri, MARKER)):
        raise StorageError(f"{uri} is not a completed lmforge output (no {MARKER})")
    marker = read_marker(store, uri)
    return {"kind": marker["kind"], "digest": marker["digest"], "uri": uri}


def champion_inputs(cfg: LifecycleConfig) -> dict[str, dict]:
    """Pointers ``{"base_model", "old_dataset"}`` for a continual run."""
    store = open_run_store(cfg)
    explicit = {"base_model": cfg.continual.base_model, "old_dataset": cfg.continual.old_dataset}
    if all(explicit.values()):
        return {name: pointer_for(store, uri) for name, uri in explicit.items()}

    import mlflow
    from mlflow.exceptions import MlflowException

    from components.common.lineage import setup

    setup(cfg)
    name = cfg.register.model_name
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException as e:
        raise ConfigError(
            f"register.model_name={name!r} has no 'champion' in the registry at {mlflow.get_tracking_uri()}: run the "
            "lifecycle pipeline first, or set continual.base_model and continual.old_dataset to store URIs"
        ) from e
    found = {}
    for key, tag in (("base_model", BASE_MODEL_TAG), ("old_dataset", OLD_DATASET_TAG)):
        if explicit[key]:
            found[key] = pointer_for(store, explicit[key])
            continue
        if tag not in version.tags:
            raise ConfigError(
                f"champion {name} v{version.version} has no tag {tag}; set continual.{key} to a store URI"
            )
        found[key] = pointer_for(store, version.tags[tag].rsplit("@", 1)[0])
    return found
