"""`make compile IMAGE=… GPU_IMAGE=…` pins the images the compiled pipelines name.

components/common/images.py reads LMFORGE_COMPILE_IMAGE / LMFORGE_COMPILE_GPU_IMAGE when it is
imported, accepts ``repo:tag`` and ``repo@sha256:<64 hex>``, and refuses anything else naming the
variable. Each case imports a fresh copy of the module with the variables set (k8s_checks); one
compiles the real pipelines into a temporary directory in a subprocess. pipelines/compiled/ is
never written.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from components.common.errors import ConfigError

from .k8s_checks import REPO, load_images_module

DIGEST = "sha256:" + "0123456789abcdef" * 4
CPU_PINNED = f"registry.example.com:5000/platform/lmforge@{DIGEST}"
GPU_PINNED = f"registry.example.com:5000/platform/lmforge-cuda@{DIGEST}"


def test_compile_image_override_accepts_a_digest_reference():
    assert load_images_module({"LMFORGE_COMPILE_IMAGE": CPU_PINNED}).IMAGE == CPU_PINNED


def test_gpu_image_override_sets_the_cuda_image():
    module = load_images_module({"LMFORGE_COMPILE_GPU_IMAGE": GPU_PINNED})
    assert module.CUDA_IMAGE == GPU_PINNED
    assert module.IMAGE == module.DEFAULT_IMAGE


@pytest.mark.parametrize(
    "reference",
    [
        "ghcr.io/acme/lmforge:0.1.0-cpu",
        "localhost:5000/lmforge:dev",
        "lmforge:1",
        f"ghcr.io/acme/lmforge:0.1.0-cpu@{DIGEST}",
        f"docker.io/library/lmforge@{DIGEST}",
    ],
)
def test_tag_and_digest_references_are_accepted(reference):
    assert reference == load_images_module({"LMFORGE_COMPILE_IMAGE": reference}).IMAGE


def test_defaults_apply_when_the_overrides_are_empty():
    module = load_images_module({"LMFORGE_COMPILE_IMAGE": "", "LMFORGE_COMPILE_GPU_IMAGE": ""})
    assert (module.IMAGE, module.CUDA_IMAGE) == (module.DEFAULT_IMAGE, module.DEFAULT_CUDA_IMAGE)


@pytest.mark.parametrize("variable", ["LMFORGE_COMPILE_IMAGE", "LMFORGE_COMPILE_GPU_IMAGE"])
@pytest.mark.parametrize(
    "reference",
    [
        "ghcr.io/acme/lmforge@sha256:0123abcd",  # digest too short
        f"ghcr.io/acme/lmforge@{DIGEST.upper().replace('SHA256', 'sha256')}",  # uppercase hex
        f"ghcr.io/acme/lmforge@sha512:{'ab' * 64}",  # not sha256
        "ghcr.io/Acme/lmforge:1",  # uppercase repository
        "ghcr.io/acme/lmforge:bad tag",
        "ghcr.io/acme/lmforge:",
        "https://ghcr.io/acme/lmforge:1",
        f"@{DIGEST}",
    ],
)
def test_malformed_reference_is_refused_naming_the_variable(variable, reference):
    with pytest.raises(ConfigError, match=rf"^{variable}=.*not an image reference.*@sha256:<64"):
        load_images_module({variable: reference})


def test_repository_without_tag_or_digest_is_refused_as_an_implicit_latest():
    with pytest.raises(ConfigError, match=r"LMFORGE_COMPILE_IMAGE=.*neither a tag nor a digest"):
        load_images_module({"LMFORGE_COMPILE_IMAGE": "ghcr.io/acme/lmforge"})


def test_make_compile_hands_both_images_to_the_compiler():
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(REPO), "compile", f"IMAGE={CPU_PINNED}", f"GPU_IMAGE={GPU_PINNED}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"LMFORGE_COMPILE_IMAGE='{CPU_PINNED}' LMFORGE_COMPILE_GPU_IMAGE='{GPU_PINNED}'" in dry_run
    assert "lmforge compile" in dry_run


def test_compiled_pipelines_name_the_pinned_image(tmp_path):
    env = {**os.environ, "LMFORGE_COMPILE_IMAGE": CPU_PINNED, "LMFORGE_COMPILE_GPU_IMAGE": GPU_PINNED}
    subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "compile", "--output-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    compiled = sorted(tmp_path.glob("*.yaml"))
    assert compiled
    for path in compiled:
        # The pipeline spec is the first document; a platform spec (kfp-kubernetes) may follow.
        spec = next(d for d in yaml.safe_load_all(path.read_text()) if d and "deploymentSpec" in d)
        executors = spec["deploymentSpec"]["executors"]
        images = {e["container"]["image"] for e in executors.values()}
        assert images and images <= {CPU_PINNED, GPU_PINNED}, f"{path.name}: {images}"
