"""checkov (static security scan) on the rendered chart, under the default and the hardened values, and
on the plain manifests in k8s/: no failed check, except those suppressed in the manifest itself with
a ``checkov.io/skip<N>: CKV_…=<reason>`` annotation.

checkov lives in its own virtual environment (``make checkov-venv``: ``.venv-checkov``) because it pins
a ``packaging`` older than pytest accepts; ``$LMFORGE_CHECKOV`` names its executable. Its severities
need an online API key, so failed checks are counted, not weighed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .k8s_checks import K8S, REPO, helm, rendered_objects
from .test_chart_render import VARIANTS


def checkov_executable() -> str | None:
    for candidate in (os.environ.get("LMFORGE_CHECKOV"), str(REPO / ".venv-checkov" / "bin" / "checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


pytestmark = [
    pytest.mark.skipif(helm() is None, reason="helm-python-sdk (Helm engine, dev extra) is not installed"),
    pytest.mark.skipif(checkov_executable() is None, reason="checkov is not installed: make checkov-venv"),
]


def test_checkov_finds_no_unsuppressed_failed_check_in_chart_and_manifests(tmp_path):
    for variant in ("defaults", "hardened"):
        docs = [obj for _, obj in rendered_objects(VARIANTS[variant])]
        (tmp_path / f"chart-{variant}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    shutil.copytree(K8S, tmp_path / "k8s")
    out = subprocess.run(
        [checkov_executable(), "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--quiet",
         "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr[-3000:]
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = {k: sum(r["summary"][k] for r in reports) for k in ("passed", "failed", "skipped")}
    failed = sorted(
        f"{c['check_id']} {c['resource']} ({Path(c['file_path']).name}): {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    )
    print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")
    print("\n".join(failed))
    assert failed == []
    assert summary["passed"] > 0
