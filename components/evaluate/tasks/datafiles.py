"""Load a task's ``dataset_kwargs.data_files`` relative to this folder, wherever lmforge is installed.

lm-eval hands ``data_files`` to ``datasets.load_dataset`` unchanged, and ``datasets`` resolves a
relative path against the current working directory, so a YAML with ``data_files: x.jsonl`` works
only when run from this folder. A task YAML therefore names this loader as its ``custom_dataset``
(``!function datafiles.load_beside_yaml``): lm-eval calls it with the task's ``dataset_kwargs`` (and
its metadata), and it anchors every relative path here before calling ``load_dataset("json")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.common.errors import DataError

TASKS_DIR = Path(__file__).resolve().parent


def resolve_data_files(data_files: dict[str, str | list[str]]) -> dict[str, list[str]]:
    """Split name → absolute file paths; a missing file is an error that names it."""
    resolved: dict[str, list[str]] = {}
    for split, files in data_files.items():
        paths = [TASKS_DIR / f for f in ([files] if isinstance(files, str) else files)]
        for p in paths:
            if not p.is_file():
                raise DataError(f"task data file {p} is missing; rebuild it with {TASKS_DIR / 'build_tasks.py'}")
        resolved[split] = [str(p) for p in paths]
    return resolved


def load_beside_yaml(data_files: dict[str, str | list[str]], **_task_metadata: Any):
    """``custom_dataset`` hook: a ``DatasetDict`` of the JSON-lines files named in the task YAML."""
    import datasets

    return datasets.load_dataset("json", data_files=resolve_data_files(data_files))


def task_data_files(task: str) -> list[str]:
    """Absolute paths of the data files task ``task``'s YAML in this folder names (for lineage); [] if
    the task is not one of lmforge's own (lm-eval's built-in tasks bring their own data)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        """Reads lm-eval's ``!function module.name`` tags as plain strings."""

    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        if isinstance(spec, dict) and spec.get("task") == task:
            files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
            return [f for split in resolve_data_files(files).values() for f in split]
    return []
