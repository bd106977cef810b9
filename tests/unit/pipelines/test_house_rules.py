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


# Layers point down: common <- training <- resilience <- stages <- pipelines. What each may import
# from `components` (besides itself); every other package under components/ is a stage.
LOWER_LAYERS = {"common": set(), "training": {"common"}, "resilience": {"common", "training"}}
STAGE_MAY_IMPORT = {"common", "training", "resilience"}


def _component_packages_imported(path: Path) -> set[str]:
    """The ``components.<package>`` names a module imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + (
                [f"{node.module}.{a.name}" for a in node.names] if node.module == "components" else []
            )
        found |= {n.split(".")[1] for n in names if n.startswith("components.") and n.count(".") >= 1}
    return found


def _layer_offenders(package: str, allowed: set[str]) -> list[str]:
    offenders = []
    for path in sorted((ROOT / "components" / package).rglob("*.py")):
        bad = _component_packages_imported(path) - allowed - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    return offenders


def test_lower_layers_never_import_a_layer_above():
    assert [o for pkg, allowed in LOWER_LAYERS.items() for o in _layer_offenders(pkg, allowed)] == []


def test_no_stage_imports_another_stage():
    stages = [p.name for p in (ROOT / "components").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    stages = [s for s in stages if s not in LOWER_LAYERS]
    assert [o for stage in stages for o in _layer_offenders(stage, STAGE_MAY_IMPORT)] == []
