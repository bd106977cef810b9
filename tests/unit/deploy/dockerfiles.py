"""What the image tests read: the Dockerfiles as stages of instructions, and the lock files as pins.

Hand-written on purpose: joining continuation lines, dropping comments, substituting the global
``ARG`` defaults into ``FROM`` and reading ``name==version --hash=…`` entries is all these checks
need, and neither is worth a parser dependency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .k8s_checks import IMAGES, REPO

PROJECT_IMAGES = {"cpu": IMAGES / "Dockerfile.cpu", "cuda": IMAGES / "Dockerfile.cuda"}
SHARED_LOCK = IMAGES / "requirements.lock"
TORCH_LOCKS = {"cpu": IMAGES / "torch-cpu.lock", "cuda": IMAGES / "torch-cuda.lock"}
PYTHON_VERSION_FILE = IMAGES / "python-version"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line, comments and continuations resolved."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            pending = ""
    return out


def args_of(path: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


@dataclass
class Stage:
    base: str  # the FROM reference, global ARG defaults substituted
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def args(self, word: str) -> list[str]:
        return [rest for w, rest in self.steps if w == word]


def global_args(path: Path) -> dict[str, str]:
    """The ``ARG NAME=default`` lines before the first FROM (the ones FROM may use)."""
    out = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            out[name] = default
    return out


def stages(path: Path) -> list[Stage]:
    defaults = global_args(path)
    out: list[Stage] = []
    for word, rest in instructions(path):
        if word == "FROM":
            parts = re.split(r"\s+as\s+", rest, flags=re.I)
            ref, alias = parts[0], (parts[1] if len(parts) > 1 else None)
            ref = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), ref)
            out.append(Stage(ref, alias))
        elif out:
            out[-1].steps.append((word, rest))
    return out


def final_stage(path: Path) -> Stage:
    return stages(path)[-1]


def builder_stage(path: Path) -> Stage:
    (stage,) = [s for s in stages(path) if s.name == "builder"]
    return stage


# --- lock files ------------------------------------------------------------------------------------

# The platform the images run on and the locks are resolved for (Makefile `lock`).
IMAGE_PYTHON = PYTHON_VERSION_FILE.read_text().strip()


def image_marker_environment(extra: str = "") -> dict[str, str]:
    """PEP 508 marker values inside the images: CPython IMAGE_PYTHON on Linux x86_64."""
    return {
        "implementation_name": "cpython",
        "implementation_version": IMAGE_PYTHON,
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": IMAGE_PYTHON,
        "python_version": ".".join(IMAGE_PYTHON.split(".")[:2]),
        "sys_platform": "linux",
        "extra": extra,
    }


def applies_in_image(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or Marker(str(req.marker)).evaluate(image_marker_environment(extra))


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]


_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<options>(?:\s*\\\n\s+--hash=\S+)*)", re.M
)


def lock_pins(path: Path) -> dict[str, Pin]:
    """Canonical package name -> its pin, for every ``name==version --hash=…`` entry."""
    text = path.read_text()
    pins = {}
    for m in _ENTRY.finditer(text):
        hashes = tuple(re.findall(r"--hash=(\S+)", m["options"]))
        pins[canonicalize_name(m["name"])] = Pin(Version(m["version"]), hashes)
    return pins


def lock_requirement_lines(path: Path) -> list[str]:
    """Every line of a lock that is not a comment, a blank or a hash continuation."""
    return [
        line
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "--hash="))
    ]


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))
