"""The driver of a training RayJob: ``python -m components.training.job SPEC_URI --store-options JSON``.

KubeRay runs this entrypoint on the head of the RayJob's own cluster (``launch.py`` creates the
RayJob). It reads the :class:`~components.training.spec.TrainSpec` from the object store, joins the
cluster's Ray (``pretrain.ray_address=auto``) and runs the same :func:`run_training` as a local run;
the workers publish the model and the summary to the store, where the pipeline step that created
the job reads them. Credentials come from the pod's environment (the S3 Secret), never from the
arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from components.common.errors import LmforgeError
from components.common.storage import open_store
from components.training.driver import run_training
from components.training.spec import TrainSpec


def read_spec(uri: str, store_options: dict) -> TrainSpec:
    spec = TrainSpec.from_json(open_store(uri, **store_options).read_text(uri))
    # Inside the job the driver is on the cluster: join its Ray rather than launching anything.
    pretrain = dataclasses.replace(spec.cfg.pretrain, launcher="ray", ray_address="auto")
    return dataclasses.replace(spec, cfg=dataclasses.replace(spec.cfg, pretrain=pretrain))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.training.job", description=__doc__)
    parser.add_argument("spec_uri", help="store URI of the TrainSpec JSON written by the pipeline step")
    parser.add_argument("--store-options", default="{}", help="open_store keyword arguments as JSON (no secrets)")
    args = parser.parse_args(argv)
    try:
        spec = read_spec(args.spec_uri, json.loads(args.store_options))
        summary = run_training(spec)
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{spec.stage} finished: {summary['steps']} steps, final loss {summary['loss_curve'][-1][1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
