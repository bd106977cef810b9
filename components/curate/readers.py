"""Read raw .txt / .jsonl (optionally gzip-compressed) and .parquet files into :class:`Document` records.

- ``.txt``: a record is a blank-line-separated paragraph, located by the line it starts on.
- ``.jsonl``: a record is one JSON object per line, its text in ``text_field``.
- ``.parquet``: a record is one row (``line`` = 1-based row number), its text in column ``text_field``;
  read a row group at a time through pyarrow, so memory stays flat.

Files are streamed line by line as bytes and decoded per record, so one bad byte costs one record,
not the file. A record that cannot be read becomes a :class:`Rejected` (routed to the quarantine by
:class:`SourceReader`), never an exception. A gzip stream that breaks part-way (truncated upload,
flipped bits) keeps the records read before the break and is reported as ``corrupt_file``. s3://
objects are downloaded to a temporary file first so memory stays flat whatever the object's size.
A parquet file that cannot be opened or breaks part-way is reported the same way.

:class:`SourceReaderStep` is the datatrove reader block: task ``rank`` of ``world_size`` reads every
``world_size``-th file, writes its own quarantine file and per-file summary, and counts records in
its datatrove stats. datatrove's own JSONL/Parquet readers skip a bad line with a log message; lmforge
needs the quarantine with file and line, hence its own reader.
"""

from __future__ import annotations

import copy
import gzip
import json
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from components.common.artifacts import file_digest
from components.common.errors import DataError
from components.common.log import get_logger
from components.curate.document import Document
from components.curate.quarantine import CORRUPT_FILE, Quarantine

log = get_logger(__name__)
UTF8_BOM = b"\xef\xbb\xbf"
PARQUET_BATCH_ROWS = 1024
# Every quarantine reason a reader emits: stable keys for the quarantined_<reason> metrics.
REASONS = (
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "missing_text_field",
    "text_not_string",
    "invalid_unicode",
    CORRUPT_FILE,
)


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str
    raw: str | bytes


class CorruptFileError(Exception):
    def __init__(self, line: int, cause: BaseException) -> None:
        super().__init__(f"unreadable from line {line}: {type(cause).__name__}: {cause}")
        self.line = line


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, raw bytes)``; a broken gzip stream raises :class:`CorruptFileError`."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, raw.removeprefix(UTF8_BOM) if lineno == 1 else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise CorruptFileError(lineno + 1, e) from e


def read_txt(path: Path, uri: str) -> Iterator[Document | Rejected]:
    para: list[bytes] = []
    start = 0
    try:
        for lineno, raw in numbered_lines(path):
            if raw.strip():
                if not para:
                    start = lineno
                para.append(raw)
            elif para:
                yield _paragraph(para, start, uri)
                para = []
    except CorruptFileError as e:
        # A paragraph cut by the break is incomplete: it is lost with the rest of the file, so the
        # report points at its first line.
        yield Rejected(start if para else e.line, CORRUPT_FILE, str(e))
        return
    if para:
        yield _paragraph(para, start, uri)


def _paragraph(lines: list[bytes], start: int, uri: str) -> Document | Rejected:
    raw = b"".join(lines)
    try:
        return Document(raw.decode("utf-8").rstrip("\r\n"), uri, start)
    except UnicodeDecodeError:
        return Rejected(start, "invalid_utf8", raw)


def read_jsonl(path: Path, uri: str, text_field: str) -> Iterator[Document | Rejected]:
    try:
        for lineno, raw in numbered_lines(path):
            if raw.strip():
                yield _json_record(raw, lineno, uri, text_field)
    except CorruptFileError as e:
        yield Rejected(e.line, CORRUPT_FILE, str(e))


def _json_record(raw: bytes, lineno: int, uri: str, text_field: str) -> Document | Rejected:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected(lineno, "invalid_utf8", raw)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return Rejected(lineno, "malformed_json", line)
    if not isinstance(obj, dict):
        return Rejected(lineno, "not_an_object", line)
    if text_field not in obj:
        return Rejected(lineno, "missing_text_field", line)
    text = obj[text_field]
    if not isinstance(text, str):
        return Rejected(lineno, "text_not_string", line)
    try:
        # JSON may spell lone surrogates (\ud800) that no UTF-8 consumer downstream can encode.
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Rejected(lineno, "invalid_unicode", line)
    return Document(text, uri, lineno)


def read_parquet(path: Path, uri: str, text_field: str) -> Iterator[Document | Rejected]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            yield Rejected(1, CORRUPT_FILE, f"no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
            return
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if isinstance(text, str):
                    yield Document(text, uri, row)
                else:
                    yield Rejected(row, "text_not_string", repr(text))
    except (pa.ArrowException, OSError) as e:
        yield Rejected(row + 1, CORRUPT_FILE, f"unreadable from row {row + 1}: {type(e).__name__}: {e}")


def read_records(path: Path, uri: str, text_field: str) -> Iterator[Document | Rejected]:
    """The records of one file, by its suffix (``.gz`` is looked through)."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        return read_parquet(path, uri, text_field)
    if name.endswith(".jsonl"):
        return read_jsonl(path, uri, text_field)
    return read_txt(path, uri)


@contextmanager
def local_copy(uri: str, store=None) -> Iterator[Path]:
    """A local path for ``uri``: the file itself, or a temporary download of an s3:// object."""
    if not uri.startswith("s3://"):
        yield Path(uri.removeprefix("file://"))
        return
    with tempfile.TemporaryDirectory(prefix="lmforge-curate-") as tmp:
        path = Path(tmp) / uri.rsplit("/", 1)[-1]
        store.download_file(uri, path)
        yield path


class SourceReader:
    """Yields the readable records of ``uris`` in order; bad ones go to ``quarantine``.

    After iteration, ``files`` holds ``{"uri", "sha256", "records", "quarantined", "error"}`` per file
    (records = every record found, readable or not; error = why the file stopped early, else None) for
    the manifest's lineage and the curation report.
    """

    def __init__(self, text_field: str, quarantine: Quarantine, store=None) -> None:
        self.text_field, self.quarantine, self.store = text_field, quarantine, store
        self.files: list[dict] = []

    def run(self, uris: list[str]) -> Iterator[Document]:
        for uri in uris:
            with local_copy(uri, self.store) as path:
                entry = {"uri": uri, "sha256": file_digest(path), "records": 0, "quarantined": 0, "error": None}
                self.files.append(entry)
                for item in read_records(path, uri, self.text_field):
                    if isinstance(item, Document):
                        entry["records"] += 1
                        yield item
                        continue
                    if item.reason == CORRUPT_FILE:
                        entry["error"] = str(item.raw)
                        log.warning(
                            "%s is corrupt (%s); skipped the rest of it, keeping the %d records read before",
                            uri,
                            item.raw,
                            entry["records"],
                        )
                    else:
                        entry["records"] += 1
                        entry["quarantined"] += 1
                    self.quarantine.add(uri, item.line, item.reason, item.raw)

    @property
    def records_read(self) -> int:
        return sum(f["records"] for f in self.files)


class SourceReaderStep(PipelineStep):
    """datatrove reader block over lmforge's :class:`SourceReader` (see the module docstring).

    Task ``rank`` writes ``<work_dir>/quarantine/<rank>.jsonl`` and ``<work_dir>/inputs/<rank>.json``
    (its files' summaries); stats: ``records``, ``quarantined`` and ``quarantined_<reason>``.
    """

    name = "read"
    type = "📖 - READER"

    def __init__(self, uris: list[str], text_field: str, work_dir: str | Path, store=None) -> None:
        super().__init__()
        self.uris, self.text_field, self.work_dir, self.store = list(uris), text_field, str(work_dir), store

    def __deepcopy__(self, memo: dict) -> SourceReaderStep:
        # LocalPipelineExecutor deep-copies the pipeline for each task; an S3 client holds locks
        # that cannot be copied, and it is safe to share within one process.
        new = SourceReaderStep.__new__(SourceReaderStep)
        new.__dict__.update({k: (v if k == "store" else copy.deepcopy(v, memo)) for k, v in self.__dict__.items()})
        return new

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            raise DataError("SourceReaderStep must be the first step of a pipeline")
        work = Path(self.work_dir)
        with Quarantine(work, f"{rank:05d}.jsonl") as quarantine:
            reader = SourceReader(self.text_field, quarantine, self.store)
            for doc in reader.run(self.uris[rank::world_size]):
                self.stat_update("forwarded")
                yield doc
        for reason, n in quarantine.counts.items():
            self.stat_update(f"quarantined_{reason}", value=n)
        self.stat_update("records", value=reader.records_read)
        self.stat_update("quarantined", value=quarantine.records)
        (work / "inputs").mkdir(parents=True, exist_ok=True)
        (work / "inputs" / f"{rank:05d}.json").write_text(json.dumps(reader.files))
