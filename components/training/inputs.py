"""Local copies of what a training worker reads whole: the tokenizer and the model it starts from.

Token windows are read in place (``common/shards.py``); a tokenizer and a model must be files on the
worker's own disk for ``from_pretrained``. ``file://`` inputs are used where they lie. ``s3://`` inputs
are downloaded on the worker's host: once per node into ``pretrain.data_cache_dir`` when one is set
(eight ranks on a node share one copy of a 4 GB model), else into a private temporary directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.common.storage import open_store


def local_copy(uri: str, *, store_options: dict, cache_dir: str = "") -> Path:
    """A local directory holding the objects under ``uri``."""
    store = open_store(uri, **store_options)
    if cache_dir and uri.startswith("s3://"):
        from components.common.node_cache import cached_prefix

        return cached_prefix(store, uri, Path(cache_dir))
    return store.local_dir(uri, Path(tempfile.mkdtemp(prefix="lmforge-input-")))
