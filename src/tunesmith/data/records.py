"""Records as ingest's readers read them, before they are written: the ingested file's schema, the rows of a
source a batch at a time (`Columns`), and what any reader makes of a record it cannot take as it is: a line
or record over curate.max_line_bytes (`too_long`, `skip_line`) and invalid UTF-8 (`repaired`, `dumped`).
The readers are tunesmith.data.ingest (JSONL, JSON, Parquet, Hugging Face datasets) and
tunesmith.data.ingest_csv.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

# One row per record as read: the per-source cache that curation reads (tunesmith.data.ingest.ingest_source).
INGESTED_SCHEMA = pa.schema([("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
                             ("raw", pa.string()), ("read_reason", pa.string()), ("read_detail", pa.string())])
SURROGATES = re.compile("[\ud800-\udfff]")
MAX_LINE_BYTES = 8 << 20  # the schema's default of curate.max_line_bytes, for direct calls
TOO_LONG_KEPT_CHARS = 1000  # what the quarantine keeps of a line over the limit (the card shows as much)
SKIP_BYTES = 1 << 20  # an over-long line is skipped in pieces of this size


class Columns:
    """Rows as they are read; once BATCH_ROWS of them are in, they go to `sink` as one Arrow batch (a CSV block
    read at once may take it past), so a source of millions of lines never sits in memory as Python objects."""
    BATCH_ROWS = 65_536

    def __init__(self, source_id: str, sink, max_line_bytes: int = MAX_LINE_BYTES):
        self.source_id, self.sink, self.rows, self.max_line_bytes = source_id, sink, 0, max_line_bytes
        self.not_text: dict[str, dict[str, str]] = {}  # file -> {column: type}: see tunesmith.data.ingest
        self.file, self.line, self.raw, self.reason, self.detail = [], [], [], [], []
        self.staged: list[pa.RecordBatch] = []  # rows before the lists' (add_batch), sent with them as one batch
        self.staged_rows = 0

    def add(self, file, line, raw, reason=None, detail=None):
        # Every reader's records pass here: a record too long for curation (a JSON array's element, a
        # Parquet row) is quarantined like an over-long line, which the line readers never parse.
        if reason is None and raw is not None and len(raw) * 4 > self.max_line_bytes:
            size = len(raw.encode("utf-8", errors="surrogatepass"))
            if size > self.max_line_bytes:
                raw, reason, detail = too_long(raw, size, self.max_line_bytes)
        self.file.append(file)
        self.line.append(line)
        self.raw.append(raw)
        self.reason.append(reason)
        self.detail.append(detail)
        if len(self.line) + self.staged_rows >= self.BATCH_ROWS:
            self.flush()

    def add_records(self, file: str, lines: list[int], raws: list[str]) -> None:
        """Records of one file with no reader reason, in order: what `add` makes of each, in fewer calls."""
        if max(map(len, raws), default=0) * 4 > self.max_line_bytes:  # one may be over the limit: `add` checks
            for line, raw in zip(lines, raws):
                self.add(file, line, raw)
            return
        self.file += [file] * len(raws)
        self.line += lines
        self.raw += raws
        self.reason += [None] * len(raws)
        self.detail += [None] * len(raws)
        if len(self.line) + self.staged_rows >= self.BATCH_ROWS:
            self.flush()

    def add_batch(self, file: str, lines, raw, reason, detail) -> None:
        """Records of one file, in order: their lines (numpy) and Arrow string arrays (raw, reason, detail), each
        within curate.max_line_bytes. Kept with the rows around them until a batch is full."""
        self._stage()
        self.staged.append(self._batch(pa.repeat(pa.scalar(file, pa.string()), len(raw)), lines, raw, reason, detail))
        self.staged_rows += len(raw)
        if self.staged_rows >= self.BATCH_ROWS:
            self.flush()

    def add_lines(self, file: str, first_line: int, raw, longest: int | None = None) -> None:
        """Consecutive lines of one file as an Arrow string array (no reader reason), in order;
        `longest`: the longest line's bytes when the caller knows it."""
        import numpy
        import pyarrow.compute as pc

        if longest is None:
            longest = pc.max(pc.binary_length(raw)).as_py() if len(raw) else 0
        if longest > self.max_line_bytes:
            for offset, text in enumerate(raw.to_pylist()):  # rare: the few over-long rows get their reason
                self.add(file, first_line + offset, text)
            return
        self.flush()
        n = len(raw)
        self.rows += n
        self.sink(self._batch(pa.repeat(pa.scalar(file, pa.string()), n), numpy.arange(first_line, first_line + n),
                              raw.cast(pa.string()), pa.nulls(n, pa.string()), pa.nulls(n, pa.string())))

    def _batch(self, files, lines, raw, reason, detail) -> pa.RecordBatch:
        """A batch of INGESTED_SCHEMA: this source's rows, their files, lines, raw texts and reader reasons."""
        return pa.record_batch([pa.repeat(pa.scalar(self.source_id, pa.string()), len(raw)), files,
                                pa.array(lines, pa.int64()), raw, reason, detail], schema=INGESTED_SCHEMA)

    def _stage(self) -> None:
        """The rows in the lists as a batch, after the staged ones."""
        if not self.line:
            return
        self.staged.append(self._batch(pa.array(self.file, pa.string()), self.line, pa.array(self.raw, pa.string()),
                                       pa.array(self.reason, pa.string()), pa.array(self.detail, pa.string())))
        self.staged_rows += len(self.line)
        self.file, self.line, self.raw, self.reason, self.detail = [], [], [], [], []

    def flush(self):
        """Send every row added so far, as one batch."""
        self._stage()
        if self.staged:
            batch = self.staged[0] if len(self.staged) == 1 else pa.concat_batches(self.staged)
            self.staged, self.staged_rows = [], 0
            self.rows += batch.num_rows
            self.sink(batch)


def lines_of(data, end: int | None = None) -> tuple:
    """The lines of `data[:end]` (all of it by default), each ended by a line feed, as an Arrow binary array without their line feeds
    (large_binary past 2 GiB), and where each line's feed is (numpy): C loops over the bytes, no work per line.
    Bytes past `end` are in none of them."""
    import numpy

    ends = numpy.flatnonzero(numpy.frombuffer(data, numpy.uint8, count=len(data) if end is None else end) == 0x0A)
    count = len(ends)
    offsets = numpy.zeros(count + 1, numpy.int64)
    offsets[1:] = ends - numpy.arange(count)  # line i ends where its LF was, less the i LFs before it
    large = offsets[-1] >= 2**31  # a JSONL chunk is 8 MiB (plus a line), but curate.max_line_bytes is the user's
    return pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), count,
                                 [None, pa.py_buffer(offsets if large else offsets.astype(numpy.int32)),
                                  pa.py_buffer(data.replace(b"\n", b""))]), ends


def repaired(text: str) -> str:
    """The text with lone surrogates (bytes that were not UTF-8) made U+FFFD."""
    return SURROGATES.sub("\ufffd", text)


def too_long(start, size: int, limit: int) -> tuple[str, str, str]:
    """(raw, reason, detail) of a line or record of `size` bytes over `limit`; `start` its first bytes or text."""
    if isinstance(start, bytes):
        start = start[:TOO_LONG_KEPT_CHARS * 4].removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    kept = repaired(start[:TOO_LONG_KEPT_CHARS])
    return kept + " …", "too_long", f"{size} bytes, over curate.max_line_bytes {limit} (not read; the first " \
                                   f"{len(kept)} characters kept)"


def skip_line(handle, size: int) -> tuple[int, bytes]:
    """Read past the rest of a line (`size` bytes of it already read) without keeping it: (its size in
    bytes, without the line end; the bytes read after its end)."""
    while True:
        piece = handle.read(SKIP_BYTES)
        end = piece.find(b"\n")
        if end >= 0:
            return size + end - (end > 0 and piece[end - 1:end] == b"\r"), piece[end + 1:]
        if not piece:
            return size, b""
        size += len(piece)


def dumped(value, bad_bytes: bool, text: str | None = None) -> tuple[str, str | None, str | None]:
    """A parsed value as JSON text (`text`, when the caller wrote it as `json.dumps` would), with invalid bytes
    (lone surrogates) replaced and reported."""
    text = json.dumps(value, ensure_ascii=False) if text is None else text
    if not SURROGATES.search(text):
        return text, None, None
    if bad_bytes:
        return repaired(text), "invalid_utf8", "invalid UTF-8 bytes in the record"
    # A \ud800 escape in the source: keep it escaped, so the JSON check rejects it as SQL would.
    return json.dumps(value, ensure_ascii=True), None, None
