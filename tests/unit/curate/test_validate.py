import json

import pytest

from components.common.errors import DataError
from components.curate.document import Document, content_hash
from components.curate.validate import validate_documents


def doc(text: str, line: int, id_: str | None = None) -> Document:
    return Document(text, "raw.txt", line, id_ or content_hash(text))


GOOD = [doc("A fine line of verse, long enough.", 1), doc("Another line\nwith a newline\tand tab.", 4)]


def test_clean_records_pass_and_the_result_is_saved(tmp_path):
    stats = validate_documents(GOOD, min_chars=10, max_chars=100, result_path=tmp_path / "validation.json")
    assert stats["unsuccessful_expectations"] == 0 and stats["evaluated_expectations"] == 4
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert saved["success"] is True


def test_control_character_fails_naming_the_expectation_and_the_row(tmp_path):
    bad = [*GOOD, doc("a bell \x07 rings here", 9)]
    with pytest.raises(DataError) as err:
        validate_documents(bad, min_chars=10, max_chars=100, result_path=tmp_path / "validation.json")
    assert "expect_column_values_to_not_match_regex" in str(err.value)
    assert "raw.txt:9" in str(err.value)
    assert json.loads((tmp_path / "validation.json").read_text())["success"] is False


def test_duplicate_ids_and_out_of_range_lengths_fail(tmp_path):
    bad = [*GOOD, doc("short", 12), doc("A fine line of verse, long enough.", 20)]
    with pytest.raises(DataError) as err:
        validate_documents(bad, min_chars=10, max_chars=100, result_path=tmp_path / "validation.json")
    message = str(err.value)
    assert "expect_column_values_to_be_unique" in message and "raw.txt:20" in message
    assert "expect_column_value_lengths_to_be_between" in message and "raw.txt:12" in message
    assert "expect_column_values_to_not_match_regex" not in message


def with_language(text: str, line: int, language: str) -> Document:
    d = doc(text, line)
    d.metadata["language"] = language
    return d


def test_language_outside_the_allow_list_fails(tmp_path):
    docs = [
        with_language("A fine line of verse, long enough.", 1, "en"),
        with_language("Ein Satz auf Deutsch.", 5, "de"),
    ]
    with pytest.raises(DataError) as err:
        validate_documents(docs, min_chars=10, max_chars=100, result_path=tmp_path / "v.json", languages=["en"])
    assert "expect_column_values_to_be_in_set" in str(err.value) and "raw.txt:5" in str(err.value)


def test_pii_left_in_the_text_fails_naming_the_rows(tmp_path):
    from components.curate.pii import PIIRedactor

    docs = [*GOOD, doc("mail me: someone@example.org", 7), doc("card 4111 1111 1111 1111 here", 8)]
    with pytest.raises(DataError) as err:
        validate_documents(docs, min_chars=10, max_chars=100, result_path=tmp_path / "v.json", pii=PIIRedactor())
    message = str(err.value)
    assert "expect_column_values_to_not_match_regex_list" in message and "raw.txt:7" in message
    assert "'column': 'pii_left'" in message and "raw.txt:8" in message


def test_redacted_placeholders_pass_and_data_docs_are_rendered(tmp_path):
    from components.curate.pii import PIIRedactor

    docs = [*GOOD, doc("mail me: <EMAIL> or call <PHONE_NUMBER>.", 7)]
    stats = validate_documents(
        docs,
        min_chars=10,
        max_chars=100,
        result_path=tmp_path / "v.json",
        pii=PIIRedactor(),
        docs_dir=tmp_path / "docs",
    )
    assert stats["unsuccessful_expectations"] == 0 and stats["evaluated_expectations"] == 6
    assert (tmp_path / "docs" / "index.html").is_file()
    assert list((tmp_path / "docs" / "validations").rglob("*.html"))
