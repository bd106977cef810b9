"""The container images the compiled pipelines and the Ray clusters they start run in.

Two images hold the whole project (``images/``): ``IMAGE`` (CPU) runs every KFP step and the Ray
head and CPU workers, ``CUDA_IMAGE`` the GPU Ray workers and GPU steps. Both are built from the
same lock and the same Python patch release, because Ray refuses a cluster whose nodes differ.

The defaults are the tags ``images/Dockerfile.*`` build. ``make compile IMAGE=… GPU_IMAGE=…`` sets
``LMFORGE_COMPILE_IMAGE`` / ``LMFORGE_COMPILE_GPU_IMAGE`` so the compiled pipelines name the images
a platform actually pushed, ideally by digest (``repo@sha256:…``: a tag can be moved, a digest
cannot, so a pinned pipeline runs byte-for-byte the image that was reviewed). A malformed value
fails at import, naming the variable, rather than compiling a pipeline whose pods cannot pull.
"""

from __future__ import annotations

import os
import re

from components.common.errors import ConfigError

DEFAULT_IMAGE = "ghcr.io/lmforge/lmforge:0.1.0-cpu"
DEFAULT_CUDA_IMAGE = "ghcr.io/lmforge/lmforge:0.1.0-cuda"

# The reference grammar of the OCI distribution spec (github.com/distribution/reference), narrowed
# to what a pipeline should pin: a tag, a sha256 digest, or both. A bare repository (an implicit
# `:latest`) is refused on purpose: it names whatever was pushed last.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?)"
_PATH_COMPONENT = r"(?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_MAX_NAME = 255  # the distribution spec's limit on the repository name


def image_reference(value: str, *, source: str) -> str:
    """``value`` if it is ``repo:tag``, ``repo@sha256:<64 hex>`` or ``repo:tag@sha256:<64 hex>``.

    ``source`` names where the value came from (an environment variable, a config key) so the error
    says what to fix.
    """
    match = _REFERENCE.fullmatch(value)
    problem = None
    if match is None:
        problem = "it is not an image reference"
    elif not (match["tag"] or match["digest"]):
        problem = "it has neither a tag nor a digest (an implicit :latest is not reproducible)"
    elif len(match["name"]) > _MAX_NAME:
        problem = f"its repository name is longer than {_MAX_NAME} characters"
    if problem:
        raise ConfigError(
            f"{source}={value!r}: {problem}. Expected registry/repository:tag or "
            f"registry/repository@sha256:<64 lowercase hex digits>, e.g. "
            f"ghcr.io/lmforge/lmforge@sha256:{'0' * 64} (`docker buildx imagetools inspect <tag>` prints "
            f"a pushed image's digest)."
        )
    return value


def _compile_override(variable: str, default: str) -> str:
    # An empty value counts as unset: `make compile` without IMAGE= must not produce image: "".
    return image_reference(os.environ.get(variable) or default, source=variable)


#: CPU image (images/Dockerfile.cpu): every KFP step, the Ray head and CPU workers.
IMAGE = _compile_override("LMFORGE_COMPILE_IMAGE", DEFAULT_IMAGE)

#: CUDA image (images/Dockerfile.cuda): GPU Ray workers and GPU pipeline steps.
CUDA_IMAGE = _compile_override("LMFORGE_COMPILE_GPU_IMAGE", DEFAULT_CUDA_IMAGE)


#: Set on training steps by the compiled pipeline (pipelines/graph.py): the images their RayJobs run,
#: exactly as the pipeline was compiled (by digest when pinned). An image baked into a step's own
#: environment at build time names a tag, so it would not carry the pin to the Ray pods.
RAY_IMAGE_ENV, RAY_GPU_IMAGE_ENV = "LMFORGE_RAY_IMAGE", "LMFORGE_RAY_GPU_IMAGE"


def ray_images(cluster_image: str = "", cluster_gpu_image: str = "") -> tuple[str, str]:
    """(CPU, GPU) images for a RayJob: ``cluster.image``/``cluster.gpu_image`` when set, else the images
    the step's pipeline was compiled with, else the defaults; each checked as an image reference."""
    cpu = (
        (cluster_image, "cluster.image"),
        (os.environ.get(RAY_IMAGE_ENV, ""), RAY_IMAGE_ENV),
        (os.environ.get("LMFORGE_IMAGE", ""), "LMFORGE_IMAGE"),
        (IMAGE, "components/common/images.py:IMAGE"),
    )
    gpu = (
        (cluster_gpu_image, "cluster.gpu_image"),
        (os.environ.get(RAY_GPU_IMAGE_ENV, ""), RAY_GPU_IMAGE_ENV),
        (CUDA_IMAGE, "components/common/images.py:CUDA_IMAGE"),
    )
    return tuple(image_reference(value, source=source) for value, source in (_first(cpu), _first(gpu)))


def _first(candidates: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    return next((value, source) for value, source in candidates if value)
