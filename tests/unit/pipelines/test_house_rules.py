"""Rules of the house that keep the code base testable: only component.py files import kfp."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _imports_kfp(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n == "kfp" or n.startswith("kfp.") for n in names):
            return True
    return False


def test_only_component_modules_import_kfp():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "components").rglob("*.py")
        if p.name != "component.py" and _imports_kfp(p)
    ]
    assert offenders == []


def test_every_stage_folder_has_a_component():
    stages = ["curate", "pretrain", "continual", "align", "quantize", "evaluate", "register"]
    assert [s for s in stages if not (ROOT / "components" / s / "component.py").is_file()] == []
