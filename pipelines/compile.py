"""Compile every pipeline to KFP IR YAML in ``pipelines/compiled/`` and check the committed copies.

The compiled YAML is committed so the Kubeflow UI and the GitOps path use reviewed artefacts; a
test runs :func:`check_compiled` so a change to a component that is not recompiled fails CI.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

# The SDK version line changes with a patch release of kfp without changing the pipeline.
_VOLATILE = re.compile(r"^sdkVersion: .*$", re.MULTILINE)


def compile_all(output_dir: Path) -> list[Path]:
    from kfp import compiler

    from pipelines.cli import PIPELINES, _pipeline

    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PIPELINES:
        path = output_dir / f"{name}.yaml"
        compiler.Compiler().compile(_pipeline(name), str(path))
        written.append(path)
    return written


def _normalized(path: Path) -> str:
    return _VOLATILE.sub("", path.read_text())


def check_compiled(compiled_dir: Path) -> list[str]:
    """Names of the committed pipelines that differ from a fresh compile (empty when up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(Path(tmp))
        return [
            p.name
            for p in fresh
            if not (compiled_dir / p.name).exists() or _normalized(p) != _normalized(compiled_dir / p.name)
        ]
