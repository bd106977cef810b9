import gzip
import logging

from components.curate.quarantine import RAW_LIMIT

from .helpers import read_all, write_jsonl

PLAY = "ROMEO:\nBut, soft! what light?\n\n\nJULIET:\nAy me!\r\n\nNURSE:\nMadam!\n"


def test_txt_records_are_paragraphs_with_their_start_line(tmp_path):
    src = tmp_path / "play.txt"
    src.write_text(PLAY)
    docs, rows, reader, _ = read_all([src], tmp_path / "out")
    assert [(d.line, d.text) for d in docs] == [
        (1, "ROMEO:\nBut, soft! what light?"),
        (5, "JULIET:\nAy me!"),
        (8, "NURSE:\nMadam!"),
    ]
    assert rows == [] and reader.files[0]["records"] == 3


def test_txt_gz_reads_like_txt(tmp_path):
    src = tmp_path / "play.txt.gz"
    src.write_bytes(gzip.compress(PLAY.encode()))
    docs, _, _, _ = read_all([src], tmp_path / "out")
    assert [d.line for d in docs] == [1, 5, 8]


def test_utf8_bom_is_not_part_of_the_first_record(tmp_path):
    src = tmp_path / "bom.txt"
    src.write_bytes(b"\xef\xbb\xbfHello there\n")
    docs, _, _, _ = read_all([src], tmp_path / "out")
    assert docs[0].text == "Hello there"


def test_malformed_json_is_quarantined_with_file_and_line(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "fine one"}, b'{"text": "broken', {"text": "fine two"}])
    docs, rows, _, q = read_all([src], tmp_path / "out")
    assert [d.text for d in docs] == ["fine one", "fine two"]
    assert [d.line for d in docs] == [1, 3]
    assert rows == [{"file": str(src), "line": 2, "reason": "malformed_json", "raw": '{"text": "broken\n'}]
    assert q.counts == {"malformed_json": 1}


def test_missing_field_non_string_text_and_non_objects_are_quarantined(tmp_path):
    rows_in = [{"body": "x"}, {"text": 42}, {"text": None}, [1, 2], {"text": "ok"}]
    docs, rows, reader, q = read_all([write_jsonl(tmp_path / "a.jsonl", rows_in)], tmp_path / "out")
    assert [d.text for d in docs] == ["ok"]
    assert [(r["line"], r["reason"]) for r in rows] == [
        (1, "missing_text_field"),
        (2, "text_not_string"),
        (3, "text_not_string"),
        (4, "not_an_object"),
    ]
    assert reader.records_read == 5 and q.records == 4


def test_text_field_is_configurable(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"content": "hello"}])
    docs, _, _, _ = read_all([src], tmp_path / "out", text_field="content")
    assert docs[0].text == "hello"


def test_non_utf8_bytes_in_jsonl_are_quarantined_and_shown(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [b'{"text": "caf\xe9"}', {"text": "good"}])
    docs, rows, _, _ = read_all([src], tmp_path / "out")
    assert [d.text for d in docs] == ["good"]
    assert rows[0]["reason"] == "invalid_utf8" and rows[0]["line"] == 1 and "\\xe9" in rows[0]["raw"]


def test_non_utf8_bytes_in_txt_cost_only_their_paragraph(tmp_path):
    src = tmp_path / "a.txt"
    src.write_bytes(b"good first\n\nbad \xff\xfe here\nsecond line\n\ngood last\n")
    docs, rows, _, _ = read_all([src], tmp_path / "out")
    assert [d.text for d in docs] == ["good first", "good last"]
    assert [(r["line"], r["reason"]) for r in rows] == [(3, "invalid_utf8")]


def test_lone_surrogate_in_json_is_quarantined(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [b'{"text": "half \\ud800 pair"}'])
    _, rows, _, _ = read_all([src], tmp_path / "out")
    assert rows[0]["reason"] == "invalid_unicode"


def test_quarantined_raw_is_truncated_to_2kb(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [b'{"text": ' + b"x" * 10_000])
    _, rows, _, _ = read_all([src], tmp_path / "out")
    assert len(rows[0]["raw"]) == RAW_LIMIT


def test_truncated_gzip_keeps_earlier_records_and_reports_the_file(tmp_path, caplog):
    # The lmforge logger may not propagate to the root (see common/log.py): listen on it directly.
    logging.getLogger("components.curate.readers").addHandler(caplog.handler)
    rows_in = [{"text": f"record number {i} " + "pad " * 20} for i in range(2000)]
    broken = write_jsonl(tmp_path / "broken.jsonl.gz", rows_in, compress=True)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    fine = write_jsonl(tmp_path / "fine.jsonl", [{"text": "after the broken file"}])
    docs, rows, reader, q = read_all([broken, fine], tmp_path / "out")
    from_broken = [d for d in docs if d.file == str(broken)]
    assert 0 < len(from_broken) < 2000
    assert [d.line for d in from_broken] == list(range(1, len(from_broken) + 1))
    assert docs[-1].text == "after the broken file"
    assert q.counts["corrupt_file"] == 1 and q.records == 0
    corrupt = [r for r in rows if r["reason"] == "corrupt_file"]
    assert corrupt[0]["file"] == str(broken) and corrupt[0]["line"] > len(from_broken)
    logging.getLogger("components.curate.readers").removeHandler(caplog.handler)
    assert f"{broken} is corrupt" in caplog.text


def test_garbage_with_gz_suffix_is_a_corrupt_file(tmp_path):
    bad = tmp_path / "notgzip.txt.gz"
    bad.write_bytes(b"this was never gzip\n")
    docs, rows, _, _ = read_all([bad], tmp_path / "out")
    assert docs == [] and [(r["line"], r["reason"]) for r in rows] == [(1, "corrupt_file")]


def test_reader_records_file_digest_and_record_count(tmp_path):
    from components.common.artifacts import file_digest

    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, b"nope", {"text": "two"}])
    _, _, reader, _ = read_all([src], tmp_path / "out")
    assert reader.files == [
        {"uri": str(src), "sha256": file_digest(src), "records": 3, "quarantined": 1, "error": None}
    ]


def test_truncated_gzip_is_named_in_the_file_summary_and_later_files_are_read(tmp_path):
    broken = write_jsonl(tmp_path / "a.jsonl.gz", [{"text": f"row {i} " * 30} for i in range(3000)], compress=True)
    broken.write_bytes(broken.read_bytes()[:5000])
    fine = write_jsonl(tmp_path / "b.jsonl", [{"text": "still read"}])
    docs, _, reader, _ = read_all([broken, fine], tmp_path / "out")
    assert "unreadable from line" in reader.files[0]["error"] and reader.files[1]["error"] is None
    assert docs[-1].text == "still read"


def write_parquet(path, column: str, values: list, row_group_size: int = 2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: values}), path, row_group_size=row_group_size)
    return path


def test_parquet_rows_are_records_numbered_from_one(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", "text", ["first row", "second row", "third row"])
    docs, rows, reader, _ = read_all([src], tmp_path / "out")
    assert [(d.line, d.text) for d in docs] == [(1, "first row"), (2, "second row"), (3, "third row")]
    assert rows == [] and reader.files[0]["records"] == 3


def test_parquet_null_text_is_quarantined_with_its_row(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", "content", ["ok", None, "fine"])
    docs, rows, _, _ = read_all([src], tmp_path / "out", text_field="content")
    assert [d.text for d in docs] == ["ok", "fine"]
    assert [(r["line"], r["reason"]) for r in rows] == [(2, "text_not_string")]


def test_parquet_without_the_text_column_is_reported_by_name(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", "body", ["x"])
    docs, rows, reader, _ = read_all([src], tmp_path / "out")
    assert docs == [] and rows[0]["reason"] == "corrupt_file" and "'text'" in reader.files[0]["error"]


def test_truncated_parquet_is_a_corrupt_file_and_the_next_file_is_read(tmp_path):
    src = write_parquet(tmp_path / "a.parquet", "text", [f"row {i}" for i in range(100)])
    src.write_bytes(src.read_bytes()[:200])
    fine = write_jsonl(tmp_path / "b.jsonl", [{"text": "after"}])
    docs, rows, reader, _ = read_all([src, fine], tmp_path / "out")
    assert [d.text for d in docs] == ["after"]
    assert [r["reason"] for r in rows] == ["corrupt_file"] and reader.files[0]["error"]
