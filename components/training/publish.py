"""Send a WSD decay branch downstream instead of the main run (``<stage>.publish_branch``).

A stage's next step reads ``<output>/model``, where the main run put its model. When the config
picks a branch instead, the two swap places in the store: the main run's model and summary move to
``<output>/branches/final/`` (still an artifact for evaluation, like every other branch) and the
branch's model is copied to ``<output>/model``. Copying, rather than training the runs into other
places, keeps every run's output address (the RayJob name and the "already finished" check of
:mod:`components.training.launch` key on it) as it is without a branch.

A retried step redoes the swap safely: the main run's model is saved aside once, marked by its
summary written last, so a second pass never mistakes the branch (already in ``model/``) for it.
"""

from __future__ import annotations

import tempfile

from components.common.storage import ObjectStore, join
from components.training.checkpoint import MODEL_DIR
from components.training.spec import SUMMARY_FILE

FINAL = "final"  # branches/final/: where the main run's model goes when a branch is published


def publish_branch(store: ObjectStore, output_uri: str, branch_uri: str) -> str:
    """Make the model under ``branch_uri`` the stage's ``model/``; returns where the main run's went."""
    final = join(output_uri, "branches", FINAL)
    if not store.exists(join(final, SUMMARY_FILE)):
        _copy_dir(store, join(output_uri, MODEL_DIR), join(final, MODEL_DIR))
        store.write_bytes(join(final, SUMMARY_FILE), store.read_bytes(join(output_uri, SUMMARY_FILE)))
    model, branch_model = join(output_uri, MODEL_DIR), join(branch_uri, MODEL_DIR)
    stale = _names(store, model) - _names(store, branch_model)
    _copy_dir(store, branch_model, model)
    for name in stale:  # a file of the main run's model the branch's lacks would be loaded beside it
        store.delete(join(model, name))
    return final


def _names(store: ObjectStore, prefix: str) -> set[str]:
    """The object names under ``prefix``, relative to it."""
    return {uri.removeprefix(prefix.rstrip("/") + "/") for uri in store.list(prefix)}


def _copy_dir(store: ObjectStore, source: str, target: str) -> None:
    """Copy the objects under ``source`` to ``target`` through a local temporary directory."""
    with tempfile.TemporaryDirectory(prefix="lmforge-publish-") as tmp:
        store.upload_dir(store.download_dir(source, tmp), target)
