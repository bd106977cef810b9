"""images/ checked without a Docker engine: the Dockerfiles install the project exactly as
pyproject.toml declares it (same Python minor, same torch pin), run as uid 1000, carry the git SHA
and image reference into MLflow's tags, and name the image components/common/images.py names."""

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

from .k8s_checks import IMAGES, REPO, project_images, pyproject, secret_text_problems

PROJECT_IMAGES = {"cpu": IMAGES / "Dockerfile.cpu", "cuda": IMAGES / "Dockerfile.cuda"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line. Hand-written: joining continuation lines and
    dropping comments is all these checks need, not worth a parser dependency."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def args_of(path: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


def dependency(name: str) -> Requirement:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def required_python_minor() -> str:
    spec = SpecifierSet(pyproject()["project"]["requires-python"])
    minors = [f"3.{m}" for m in range(8, 20) if f"3.{m}.0" in spec]
    assert len(minors) == 1, f"requires-python {spec} allows {minors}; the images pin one minor"
    return minors[0]


def test_cpu_image_is_python_slim_of_the_required_minor():
    assert args_of(PROJECT_IMAGES["cpu"], "FROM") == [f"python:{required_python_minor()}-slim"]


def test_cuda_image_installs_the_required_python_minor_on_a_cuda_base():
    minor = required_python_minor()
    runs = " ".join(args_of(PROJECT_IMAGES["cuda"], "RUN"))
    assert f"uv python install {minor}" in runs and f"--python {minor}" in runs
    assert args_of(PROJECT_IMAGES["cuda"], "FROM")[-1].startswith("nvidia/cuda:")


@pytest.mark.parametrize(("name", "index"), [("cpu", "/whl/cpu"), ("cuda", "/whl/${TORCH_CUDA}")])
def test_images_pin_the_torch_of_pyproject_from_the_pytorch_index(name, index):
    (pin,) = dependency("torch").specifier
    assert pin.operator == "==", "pyproject.toml must pin torch exactly"
    torch_runs = [r for r in args_of(PROJECT_IMAGES[name], "RUN") if "pip install torch" in r]
    assert torch_runs == [f"pip install torch=={pin.version} --index-url https://download.pytorch.org{index}"]


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_install_the_copied_project_with_pip(name):
    steps = instructions(PROJECT_IMAGES[name])
    copies = [i for i, (w, rest) in enumerate(steps) if w == "COPY" and not rest.startswith("--from")]
    assert [steps[i][1].split()[0] for i in copies] == ["pyproject.toml", "components/", "pipelines/"]
    project_install = [i for i, (w, r) in enumerate(steps) if w == "RUN" and re.search(r"\bpip install \.(\s|$)", r)]
    assert len(project_install) == 1 and project_install[0] > max(copies)
    # Nothing but the torch build and the project is pip-installed: dependencies come from pyproject.toml only.
    (pin,) = dependency("torch").specifier
    installed = [t for w, rest in steps if w == "RUN" for t in re.findall(r"pip install (\S+)", rest)]
    assert sorted(installed) == [".", f"torch=={pin.version}"]


@pytest.mark.parametrize("path", [*PROJECT_IMAGES.values(), IMAGES / "Dockerfile.mlflow"])
def test_images_run_as_uid_1000(path):
    assert args_of(path, "USER")[-1] in ("1000", "1000:1000")
    assert "--uid 1000" in " ".join(args_of(path, "RUN"))


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_images_carry_git_sha_and_image_reference_as_env(name):
    args = args_of(PROJECT_IMAGES[name], "ARG")
    env = " ".join(args_of(PROJECT_IMAGES[name], "ENV"))
    for var in ("LMFORGE_GIT_SHA", "LMFORGE_IMAGE"):
        assert any(a.split("=")[0] == var for a in args)
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


def test_mlflow_server_image_satisfies_the_client_range():
    (pin,) = re.findall(r"mlflow==(\S+)", " ".join(args_of(IMAGES / "Dockerfile.mlflow", "RUN")))
    assert pin in dependency("mlflow").specifier
    values = (REPO / "charts" / "lmforge" / "values.yaml").read_text()
    assert f"image: ghcr.io/lmforge/mlflow-server:{pin}\n" in values


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


@pytest.mark.parametrize("path", ["pyproject.toml", "components/common/config.py", "pipelines/profiles/1b.yaml"])
def test_dockerignore_sends_the_project(path):
    assert not dockerignored(path)


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".lmforge/store/x", "components/__pycache__/a.pyc"]
)
def test_dockerignore_keeps_local_state_out_of_the_context(path):
    assert dockerignored(path)


def test_build_context_installs_profiles_data_and_compiled_pipelines(tmp_path):
    """What `COPY` + `pip install .` put into the image: the wheel built from exactly the copied files."""
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
