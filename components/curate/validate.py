"""A great-expectations (GX 1.x) suite over the curated records: the stage's own output contract.

The filters should already guarantee these properties; the suite checks that they did, with a
standard, inspectable report rather than trusting our own code (rephrased text, for one, comes from a
model after the filters ran). It runs in an *ephemeral* GX context: no project files, no network
(analytics off, no progress bars in pod logs), through a checkpoint whose action renders GX's data
docs (static HTML) into ``validation_docs/`` next to ``validation.json``: both are step artifacts.

Expectations: text non-null and non-empty; text length within [min_chars, max_chars]; id (the
content hash) unique; no control characters other than newline and tab; language in the allow-list
(when the language step ran); no e-mail address left, and no PII the redactor would still find —
its card and IP rules need checks a regex cannot express (Luhn, public address), so those results
are a ``pii_left`` column the suite expects to be empty (when the PII step ran). A failed expectation
raises :class:`DataError` naming it and a few offending rows (file, line, start of text).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from components.common.errors import DataError
from components.curate.document import Document
from components.curate.normalize import CONTROL_CHARS

SAMPLE_ROWS = 3
DOCS_SITE = "lmforge_validation"


def build_suite(min_chars: int, max_chars: int, *, languages: Sequence[str] = (), pii_regexes: Sequence[str] = ()):
    import great_expectations as gx

    e = gx.expectations
    expectations = [
        e.ExpectColumnValuesToNotBeNull(column="text"),
        e.ExpectColumnValueLengthsToBeBetween(column="text", min_value=max(min_chars, 1), max_value=max_chars),
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnValuesToNotMatchRegex(column="text", regex=CONTROL_CHARS.pattern),
    ]
    if languages:
        expectations.append(e.ExpectColumnValuesToBeInSet(column="language", value_set=sorted(languages)))
    if pii_regexes:
        expectations.append(e.ExpectColumnValuesToNotMatchRegexList(column="text", regex_list=list(pii_regexes)))
        expectations.append(e.ExpectColumnValuesToBeInSet(column="pii_left", value_set=[""]))
    return gx.ExpectationSuite(name="lmforge_curated_records", expectations=expectations)


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


def validate_documents(
    docs: Sequence[Document],
    *,
    min_chars: int,
    max_chars: int,
    result_path: Path,
    languages: Sequence[str] = (),
    pii=None,
    docs_dir: Path | None = None,
) -> dict:
    """Run the suite on ``docs``; write the GX result JSON to ``result_path`` (and data docs to
    ``docs_dir``); return its statistics. ``pii`` is the :class:`~components.curate.pii.PIIRedactor`
    whose rules must find nothing (None: no PII expectations).

    Raises :class:`DataError` (after writing the result) when any expectation fails.
    """
    import great_expectations as gx
    import pandas as pd

    columns = {"text": [d.text for d in docs], "id": [d.id for d in docs]}
    if languages:
        columns["language"] = [d.metadata.get("language") for d in docs]
    if pii is not None:
        columns["pii_left"] = [",".join(pii.find(d.text)) for d in docs]
    context = _ephemeral_context()
    actions = []
    if docs_dir is not None:
        shutil.rmtree(docs_dir, ignore_errors=True)
        backend = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={"class_name": "SiteBuilder", "store_backend": backend},
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE]))
    batch = (
        context.data_sources.add_pandas("curate")
        .add_dataframe_asset("records")
        .add_batch_definition_whole_dataframe("all")
    )
    pii_regexes = [pii.emails_replacer.regex.pattern] if pii is not None else []
    suite = context.suites.add(build_suite(min_chars, max_chars, languages=languages, pii_regexes=pii_regexes))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="curated_records", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="curate",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS},
        )
    )
    result = next(iter(checkpoint.run(batch_parameters={"dataframe": pd.DataFrame(columns)}).run_results.values()))
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
