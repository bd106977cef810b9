"""The container images every KFP component runs in.

One image holds the whole project (``pip install .`` of this repository, see ``images/``), so every
step runs the same code and the compiled pipeline names exactly one image. Platform teams that
build into their own registry rebuild, retag and recompile: ``make compile IMAGE=registry/lmforge:tag``.
"""

import os

#: CPU image built from images/Dockerfile.cpu; embedded in pipelines/compiled/*.yaml.
IMAGE = os.environ.get("LMFORGE_COMPILE_IMAGE", "ghcr.io/lmforge/lmforge:0.1.0-cpu")

#: CUDA image built from images/Dockerfile.cuda, for KubeRay GPU worker groups.
CUDA_IMAGE = "ghcr.io/lmforge/lmforge:0.1.0-cuda"
