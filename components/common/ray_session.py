"""Connect to Ray for one stage: reuse a connection, else start a local Ray or join a cluster.

Shared by the training stages (``pretrain.ray_address``) and the Ray curation executor
(``curate.ray_address``). Only a Ray started or joined here is shut down on exit; an existing
connection (a test's shared cluster, a notebook) is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int, *, name: str = "lmforge") -> Iterator[None]:
    """``address`` is ``local`` (start a Ray with at least 2 CPUs here) or a cluster (``ray://head:10001``)."""
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if address == "local":
        # A short path: Ray's unix sockets live under it and socket paths are limited to ~107 bytes.
        temp_dir = f"/tmp/{name}-ray-{os.getpid()}"
        ray.init(address="local", num_cpus=max(2, num_cpus), include_dashboard=False, _temp_dir=temp_dir)
    else:
        ray.init(address=address)
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)  # session logs only; a leftover is harmless
