"""images/ checked without a Docker engine.

The two project images must be able to form one Ray cluster under KubeRay and be rebuilt
identically: the same Python patch release from images/python-version, the locked dependencies
installed hash-checked in a builder stage, a slim runtime stage with the tools KubeRay's probes
call, uid 1000, base images pinned, and the image references components/common/images.py names.
The lock files' contents are checked in test_image_lock.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from .dockerfiles import (
    PROJECT_IMAGES,
    PYTHON_VERSION_FILE,
    SHARED_LOCK,
    TORCH_LOCKS,
    args_of,
    builder_stage,
    final_stage,
    global_args,
    instructions,
    lock_pins,
    relative,
    stages,
)
from .k8s_checks import IMAGES, REPO, project_images, pyproject, secret_text_problems

VENV = "/opt/lmforge/venv"


def dependency(name: str) -> Requirement:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def uv_pip_installs(path: Path) -> list[str]:
    """The arguments of every `uv pip install` the builder runs."""
    runs = " && ".join(builder_stage(path).args("RUN"))
    return [part.strip() for part in re.split(r"&&", runs) if part.strip().startswith("uv pip install")]


# --- one Python patch release for every Ray node ---------------------------------------------------


def test_python_version_file_names_one_patch_release_of_the_required_minor():
    version = PYTHON_VERSION_FILE.read_text().strip()
    assert re.fullmatch(r"3\.\d+\.\d+", version), f"{relative(PYTHON_VERSION_FILE)}: {version!r} is not X.Y.Z"
    assert version in SpecifierSet(pyproject()["project"]["requires-python"])


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_create_the_venv_with_the_python_of_the_version_file(name):
    builder = builder_stage(PROJECT_IMAGES[name])
    assert "images/python-version images/" in builder.args("COPY")
    assert 'uv venv --python "$(cat images/python-version)" "$VIRTUAL_ENV"' in builder.args("RUN")
    # only-managed: uv must not fall back to an interpreter the base image happens to ship.
    assert "UV_PYTHON_PREFERENCE=only-managed" in " ".join(builder.args("ENV"))


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_name_no_other_python_release(name):
    text = " ".join(rest for _, rest in instructions(PROJECT_IMAGES[name]))
    assert not re.search(r"(?<![\d.])3\.\d{2}(?![\d])", text), "a Python version outside images/python-version"
    assert not any(s.base.startswith("python:") for s in stages(PROJECT_IMAGES[name]))


def test_images_install_python_with_the_same_uv_release():
    # The uv release decides which python-build-standalone build a patch version resolves to.
    cpu, cuda = (global_args(PROJECT_IMAGES[n])["UV_IMAGE"] for n in ("cpu", "cuda"))
    assert cpu == cuda


def test_lock_is_resolved_for_the_images_python():
    makefile = (REPO / "Makefile").read_text()
    assert "--python-version $$(cat images/python-version)" in makefile
    assert "--python-platform x86_64-manylinux" in makefile


# --- multi-stage, installs only from the locks -----------------------------------------------------


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_runtime_stage_receives_only_the_interpreter_and_venv_from_the_builder(name):
    path = PROJECT_IMAGES[name]
    runtime = final_stage(path)
    assert runtime.name is None and runtime.base == builder_stage(path).base
    copied = sorted(rest for rest in runtime.args("COPY"))
    assert copied == ["--from=builder /opt/lmforge/venv /opt/lmforge/venv", "--from=builder /opt/python /opt/python"]


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_runtime_stage_installs_no_python_packages(name):
    runs = " ".join(final_stage(PROJECT_IMAGES[name]).args("RUN"))
    assert not re.search(r"\b(pip|uv)\b", runs)


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_install_dependencies_only_from_their_locks_with_hashes(name):
    installs = uv_pip_installs(PROJECT_IMAGES[name])
    from_locks = [i for i in installs if " -r " in i]
    assert [re.search(r"-r (\S+)", i)[1] for i in from_locks] == [
        relative(SHARED_LOCK),
        relative(TORCH_LOCKS[name]),
    ]
    for install in from_locks:
        assert "--require-hashes" in install and "--no-deps" in install, install


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_install_the_project_without_dependencies_and_check_the_result(name):
    installs = uv_pip_installs(PROJECT_IMAGES[name])
    (project,) = [i for i in installs if " -r " not in i]
    assert project.endswith(" .") and "--no-deps" in project
    # --no-deps everywhere: `uv pip check` is what proves the locks cover pyproject.toml.
    assert "uv pip check" in " ".join(builder_stage(PROJECT_IMAGES[name]).args("RUN"))


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_sdists_and_the_project_build_with_hash_checked_build_dependencies(name):
    for install in uv_pip_installs(PROJECT_IMAGES[name]):
        if "torch" in install:
            continue  # the torch locks hold wheels only
        assert f"--build-constraints {relative(SHARED_LOCK)} --require-build-hashes" in install, install


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_locks_are_copied_before_the_sources_so_code_changes_keep_the_dependency_layers(name):
    copies = [rest.split()[0] for rest in builder_stage(PROJECT_IMAGES[name]).args("COPY") if "--from" not in rest]
    assert copies.index(relative(SHARED_LOCK)) < copies.index("pyproject.toml")
    assert copies[-3:] == ["pyproject.toml", "components/", "pipelines/"]


def test_cpu_image_takes_the_cpu_torch_build_from_the_pytorch_cpu_index():
    (install,) = [i for i in uv_pip_installs(PROJECT_IMAGES["cpu"]) if relative(TORCH_LOCKS["cpu"]) in i]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install
    assert lock_pins(TORCH_LOCKS["cpu"])["torch"].version.local == "cpu"


def test_cuda_image_base_has_the_cuda_release_of_the_torch_build():
    base = final_stage(PROJECT_IMAGES["cuda"]).base
    base_cuda = re.match(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-", base)
    assert base_cuda, f"{base}: expected the nvidia/cuda base flavour (torch's wheels bring the CUDA libraries)"
    runtime = lock_pins(TORCH_LOCKS["cuda"])["nvidia-cuda-runtime"].version
    assert base_cuda[1] == f"{runtime.major}.{runtime.minor}"


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_fail_the_build_without_ray_default_extras(name):
    # The job API client and Ray Client import only with ray[default]: the RayJob submitter,
    # `ray job submit` and ray:// need them, KubeRay's probes need its dashboard agent.
    runs = " ".join(builder_stage(PROJECT_IMAGES[name]).args("RUN"))
    assert "from ray.job_submission import JobSubmissionClient" in runs and "ray.util.client" in runs


# --- base images, user, probes, secrets --------------------------------------------------------------

EXACT_TAG = re.compile(r":(?:[^:/@]*\d+\.\d+\.\d+[^:/@]*|[a-z]+-\d{8}(?:\.\d+)?)$")


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_base_images_are_pinned_to_exact_releases(name):
    aliases = {s.name for s in stages(PROJECT_IMAGES[name]) if s.name}
    for stage in stages(PROJECT_IMAGES[name]):
        if stage.base in aliases:
            continue
        pinned = "@sha256:" in stage.base or EXACT_TAG.search(stage.base)
        assert pinned and not stage.base.endswith(":latest"), f"{name}: FROM {stage.base} can move"


@pytest.mark.parametrize("path", [*PROJECT_IMAGES.values(), IMAGES / "Dockerfile.mlflow"])
def test_images_run_as_uid_1000(path):
    assert final_stage(path).args("USER")[-1] in ("1000", "1000:1000")
    assert "--uid 1000" in " ".join(final_stage(path).args("RUN"))


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_runtime_has_the_tools_kuberay_probes_call(name):
    # Without HTTP probes KubeRay runs `bash -c "wget … | grep success"` in the Ray container.
    runs = " ".join(final_stage(PROJECT_IMAGES[name]).args("RUN"))
    assert re.search(r"apt-get install [^&]*\bwget\b", runs)
    for tool in ("bash", "wget", "grep"):
        assert f"command -v {tool}" in runs


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_venv_stays_on_path_in_login_shells(name):
    # KubeRay before 1.4 starts `ray start` through `bash -lc`.
    runs = " ".join(final_stage(PROJECT_IMAGES[name]).args("RUN"))
    assert f'PATH="{VENV}/bin:$PATH"\' > /etc/profile.d/' in runs
    assert f"PATH={VENV}/bin:$PATH" in " ".join(final_stage(PROJECT_IMAGES[name]).args("ENV"))


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_carry_git_sha_and_image_reference_as_env(name):
    runtime = final_stage(PROJECT_IMAGES[name])
    env = " ".join(runtime.args("ENV"))
    for var in ("LMFORGE_GIT_SHA", "LMFORGE_IMAGE"):
        assert any(a.split("=")[0] == var for a in runtime.args("ARG"))
        assert f"{var}=${{{var}}}" in env


def test_image_references_are_the_ones_components_images_names():
    version = pyproject()["project"]["version"]
    for name, expected in zip(("cpu", "cuda"), project_images(), strict=True):
        path = PROJECT_IMAGES[name]
        default = next(a.split("=", 1)[1] for a in args_of(path, "ARG") if a.startswith("LMFORGE_IMAGE="))
        assert default == expected
        assert f"-t {expected} ." in path.read_text(), "the documented build command tags another image"
        assert expected.endswith(f":{version}-{name}")


@pytest.mark.parametrize("path", sorted(IMAGES.glob("Dockerfile.*")))
def test_images_leave_hf_offline_and_credentials_to_the_pod(path):
    declared = " ".join(args_of(path, "ENV") + args_of(path, "ARG"))
    assert "HF_HUB_OFFLINE" not in declared
    assert not re.search(r"AWS_|PASSWORD|SECRET|TOKEN", declared)
    assert secret_text_problems(str(path), path.read_text()) == []


def test_mlflow_server_image_has_basic_auth_support():
    # mlflow.auth (--app-name basic-auth) imports Flask-WTF, which only the [auth] extra brings.
    assert '"mlflow[auth]==' in " ".join(args_of(IMAGES / "Dockerfile.mlflow", "RUN"))


def test_mlflow_server_image_satisfies_the_client_range():
    (pin,) = re.findall(r"mlflow(?:\[[\w,]+\])?==([^\s\"]+)", " ".join(args_of(IMAGES / "Dockerfile.mlflow", "RUN")))
    assert pin in dependency("mlflow").specifier
    values = (REPO / "charts" / "lmforge" / "values.yaml").read_text()
    assert f"image: ghcr.io/lmforge/mlflow-server:{pin}\n" in values


# --- build context -------------------------------------------------------------------------------------


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    patterns = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def copied_into_images() -> list[str]:
    """Every context path a COPY of the project images names."""
    paths = set()
    for path in PROJECT_IMAGES.values():
        for rest in args_of(path, "COPY"):
            if not rest.startswith("--from"):
                paths.update(rest.split()[:-1])
    return sorted(paths)


@pytest.mark.parametrize("path", ["components/common/config.py", "pipelines/profiles/1b.yaml", *copied_into_images()])
def test_dockerignore_sends_what_the_images_copy(path):
    assert not dockerignored(path.rstrip("/"))


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".lmforge/store/x", "components/__pycache__/a.pyc"]
    + ["images/Dockerfile.cpu", "images/README.md"],
)
def test_dockerignore_keeps_local_state_out_of_the_context(path):
    assert dockerignored(path)


def test_build_context_installs_profiles_data_and_compiled_pipelines(tmp_path):
    """What `COPY` + `uv pip install .` put into the image: the wheel built from exactly the copied files."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy2(REPO / "pyproject.toml", context / "pyproject.toml")
    for tree in ("components", "pipelines"):

        def ignored(directory: str, names: list[str]) -> list[str]:
            return [n for n in names if dockerignored(str((Path(directory) / n).relative_to(REPO)))]

        shutil.copytree(REPO / tree, context / tree, ignore=ignored)
    (context / "pipelines" / "compiled").mkdir(exist_ok=True)
    (context / "pipelines" / "compiled" / "probe.yaml").write_text("pipelineInfo: {name: probe}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("lmforge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "components/common/images.py",
        "pipelines/profiles/1b.yaml",
        "pipelines/compiled/probe.yaml",
        "pipelines/data/quickstart/tinyshakespeare.txt",
    ):
        assert expected in names, f"{expected} would be missing from the image"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lmforge = pipelines.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith("tests/") for n in names)
