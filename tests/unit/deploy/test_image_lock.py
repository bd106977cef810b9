"""The image lock files still describe pyproject.toml (so a dependency change without `make lock`
fails here, not in a half-built image), pin every package by version and hash, and split torch the
way the Dockerfiles install it: images/requirements.lock holds everything both images share and no
torch build; torch-cpu.lock / torch-cuda.lock add torch and what only it needs.

Checked for the images' platform (CPython images/python-version on Linux x86_64): a dependency
whose marker excludes that platform is not expected in the lock.
"""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .dockerfiles import SHARED_LOCK, TORCH_LOCKS, applies_in_image, lock_pins, lock_requirement_lines, relative
from .k8s_checks import pyproject

ALL_LOCKS = [SHARED_LOCK, *TORCH_LOCKS.values()]
# Packages only a CUDA build of torch pulls in; the shared lock must stay free of them.
CUDA_ONLY_PREFIXES = ("nvidia-", "cuda-", "triton")


def runtime_dependencies() -> list[Requirement]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return [r for r in reqs if applies_in_image(r)]


def coverage_problems(reqs: list[Requirement], pins: dict, lock: str) -> list[str]:
    problems = []
    for req in reqs:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is not in {lock}")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} in {lock} is outside pyproject.toml's {req.specifier}")
    return problems


@pytest.mark.parametrize("path", ALL_LOCKS, ids=relative)
def test_every_lock_entry_is_an_exact_pin_with_hashes(path):
    lines = lock_requirement_lines(path)
    pins = lock_pins(path)
    assert len(pins) == len(lines) > 0, f"{relative(path)} has entries that are not name==version pins"
    unhashed = [name for name, pin in pins.items() if not pin.hashes]
    assert unhashed == [], f"{relative(path)}: no --hash for {unhashed}"


def test_shared_lock_covers_every_runtime_dependency_but_torch():
    reqs = [r for r in runtime_dependencies() if r.name != "torch"]
    problems = coverage_problems(reqs, lock_pins(SHARED_LOCK), relative(SHARED_LOCK))
    assert problems == [], "; ".join(problems) + ". Run `make lock`."


@pytest.mark.parametrize("variant", TORCH_LOCKS)
def test_torch_lock_pins_the_torch_of_pyproject(variant):
    torch = [r for r in runtime_dependencies() if r.name == "torch"]
    problems = coverage_problems(torch, lock_pins(TORCH_LOCKS[variant]), relative(TORCH_LOCKS[variant]))
    assert problems == [], "; ".join(problems) + ". Run `make lock`."


def test_cpu_torch_lock_holds_the_cpu_build():
    assert lock_pins(TORCH_LOCKS["cpu"])["torch"].version.local == "cpu"


def test_cuda_torch_lock_holds_a_cuda_build_with_its_nvidia_runtime():
    pins = lock_pins(TORCH_LOCKS["cuda"])
    assert pins["torch"].version.local != "cpu"
    assert "nvidia-cuda-runtime" in pins


@pytest.mark.parametrize("variant", TORCH_LOCKS)
def test_torch_locks_hold_only_what_the_shared_lock_lacks(variant):
    # Both files are installed into one venv with --no-deps: a package in both could be pinned twice.
    shared = set(lock_pins(SHARED_LOCK))
    assert shared & set(lock_pins(TORCH_LOCKS[variant])) == set()


def test_shared_lock_holds_no_torch_build():
    names = set(lock_pins(SHARED_LOCK))
    assert "torch" not in names
    assert sorted(n for n in names if n.startswith(CUDA_ONLY_PREFIXES)) == []


def test_cpu_and_cuda_images_agree_on_the_packages_both_torch_locks_pin():
    cpu, cuda = lock_pins(TORCH_LOCKS["cpu"]), lock_pins(TORCH_LOCKS["cuda"])
    differing = {n: (cpu[n].version, cuda[n].version) for n in cpu.keys() & cuda.keys() if n != "torch"}
    assert {n: v for n, v in differing.items() if v[0] != v[1]} == {}
    assert cpu["torch"].version.public == cuda["torch"].version.public


@pytest.mark.parametrize("req", [r for r in runtime_dependencies() if r.extras], ids=str)
def test_lock_holds_the_packages_of_every_requested_extra(req):
    """ray[default,train] without a re-lock would still pass the version check above; the extras'
    own requirements (read from the installed distribution's metadata, so by name only: the
    installed release may differ from the locked one) must be locked too."""
    locked = set(lock_pins(SHARED_LOCK))
    missing = []
    for extra in sorted(req.extras):
        for line in importlib.metadata.requires(req.name) or []:
            dep = Requirement(line)
            from_extra = dep.marker and "extra" in str(dep.marker) and applies_in_image(dep, extra)
            if from_extra and canonicalize_name(dep.name) not in locked:
                missing.append(f"{dep.name} (from {req.name}[{extra}])")
    assert missing == [], f"not in {relative(SHARED_LOCK)}: {missing}. Run `make lock`."


def test_shared_lock_pins_a_setuptools_that_builds_the_project():
    # The images build the project and the lock's few sdists with --build-constraints on this lock.
    (backend,) = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    assert lock_pins(SHARED_LOCK)[canonicalize_name(backend.name)].version in backend.specifier


def test_pyproject_asks_ray_for_the_extras_kuberay_needs():
    (ray,) = [r for r in runtime_dependencies() if r.name == "ray"]
    assert {"default", "train"} <= ray.extras


def test_pyproject_declares_the_kubernetes_client_in_a_range_kfp_accepts():
    (client,) = [r for r in runtime_dependencies() if r.name == "kubernetes"]
    kfp_limits = [
        Requirement(line)
        for line in importlib.metadata.requires("kfp") or []
        if Requirement(line).name == "kubernetes" and not Requirement(line).marker
    ]
    locked = lock_pins(SHARED_LOCK)["kubernetes"].version
    assert kfp_limits and all(locked in limit.specifier for limit in kfp_limits)
    assert locked in client.specifier
