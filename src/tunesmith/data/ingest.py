"""Ingest: read one source of any format into a Parquet file of raw records, one row per record.

`ingest_source` writes one source's records to a Parquet file (the per-source cache curation reads,
so that changing one source re-reads only that one). Reading keeps what a quarantine must be able to
point at: the file, the line (JSONL, CSV: the line where the record starts; JSON arrays: the element;
Parquet and Hugging Face datasets: the row, all 1-based) and the record's own text, bad bytes
replaced and reported. Nothing is judged here beyond what only the reader can know: invalid UTF-8, a
CSV row of the wrong width or broken quoting (`malformed_csv`), and a line (or record) longer than
`curate.max_line_bytes` (`too_long`: skipped unparsed, so one huge line costs no more memory than the
limit; its first TOO_LONG_KEPT_CHARS characters are kept for the quarantine). Record styles are
curation's business (`tunesmith.data.styles`).

Over 350 lines because each format's reader keeps the line or row a quarantine points at (JSONL split a chunk
at a time, a Parquet file read again as bytes after a string that is not UTF-8, datasets); the CSV reader is
tunesmith.data.ingest_csv, what every reader shares (the rows a batch at a time, over-long lines, bad bytes)
tunesmith.data.records.
"""

from __future__ import annotations

import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunesmith.data.ingest_csv import read_csv
from tunesmith.data.records import (INGESTED_SCHEMA, MAX_LINE_BYTES, TOO_LONG_KEPT_CHARS, Columns, dumped, lines_of,
                                    repaired, skip_line, too_long)
from tunesmith.data.sources import IngestError, Source, resolve_source
from tunesmith.data.styles import json_object
from tunesmith.jobs.atomic import atomic_path
from tunesmith.jobs.progress import Progress

SOURCE_METADATA = b"tunesmith.source"
PROGRESS_RECORDS = 1_000_000  # a big corpus logs a line per this many records read (and every 30 s)
# Parquet (and dataset) column types that to_json writes as JSON strings although they hold no text: a
# timestamp mapped onto an instruction must be a wrong type, not the text "2024-01-01 00:00:00".
NOT_TEXT_TYPES = re.compile(r"^(DATE|TIME|TIMESTAMP|INTERVAL|UUID|BIT)\b")


def _decoded(data: bytes) -> tuple[str, bool]:
    """Text of a whole file (BOM dropped) and whether it had invalid UTF-8, kept as lone surrogates."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), True


# Lines are split a chunk at a time, read into one buffer kept for the file: a fresh 8 MiB object per chunk, and
# its copies (the unfinished line joined to the next chunk, the whole lines cut out), were half the time of
# splitting the bench corpus's 180 MiB (0.47-0.50 s against 0.23-0.25, one thread). At 64 MiB a chunk was a fresh
# mapping the kernel faulted in page by page (1-1.5 s of system time on that corpus, more than reading it).
JSONL_CHUNK_BYTES = 8 << 20


def _read_jsonl(file: str, out: Columns) -> None:
    """One row per line, split on LF only; CRLF and a line-1 BOM dropped; bad bytes found per line.
    Read in chunks of whole lines, each split and checked as UTF-8 at once (numpy, Arrow); only a
    chunk holding invalid UTF-8 is decoded line by line, to say which lines and where."""
    number, pending, buffer, more = 1, 0, None, True  # buffer[:pending]: a line not ended yet
    with open(file, "rb") as handle:
        while more:
            if buffer is None:  # a file smaller than a chunk (a glob's shards) gets a buffer of its size
                buffer = bytearray(handle.read(JSONL_CHUNK_BYTES))
                read = len(buffer)
            else:
                if len(buffer) < pending + JSONL_CHUNK_BYTES:  # an unfinished line longer than a chunk
                    buffer.extend(bytes(pending + JSONL_CHUNK_BYTES - len(buffer)))
                with memoryview(buffer) as view:
                    read = handle.readinto(view[pending:pending + JSONL_CHUNK_BYTES])
            more, size = read == JSONL_CHUNK_BYTES, pending + read  # a short read ends the file
            end = buffer.rfind(b"\n", 0, size) + 1
            if end:
                number = _add_jsonl_lines(file, number, buffer, out, end)
            pending = size - end
            buffer[:pending] = buffer[end:size]
            if pending > out.max_line_bytes:  # a line over the limit: skipped unparsed, never held whole
                head = bytes(buffer[:TOO_LONG_KEPT_CHARS * 4])
                skipped, rest = skip_line(handle, pending)
                out.add(file, number, *too_long(head, skipped, out.max_line_bytes))
                number, pending = number + 1, len(rest)
                buffer[:pending] = rest
        if pending:  # a last line without a newline
            _add_jsonl_lines(file, number, bytes(buffer[:pending]) + b"\n", out)


def _add_jsonl_lines(file: str, number: int, data, out: Columns, end: int | None = None) -> int:
    """Add the LF-terminated lines of `data[:end]` (the first numbered `number`); returns the next number.
    A CRLF's CR is dropped (one CR: "a\r\r\n" keeps one), then the lines are split at once (`lines_of`).
    Bytes of `data` past `end` are read by none of them."""
    import numpy

    end = len(data) if end is None else end
    bom = number == 1 and data.startswith(b"\xef\xbb\xbf")
    if bom or data.find(b"\r", 0, end) >= 0:
        data = data[3 if bom else 0:end].replace(b"\r\n", b"\n")
        end = len(data)
    lines, ends = lines_of(data, end)
    count = len(ends)
    longest = int((numpy.diff(ends, prepend=-1) - 1).max()) if count else 0
    try:
        out.add_lines(file, number, lines.cast(pa.large_string() if lines.type == pa.large_binary() else pa.string()),
                      longest)
    except pa.ArrowInvalid:  # invalid UTF-8 somewhere in the chunk
        for offset, piece in enumerate(lines.to_pylist()):
            try:
                out.add(file, number + offset, piece.decode("utf-8"))
            except UnicodeDecodeError as failure:
                out.add(file, number + offset, piece.decode("utf-8", errors="replace"), "invalid_utf8",
                        f"{failure.reason} at byte {failure.start}")
    return number + count


def _repeated_keys(value) -> list[str]:
    """The keys an object anywhere in a parsed value repeats (objects parsed with styles.json_object)."""
    if isinstance(value, list):
        return sorted({key for item in value for key in _repeated_keys(item)})
    if not isinstance(value, dict):
        return []
    own = getattr(value, "repeated", [])
    return sorted({*own, *(key for item in value.values() for key in _repeated_keys(item))})


def _read_json(file: str, out: Columns) -> None:
    """A JSON array: one row per element (`line` = its 1-based index). Any other document, or text
    that does not parse, is one row, so it is quarantined (or kept, if it is a single record)."""
    text, bad_bytes = _decoded(Path(file).read_bytes())
    if not text.strip():
        return
    try:
        document = json.loads(text, object_pairs_hook=json_object)
    except ValueError:
        document = None
    else:
        if isinstance(document, list):
            for index, element in enumerate(document, start=1):
                raw, reason, detail = dumped(element, bad_bytes)
                repeated = _repeated_keys(element)
                if reason is None and repeated:  # the element is re-written from a dict: say so before it is lost
                    reason, detail = "duplicate_key", f"repeated: {', '.join(repeated)}"
                out.add(file, index, raw, reason, detail)
            return
    if bad_bytes:
        out.add(file, 1, repaired(text), "invalid_utf8", "invalid UTF-8 bytes in the document")
    else:
        out.add(file, 1, text)


def _quoted(name: str, quote: str) -> str:
    return quote + name.replace(quote, quote * 2) + quote


def _json_object_sql(columns: list[tuple[str, str]]) -> str:
    """SQL turning a row into the JSON object text of the given (name, DuckDB type) columns. Binary
    columns are text stored as bytes: decoded as UTF-8 (NULL where they are not valid UTF-8, see
    `_invalid_bytes_sql`), not written as escaped bytes."""
    def value(name: str, kind: str) -> str:
        column = _quoted(name, chr(34))
        return f"try(decode({column}))" if kind == "BLOB" else column
    struct = ", ".join(f"{_quoted(name, chr(39))}: {value(name, kind)}" for name, kind in columns)
    return f"to_json({{{struct}}})" if columns else "'{}'"


def _invalid_bytes_sql(columns: list[tuple[str, str]]) -> str:
    """SQL naming the binary columns of a row that are not valid UTF-8 ('' when none)."""
    checks = [f"CASE WHEN {_quoted(name, chr(34))} IS NOT NULL AND try(decode({_quoted(name, chr(34))})) IS NULL "
              f"THEN {_quoted(name, chr(39))} END" for name, kind in columns if kind == "BLOB"]
    return f"concat_ws(', ', {', '.join(checks)})" if checks else "''"


def _not_text(columns: list[tuple[str, str]]) -> dict[str, str]:
    """{column: its type, lower-cased} of the columns whose values to_json writes as strings though
    they hold no text (timestamps, dates, UUIDs...): curation's wrong_type check needs to know them."""
    return {name: kind.lower() for name, kind in columns if NOT_TEXT_TYPES.match(kind)}


def _as_bytes(file: str) -> pa.Table:
    """A Parquet file with its string columns read as bytes, so that a value that is not UTF-8 is one
    bad row (decoded by `_json_object_sql`, reported by `_invalid_bytes_sql`), not an unreadable file."""
    schema = pq.read_schema(file)
    binary = pa.schema([field.with_type(pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary())
                        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type) else field
                        for field in schema])
    return _numbered(pq.read_table(file, schema=binary))


def _numbered(table: pa.Table) -> pa.Table:
    """`table` with each row's 0-based number as `file_row_number`, the column DuckDB's Parquet scan adds."""
    import numpy

    return table.append_column("file_row_number", pa.array(numpy.arange(len(table), dtype=numpy.int64)))


def _read_parquet(source: Source, out: Columns) -> None:
    """`line` = the row's 1-based number in its file. Each file is its own DuckDB scan, streamed a batch at a
    time (a source larger than memory reads in bounded memory), so shards whose column types differ are each
    read as they are (a union would cast one shard's numbers to the other's text, hiding a wrong type); each
    record holds its shard's columns. A scan that meets a string that is not UTF-8 reads the rest of its file
    again with strings as bytes, so the bad value costs its row (invalid_utf8), not the source."""
    files = sorted(source.files)
    with duckdb.connect(config={"threads": 1}) as con:
        described = {}
        for file in files:  # every file's columns before any row: the ingested file's metadata names them all
            try:
                pq.read_schema(file)
            except (OSError, pa.ArrowException) as error:
                raise IngestError(f"{source.at(file)}: cannot read: {error}") from None
            described[file] = _columns(con, "read_parquet($file)", {"file": file})
            if _not_text(described[file]):
                out.not_text[file] = _not_text(described[file])
        for file in files:
            added = [0]
            try:
                _add_rows(con, "read_parquet($file, file_row_number = true)", {"file": file}, described[file], file,
                          out, added)
            except (duckdb.InvalidInputException, OSError) as error:  # OSError: raised through Arrow's reader
                if "Invalid string encoding" not in str(error):
                    raise
                con.register("bytes_read", _as_bytes(file))
                _add_rows(con, f"bytes_read WHERE file_row_number >= {added[0]}", None,
                          _columns(con, "bytes_read", None), file, out, added)
                con.unregister("bytes_read")


def _columns(con, scan: str, parameters: dict | None) -> list[tuple[str, str]]:
    """(name, DuckDB type) of a scan's columns, but the row number the scan adds."""
    return [(name, kind) for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM {scan}", parameters).fetchall()
            if name != "file_row_number"]


def _add_rows(con, scan: str, parameters: dict | None, columns: list[tuple[str, str]], file: str, out: Columns,
              counter: list[int]) -> None:
    """The rows of `scan` (one file, with `file_row_number`, in its order) into `out` as JSON objects, a batch
    at a time; `counter[0]` counts the rows added, so that a scan failing half-way can be resumed."""
    reader = con.sql(f"SELECT file_row_number + 1 AS line, {_json_object_sql(columns)} AS raw, "
                     f"{_invalid_bytes_sql(columns)} AS invalid FROM {scan}", params=parameters).to_arrow_reader(out.BATCH_ROWS)
    for batch in reader:
        lines, raws, invalid = (batch.column(name) for name in ("line", "raw", "invalid"))
        first = lines[0].as_py()
        if pc.all(pc.equal(invalid, "")).as_py() and lines[-1].as_py() - first == len(batch) - 1:
            out.add_lines(file, first, raws)
        else:  # bad bytes in some row (or rows out of order: never seen, but then each row alone)
            for line, raw, bad in zip(lines.to_pylist(), raws.to_pylist(), invalid.to_pylist()):
                out.add(file, line, raw, *(("invalid_utf8", f"column(s) {bad}: invalid UTF-8 bytes") if bad else ()))
        counter[0] += len(batch)


def _load_hf(source: Source):
    """A dataset saved with save_to_disk, or anything `datasets.load_dataset` takes (hub id, folder)."""
    import datasets  # slow to import; only Hugging Face sources need it

    folder = Path(source.path)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        dataset = datasets.load_from_disk(str(folder))
        if isinstance(dataset, datasets.DatasetDict):
            if source.split not in dataset:
                raise IngestError(f"{source.where}: no split '{source.split}' (it has {sorted(dataset)})")
            dataset = dataset[source.split]
        return dataset
    return datasets.load_dataset(source.path, split=source.split)


def _read_hf(source: Source, out: Columns) -> None:
    try:
        dataset = _load_hf(source)
    except IngestError:
        raise
    except Exception as error:  # datasets raises many kinds; all mean the source cannot be read
        raise IngestError(f"{source.where}: cannot load the dataset: {type(error).__name__}: {error}") from None
    table = dataset.with_format("arrow")[:]  # honours any index mapping (select, shuffle); memory-mapped
    with duckdb.connect(config={"threads": 1}) as con:
        con.register("dataset", _numbered(table))
        columns = _columns(con, "dataset", None)
        if _not_text(columns):
            out.not_text[source.path] = _not_text(columns)
        _add_rows(con, "dataset", None, columns, source.path, out, [0])


def _read_into(source: Source, out: Columns) -> None:
    """Every record of a source into `out`, files in sorted order."""
    try:
        if source.format == "parquet":
            _read_parquet(source, out)
        elif source.format == "hf":
            _read_hf(source, out)
        else:
            for file in source.files:
                if source.format == "jsonl":
                    _read_jsonl(file, out)
                elif source.format == "json":
                    _read_json(file, out)
                else:
                    read_csv(file, out, source)
        out.flush()
    except OSError as error:
        raise IngestError(f"{source.at(str(error.filename))}: cannot read: {error.strerror or error}") from None
    except duckdb.Error as error:
        raise IngestError(f"{source.where}: cannot read: {error}") from None


def ingest_source(source: dict, out_path: str, max_line_bytes: int = MAX_LINE_BYTES) -> dict:
    """Read one source into a Parquet file of raw records (INGESTED_SCHEMA), atomically.

    This is the per-source cache curation reads: a recipe change to one source re-reads only that
    source. The file's metadata (SOURCE_METADATA) records what was read: id, path, format, split and
    the files, so curation can count files and refuse a file ingested from another path, and per file
    the columns of types that hold no text (`not_text`, for curation's wrong_type check). A line or
    record over `max_line_bytes` (curate.max_line_bytes) is quarantined as too_long, unparsed. Returns
    that record with the row count."""
    resolved = resolve_source(source)
    described = {"id": resolved.id, "path": resolved.path, "format": resolved.format, "split": resolved.split,
                 "files": list(resolved.files)}
    read = Progress(f"ingest {resolved.id}", None, "records read", every=PROGRESS_RECORDS)
    with atomic_path(out_path) as tmp, contextlib.ExitStack() as stack:
        writers = []

        def writer():  # opened at the first batch: the readers know the column types by then
            if not writers:
                metadata = {**described, "not_text": out.not_text}
                schema = INGESTED_SCHEMA.with_metadata({SOURCE_METADATA: json.dumps(metadata, ensure_ascii=False)})
                # No dictionary for the raw text: records rarely repeat, and the writer would build
                # one per row group only to drop it
                writers.append(stack.enter_context(pq.ParquetWriter(
                    tmp, schema, use_dictionary=[name for name in schema.names if name != "raw"])))
            return writers[0]

        # One batch is encoded and compressed on a second thread (pyarrow lets the GIL go meanwhile) while
        # the next is read: the 1M-row bench corpus ingests in 0.7-0.85 s instead of 1.0-1.1.
        pool, written = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="ingest-write")), []

        def finished(batch):  # a failure to write is not one to read (which _read_into reports)
            try:
                batch.result()
            except OSError as error:
                raise IngestError(f"{resolved.where}: cannot write {out_path}: {error.strerror or error}") from None

        def write(batch):
            sink = writer()
            if written:
                finished(written.pop())
            written.append(pool.submit(sink.write_batch, batch.replace_schema_metadata(sink.schema.metadata)))
            read.update(read.done + batch.num_rows)

        out = Columns(resolved.id, write, max_line_bytes)
        try:
            _read_into(resolved, out)
            writer()
        finally:
            wait(written)  # the file is never closed (or abandoned) under a batch being written
        for batch in written:
            finished(batch)
    read.close()
    return {**described, "not_text": out.not_text, "rows": out.rows}


def ingested_source(path: str) -> dict:
    """The SOURCE_METADATA record of an ingested Parquet file."""
    metadata = pq.read_schema(path).metadata or {}
    if SOURCE_METADATA not in metadata:
        raise IngestError(f"{path}: not a file written by tunesmith.data.ingest.ingest_source")
    return json.loads(metadata[SOURCE_METADATA])
