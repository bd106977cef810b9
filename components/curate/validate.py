"""A great-expectations (GX 1.x) suite over the curated records: the stage's own output contract.

The filters should already guarantee these properties; the suite checks that they did, with a
standard, inspectable report (``validation.json``) rather than trusting our own code. It runs in an
*ephemeral* GX context: no project files, no network (analytics off, no progress bars in pod logs).

Expectations: text non-null; text length within [min_chars, max_chars]; content hash unique; no
control characters other than newline and tab. A failed expectation raises :class:`DataError`
naming it and a few offending rows (file, line, start of text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from components.common.errors import DataError
from components.curate.document import Document
from components.curate.normalize import CONTROL_CHARS

SAMPLE_ROWS = 3


def build_suite(min_chars: int, max_chars: int):
    import great_expectations as gx

    e = gx.expectations
    return gx.ExpectationSuite(
        name="lmforge_curated_records",
        expectations=[
            e.ExpectColumnValuesToNotBeNull(column="text"),
            e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=min_chars, max_value=max_chars),
            e.ExpectColumnValuesToBeUnique(column="id"),
            e.ExpectColumnValuesToNotMatchRegex(column="text", regex=CONTROL_CHARS.pattern),
        ],
    )


def _ephemeral_context():
    # Set before GX reads it; setdefault lets an operator opt in explicitly.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def validate_documents(docs: Sequence[Document], *, min_chars: int, max_chars: int, result_path: Path) -> dict:
    """Run the suite on ``docs``; write the GX result JSON to ``result_path``; return its statistics.

    Raises :class:`DataError` (after writing the result) when any expectation fails.
    """
    import great_expectations as gx
    import pandas as pd

    frame = pd.DataFrame({"text": [d.text for d in docs], "id": [d.id for d in docs]})
    context = _ephemeral_context()
    batch = (
        context.data_sources.add_pandas("curate")
        .add_dataframe_asset("records")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(build_suite(min_chars, max_chars))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="curated_records", data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS},
    )
    report = result.to_json_dict()
    result_path.write_text(json.dumps(report, indent=2))
    if not result.success:
        raise DataError(_failure_message(result, docs, result_path))
    return dict(report["statistics"])


def _failure_message(result, docs: Sequence[Document], result_path: Path) -> str:
    lines = [f"curated records failed the great-expectations suite (full report: {result_path}):"]
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        args = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        lines.append(f"- {config.type} {args}: {r.result.get('unexpected_count', '?')} offending rows, e.g.")
        for i in r.result.get("partial_unexpected_index_list", [])[:SAMPLE_ROWS]:
            doc = docs[i]
            lines.append(f"    {doc.file}:{doc.line} id={doc.id} text={doc.text[:60]!r}")
        if r.exception_info.get("raised_exception"):
            lines.append(f"    GX error: {r.exception_info.get('exception_message')}")
    return "\n".join(lines)
