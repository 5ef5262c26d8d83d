"""The CSV reader of ingest (tunesmith.data.ingest): one record per CSV record, `line` the line where it starts
(the header is line 1), each record the JSON object of header -> field, so that curation's field checks apply;
a row of the wrong width is kept apart (`wrong_column_count`), broken quoting quarantined (`malformed_csv`)
and reading resumes after it, a line over curate.max_line_bytes skipped unparsed (`too_long`).

Quoting is the csv module's, strict; a record of one line without a quote, and blocks of whole lines, are
read without it where a record starts, with the same result (tests/test_ingest.py compares every record
with `csv.reader`'s): a Python call per record was most of the time of reading a CSV file.
"""

from __future__ import annotations

import collections
import csv
import re
import sys
from json.encoder import encode_basestring

import pyarrow as pa

from tunesmith.data.records import TOO_LONG_KEPT_CHARS, Columns, dumped, lines_of, repaired, skip_line, too_long
from tunesmith.data.sources import IngestError, Source

CSV_BLOCK_BYTES = 1 << 20  # CSV files are read in blocks of whole lines, split and decoded at once
LINE_ENDS = re.compile("(?<=\n)|(?<=\r)(?!\n)")  # after LF, CRLF or a lone CR (str.splitlines splits on more)
LINE_ENDS_BYTES = re.compile(LINE_ENDS.pattern.encode())
OTHER_LINE_ENDS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _after_first_line(data: bytes, end: int) -> int:
    """Where the first line of `data[:end]` (which holds a line end) ends: after its LF, CRLF or lone CR."""
    feed, cr = data.find(b"\n", 0, end), data.find(b"\r", 0, end)
    if cr != -1 and (feed == -1 or cr < feed):
        return cr + 2 if data[cr + 1:cr + 2] == b"\n" else cr + 1
    return feed + 1


class _CsvLines:
    """The physical lines of a CSV file for `csv.reader`, one at a time (read in blocks, never the whole
    file), numbered as a person counts them (LF, CRLF or a lone CR ends a line). The lines of the
    record being read are kept (`taken`), so that a record the reader refuses can be given back
    (`give_back`) and read again from its second line. A line over the limit is not parsed (nor held
    whole): `taken` holds its (number, raw, reason, detail) instead."""

    def __init__(self, handle, limit: int):
        self.handle, self.limit, self.number, self.pending = handle, limit, 0, b""
        self.held = b""  # whole lines of the first block after its first line, split when next asked (see fill)
        self.queue: collections.deque = collections.deque()  # lines given back, or read and not handed out
        self.taken: list[tuple] = []  # (number, text, had invalid UTF-8) of the record's lines (see above)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self.queue:
            self.fill()
            if not self.queue:
                raise StopIteration
        line = self.queue.popleft()
        self.taken.append(line)
        # A line over the limit reaches the parser as an empty line, so that a quoted field around it
        # still ends where it ends; the record that holds it is too_long.
        return "\n" if len(line) == 4 else line[1]

    def give_back(self, lines) -> None:
        self.queue.extendleft(reversed(lines))

    def fill(self, whole=None) -> None:
        """Queue the next block's lines (at least one, unless the file has ended). `whole`, called where a record
        starts: a function that reads the records it can of a block of whole lines, from its start, and says how
        many of its bytes it read (the rest are queued); it may read every block up to the file's end."""
        while not self.queue:
            if self.held:
                data, self.held = self.held, b""
                self._split(data[whole(data) if whole else 0:])
                continue
            chunk = self.handle.read(CSV_BLOCK_BYTES)
            data = self.pending + chunk
            if self.number == 0 and not self.pending:
                data = data.removeprefix(b"\xef\xbb\xbf")
            if not chunk:
                self.pending = b""
                if data:
                    self._split(data[whole(data) if whole else 0:])
                return
            end = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1  # a last CR may start a CRLF
            self.pending = data[end:]
            if end and self.number == 0 and len(self.pending) <= self.limit + 1:
                # the header's block: its first line for the header, the rest held for `whole` where records start
                start = _after_first_line(data, end)
                self.held, end = data[start:end], start
            if end:
                self._split(data[whole(data[:end]) if whole else 0:end])
            if len(self.pending) > self.limit + 1:  # a line over the limit: skipped unparsed, never held whole
                head = self.pending[:TOO_LONG_KEPT_CHARS * 4]
                size, self.pending = skip_line(self.handle, len(self.pending))
                self.number += 1
                self.queue.append((self.number, *too_long(head, size, self.limit)))

    def _split(self, data: bytes) -> None:
        if not data:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            lines = []
            for piece in LINE_ENDS_BYTES.split(data):
                try:
                    lines.append((piece.decode("utf-8"), False))
                except UnicodeDecodeError:
                    lines.append((piece.decode("utf-8", errors="surrogateescape"), True))
        else:
            # str.splitlines is fast but also splits on VT, FF, FS, GS, RS, NEL, U+2028 and U+2029
            pieces = LINE_ENDS.split(text) if OTHER_LINE_ENDS.search(text) else text.splitlines(keepends=True)
            lines = [(piece, False) for piece in pieces]
        quick = self.limit // 4  # a line of fewer characters is within the limit, whatever they are
        for line, bad_bytes in lines:
            if not line:
                continue
            self.number += 1
            if len(line) > quick:
                size = len(line.encode("utf-8", errors="surrogateescape"))
                size -= len(line) - len(line.rstrip("\r\n"))  # its end: LF, CRLF or CR, one of them
                if size > self.limit:
                    self.queue.append((self.number, *too_long(line, size, self.limit)))
                    continue
            self.queue.append((self.number, line, bad_bytes))


def read_csv(file: str, out: Columns, source: Source) -> None:
    """One row per record, `line` = the line where it starts (header is line 1); each record becomes
    a JSON object of header → text, so the field checks apply; a row of the wrong width is kept apart.

    Quoting is read strictly: a record the csv module refuses (a quote opened and not closed where a
    field may end: text after it, or the end of the file) is `malformed_csv`. When that record ran
    over several lines and the quote that ended its field stands where a field starts (it was meant
    to open one), the first line's quote was never closed: only that line is quarantined and reading
    resumes at the next, so an unclosed quote costs one record, not the records it would swallow.
    Otherwise (a closing quote with text after it) the record's lines are quarantined together."""
    limit = csv.field_size_limit(sys.maxsize)  # the default 128 kB limit would crash on a long answer
    try:
        with open(file, "rb") as handle:
            _read_csv_records(file, out, source, _CsvLines(handle, out.max_line_bytes))
    finally:
        csv.field_size_limit(limit)


def _opens_a_field(line: str, delimiter: str) -> bool:
    """Whether the quote that ended a quoted field on `line` (its first quote not doubled) stands where
    a field starts (at the line's start or after a delimiter): then it was meant to open a field, and
    the quote that opened the record's field lines before was never closed. True when the line has
    no such quote (the record ran into the end of the file)."""
    index = line.find('"')
    while index >= 0 and line[index + 1:index + 2] == '"':
        index = line.find('"', index + 2)
    return index <= 0 or line[index - 1] == delimiter


def _read_csv_records(file: str, out: Columns, source: Source, lines: _CsvLines) -> None:
    delimiter = "\t" if file.lower().endswith(".tsv") else ","
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise IngestError(f"{source.at(file)}: line 1: the header cannot be read: {error}") from None
    if header is None:
        return
    if any(len(line) == 4 for line in lines.taken):
        raise IngestError(f"{source.at(file)}: line 1: the header is longer than curate.max_line_bytes "
                          f"({out.max_line_bytes} bytes)")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise IngestError(f"{source.at(file)}: the header repeats the columns {duplicated}")
    # A record's JSON text as json.dumps writes a dict of header -> field, the keys encoded once and each field by
    # encode_basestring (json.dumps of each record's dict took 0.90 s of reading 300k short rows; this, 0.27).
    names = [encode_basestring(name) for name in header]
    template = "{" + ", ".join(name.replace("%", "%%") + ": %s" for name in names) + "}"
    width = len(header)
    while True:
        _one_line_records(file, out, lines, names, template, delimiter)
        lines.taken = taken = []
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            (number, text, *_), *rest = taken  # a record never starts with an over-long line: that one is blank
            if rest and len(rest[-1]) == 3 and not _opens_a_field(rest[-1][1], delimiter):
                # A quoted field ran over lines and was closed where text follows: one broken record.
                text = "".join(entry[1] for entry in taken)
                out.add(file, number, repaired(text.rstrip("\r\n")), "malformed_csv",
                        f"{error} (line {rest[-1][0]}, in a field opened on line {number})")
                continue
            lines.give_back(rest)
            ends = f"; lines {rest[0][0]}-{rest[-1][0]} are read as records of their own" if rest else ""
            out.add(file, number, repaired(text.rstrip("\r\n")), "malformed_csv", f"{error}{ends}")
            continue
        line = taken[0][0]
        over = next((entry for entry in taken if len(entry) == 4), None)
        if over is not None:
            number, raw, reason, detail = over
            out.add(file, line, raw, reason, detail if number == line else f"line {number}: {detail}")
        else:
            out.add(file, line, *_csv_record(fields, template, width, any(entry[2] for entry in taken)))


def _csv_record(fields: list[str], template: str, width: int, bad_bytes: bool) -> tuple[str, str | None, str | None]:
    """(raw, reason, detail) of a CSV record's fields: the JSON object of header -> field (`template`: the header's
    names as JSON, a %s for each field's JSON string); a row of no field is an empty record, one of another width
    is kept apart. `bad_bytes`: whether its lines held invalid UTF-8 (lone surrogates: CSV has no escapes)."""
    if not fields:
        return "", None, None
    if len(fields) != width:
        raw, reason, detail = dumped(fields, True)
        return raw, reason or "wrong_column_count", detail or f"{len(fields)} fields, the header has {width}"
    record = template % tuple(map(encode_basestring, fields))
    return dumped(None, True, record) if bad_bytes else (record, None, None)


def _one_line_records(file: str, out: Columns, lines: _CsvLines, names: list[str], template: str,
                      delimiter: str) -> None:
    """Read the records ahead that need no csv module, up to a line with a quote (the reader's) or the file's
    end. Called where a record starts: there a line with no quote is a whole record (none of its fields
    can open a quote), its fields what `csv.reader` makes of it: the text between delimiters, the line end
    dropped. Lines queued are read one at a time; where the queue runs dry, the next blocks are read whole
    (_block_records), and only what those leave is queued. 300k short rows: 0.49 s, against 1.29 line by line
    through the reader (bench/README.md)."""
    queue, numbers, raws, width = lines.queue, [], [], len(names)
    while True:
        if not queue:
            out.add_records(file, numbers, raws)
            numbers, raws = [], []
            lines.fill(lambda data: _block_records(file, out, lines, data, names, template, delimiter))
            if not queue:
                break
        entry = queue[0]
        if len(entry) == 3 and '"' in entry[1]:
            break
        queue.popleft()
        if len(entry) == 4:  # an over-long line that opens a record is that record (too_long)
            found = entry[1:]
        else:
            text = entry[1].rstrip("\r\n")
            fields = text.split(delimiter) if text else []
            if len(fields) == width and not entry[2]:  # a record (most lines): added in runs
                numbers.append(entry[0])
                raws.append(template % tuple(map(encode_basestring, fields)))
                continue
            found = _csv_record(fields, template, width, entry[2])
        out.add_records(file, numbers, raws)
        numbers, raws = [], []
        out.add(file, entry[0], *found)
    out.add_records(file, numbers, raws)


def _lines_holding(buffer, ends, where):
    """Whether each line (ending at `ends` in `buffer`) holds a byte where `where` is true."""
    import numpy

    found = numpy.zeros(len(ends), bool)
    found[numpy.searchsorted(ends, numpy.flatnonzero(where))] = True
    return found


def _block_records(file: str, out: Columns, lines: _CsvLines, data: bytes, names: list[str], template: str,
                   delimiter: str) -> int:
    """Read the records of a block of whole lines (`data`, where a record starts) over Arrow arrays; how many of
    its bytes were read. A line with no quote is split at delimiters as `_one_line_records` splits it, its JSON
    text made over whole columns; a record that opens with a quote is read by the csv module, its lines alone
    (up to the first it cannot read within the block: a quote left open, or broken, is the line reader's). Reads
    none of a block with a lone CR, invalid UTF-8 or a line or record over curate.max_line_bytes (the line
    reader says where), nor the header's."""
    import numpy
    import pyarrow.compute as pc

    crs = data.count(b"\r")
    if not lines.number or crs != data.count(b"\r\n") or len(data) >= 2**31:
        return 0
    ended = data.endswith(b"\n")  # else it holds the file's last line, without a line feed
    clean = (data.replace(b"\r\n", b"\n") if crs else data) + (b"" if ended else b"\n")
    texts, ends = lines_of(clean)
    try:
        texts = texts.cast(pa.string())
    except pa.ArrowInvalid:
        return 0
    count = len(ends)
    width, found = len(names), {}  # line -> (raw, reason, detail) of the records made in Python
    inside = numpy.zeros(count, bool)  # a record's second and later lines
    buffer = numpy.frombuffer(clean, numpy.uint8)
    quoted = _lines_holding(buffer, ends, buffer == 0x22)
    written = ends  # where each line ends in `data`: a quoted record is read as written (a field keeps its CRLF)
    if crs:
        written = numpy.flatnonzero(numpy.frombuffer(data, numpy.uint8) == 0x0A)
        written = written if ended else numpy.append(written, len(data))
    # what encode_basestring escapes in a line with no quote or line end, besides a backslash and a tab
    controls = _lines_holding(buffer, ends, (buffer < 0x20) & (buffer != 0x09) & (buffer != 0x0A))
    starts = numpy.concatenate([[0], written[:-1] + 1])
    following = 0  # the first line not read yet
    for index in numpy.flatnonzero(quoted).tolist():
        if index < following:
            continue
        reader = csv.reader((data[starts[line]:written[line] + 1].decode("utf-8") for line in range(index, count)),
                            delimiter=delimiter, strict=True)
        try:
            fields = next(reader)
        except csv.Error:
            count = index
            break
        found[index] = _csv_record(fields, template, width, False)
        inside[index + 1:index + reader.line_num] = True
        following = index + reader.line_num
    texts, inside, quoted, controls = texts.slice(0, count), inside[:count], quoted[:count], controls[:count]
    fields = pc.split_pattern(texts, delimiter)
    regular = pc.and_(pc.equal(pc.list_value_length(fields), width), pc.greater(pc.binary_length(texts), 0))
    regular = regular.to_numpy(zero_copy_only=False) & ~quoted & ~inside & ~controls
    for index in numpy.flatnonzero(~regular & ~quoted & ~inside).tolist():  # empty, another width, a control
        text = texts[index].as_py()
        found[index] = _csv_record(text.split(delimiter) if text else [], template, width, False)
    fields, joined = fields.filter(pa.array(regular)), []
    escapes = [(old, new) for old, new in (("\\", "\\\\"), ("\t", "\\t"))
               if old != delimiter and old.encode() in clean]
    for index, name in enumerate(names):
        column = pc.list_element(fields, index) if len(fields) else pa.array([], pa.string())
        for old, new in escapes:
            column = pc.replace_substring(column, old, new)
        joined += [pa.scalar(("{" if index == 0 else '", ') + name + ': "', pa.string()), column]
    made = (pc.binary_join_element_wise(*joined, pa.scalar('"}', pa.string()), "") if width
            else pa.array([], pa.string()))
    records = numpy.flatnonzero(~inside)  # the lines that start a record, in order
    rest = sorted(found)
    places = numpy.empty(count, numpy.int64)  # each line's place in made, then the Python-made records
    places[regular] = numpy.arange(len(made))
    places[rest] = len(made) + numpy.arange(len(rest))
    raw = pa.concat_arrays([made, pa.array([found[line][0] for line in rest], pa.string())]).take(
        pa.array(places[records]))
    # a record (or a line: a record's text is longer) over the limit: the line reader and `add` say so
    if len(raw) and pc.max(pc.binary_length(raw)).as_py() > out.max_line_bytes:
        return 0
    if len(records):
        starting = records.tolist()
        out.add_batch(file, lines.number + 1 + records, raw,
                      pa.array([found[line][1] if line in found else None for line in starting], pa.string()),
                      pa.array([found[line][2] if line in found else None for line in starting], pa.string()))
    lines.number += count
    return len(data) if count == len(ends) else int(starts[count])  # the bytes of the lines read
