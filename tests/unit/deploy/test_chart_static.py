"""charts/lmforge checked without Helm: what holds whether or not the Helm engine is installed.

The render tests (test_chart_render.py) need the Helm engine. These do not: the literal YAML of
every template (its skeleton, Go-template actions neutralised) parses into objects with apiVersion,
kind and metadata.name; values.yaml satisfies values.schema.json and documents every value; the
chart follows pyproject.toml's version and names the pipelines' image; and no file of the chart
holds a credential. Limitation: a skeleton that parses does not prove the template renders (a bad
`include` or `nindent` only shows under Helm), which is why the render tests exist."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from .k8s_checks import (
    CHART,
    chart_manifest_templates,
    load_documents,
    project_images,
    pyproject,
    secret_text_problems,
    template_skeleton,
)

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
# Keys under these are Kubernetes structure (requests/limits/cpu/memory), documented by the parent's comment.
STRUCTURAL_PARENTS = {"resources"}


@pytest.mark.parametrize("path", chart_manifest_templates(), ids=lambda p: p.name)
def test_template_skeleton_is_yaml_of_named_objects(path):
    docs = load_documents(template_skeleton(path.read_text()))
    assert docs, f"{path.name} yields no object"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: object without apiVersion/kind: {doc}"
        assert (doc.get("metadata") or {}).get("name"), f"{path.name}: {doc['kind']} without metadata.name"


def test_values_satisfy_the_schema_and_the_schema_is_valid():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize(
    "bad",
    [
        {"minio": {"rootPassword": "hunter22"}},
        {"postgres": {"password": "hunter22"}},
        {"s3": {"existingSecret": ""}},
        {"image": {"tag": ""}},
    ],
    ids=["minio-password", "postgres-password", "empty-secret-name", "empty-tag"],
)
def test_schema_rejects_credentials_unknown_keys_and_empty_references(bad):
    values = json.loads(json.dumps(VALUES))
    for section, fields in bad.items():
        values[section].update(fields)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, SCHEMA, cls=jsonschema.Draft7Validator)


def test_every_value_is_documented_by_a_comment():
    undocumented, parents = [], []  # parents: (indent, key) of the enclosing mappings
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):", line)
        if match:
            indent, key = len(match[1]), match[2]
            parents = [(i, k) for i, k in parents if i < indent]
            structural = any(k in STRUCTURAL_PARENTS for _, k in parents)
            if not structural and not previous.lstrip().startswith("#") and "#" not in line:
                undocumented.append(key)
            parents.append((indent, key))
        if line.strip():
            previous = line
    assert undocumented == []


def test_chart_follows_the_project_version_and_names_the_pipeline_image():
    version = pyproject()["project"]["version"]
    assert CHART_META["appVersion"] == version
    image, _ = project_images()
    assert f"{VALUES['image']['repository']}:{VALUES['image']['tag']}" == image
    assert VALUES["image"]["tag"].startswith(version)


def test_chart_is_self_contained():
    """No chart dependencies: installs must not need a chart repository."""
    assert "dependencies" not in CHART_META
    assert not (CHART / "charts").exists() and not (CHART / "Chart.lock").exists()


def test_values_reference_the_secrets_by_their_documented_names_and_keys():
    assert VALUES["s3"]["existingSecret"] == "lmforge-s3"
    assert (VALUES["s3"]["accessKeyIdKey"], VALUES["s3"]["secretAccessKeyKey"]) == (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    assert VALUES["postgres"]["existingSecret"] == "lmforge-postgres"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CHART.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
    ids=lambda p: str(p.relative_to(CHART)),
)
def test_chart_files_hold_no_literal_credentials(path):
    assert secret_text_problems(str(path.relative_to(CHART)), path.read_text()) == []


def test_trigger_watches_the_continual_source_of_its_profile():
    from components.common.config import load_config

    assert VALUES["trigger"]["newDataUri"] == load_config(VALUES["trigger"]["profile"]).continual.source
