"""Ingest: every source format and record style → one row per record, ready for curation's SQL checks.

`ingest_source` writes one source's records to a Parquet file (the per-source cache curation reads,
so that changing one source re-reads only that one). Reading keeps what a quarantine must be able to
point at: the file, the line (JSONL, CSV: the line
where the record starts; JSON arrays: the element; Parquet and Hugging Face datasets: the row, all
1-based) and the record's own text, bad bytes replaced and reported. Nothing is judged here beyond
what only the reader can know (invalid UTF-8, a CSV row of the wrong width).

Record styles are mapped onto the fields curation checks (sft: instruction/input/output;
preference: prompt/chosen/rejected) by `canonical_function`, which curation calls from SQL only for
records that are valid JSON objects. Conversations become a prompt by `render_turns`:

- the system turns come first, then the dialogue, separated by blank lines;
- a dialogue of one user turn is that turn's text; a longer one writes each turn as
  `User: ...` / `Assistant: ...`, so earlier answers stay in the prompt;
- the final assistant turn is the response (a conversation not ending with one is quarantined).

Pairwise judgments: `g1_winner` judged (answer_1, answer_2), `g2_winner` the same pair shown in
swapped order. By default (`winners: answers`, FastChat's judgment files) each winner names the
answer it prefers whatever order its judge saw: `model_1` (or answer_1, 1, A) or `model_2` (answer_2,
2, B), `tie` or `draw`, since FastChat maps g2's verdict back to the model names. With `winners:
positions` each winner names a position in its own judge's order (1 or A the first shown, 2 or B the
second), so g2's 1 means answer_2. Only pairs both judgments agree on are kept.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.atomic import atomic_path
from tunesmith.plan import SHARD_SUFFIXES, source_files
from tunesmith.recipe import load_schema


class IngestError(ValueError):
    """A source that cannot be read at all; the message names the source id, the path and the problem."""


# One row per record as read: the per-source cache that curation reads (see ingest_source).
INGESTED_SCHEMA = pa.schema([("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
                             ("raw", pa.string()), ("read_reason", pa.string()), ("read_detail", pa.string())])
SOURCE_METADATA = b"tunesmith.source"

# What the SQL receives back for a record of a mapped style: its canonical JSON, or why it has none;
# labels name, per canonical field, where the value came from (for quarantine details).
CANONICAL_TYPE = pa.struct([("record", pa.string()), ("labels", pa.string()),
                            ("reason", pa.string()), ("detail", pa.string())])

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
TURN_LABELS = {"user": "User", "assistant": "Assistant"}
FIRST, SECOND, TIE = 1, 2, "tie"
WINNERS = {"1": FIRST, "a": FIRST, "2": SECOND, "b": SECOND, "tie": TIE, "draw": TIE}
# FastChat's names for the answers; under `winners: positions` they would be ambiguous, so only there refused.
ANSWER_NAMES = {"model_1": FIRST, "answer_1": FIRST, "model_2": SECOND, "answer_2": SECOND}
SURROGATES = re.compile("[\ud800-\udfff]")


class Rejected(Exception):
    """A record that cannot be mapped onto the canonical fields: (reason, detail)."""

    def __init__(self, reason: str, detail: str | None):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


_ABSENT = object()


def _type_name(value) -> str:
    """The name DuckDB's json_type gives the value, lower-cased, so details read alike."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "ubigint" if value >= 0 else "bigint"
    return {str: "varchar", float: "double", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _turns(value, label: str) -> list[tuple[str, str]]:
    """(role, content) of a message list; {role, content} or ShareGPT's {from, value} turns."""
    if value is _ABSENT or value is None:
        raise Rejected("missing_field", label if value is _ABSENT else f"{label}=null")
    if not isinstance(value, list):
        raise Rejected("wrong_type", f"{label}: {_type_name(value)}")
    turns, wrong, missing = [], [], []
    for index, turn in enumerate(value):
        where = f"{label}[{index}]"
        if not isinstance(turn, dict):
            wrong.append(f"{where}: {_type_name(turn)}")
            continue
        keys = ("role", "content") if "role" in turn or "content" in turn else ("from", "value")
        for key in keys:
            if turn.get(key) is None:
                missing.append(f"{where}.{key}")
            elif not isinstance(turn[key], str):
                wrong.append(f"{where}.{key}: {_type_name(turn[key])}")
        turns.append((turn.get(keys[0]), turn.get(keys[1])))
    if missing:
        raise Rejected("missing_field", ", ".join(missing))
    if wrong:
        raise Rejected("wrong_type", ", ".join(wrong))
    unknown = [f"{label}[{index}].role: {role}" for index, (role, _) in enumerate(turns) if role.lower() not in ROLES]
    if unknown:
        raise Rejected("bad_conversation", ", ".join(unknown))
    return [(ROLES[role.lower()], content) for role, content in turns]


def render_turns(turns: list[tuple[str, str]], label: str) -> str:
    """The prompt text of the turns before the answer (see the module docstring)."""
    system = [content for role, content in turns if role == "system" and content]
    dialogue = [(role, content) for role, content in turns if role != "system"]
    if not any(role == "user" for role, _ in dialogue):
        raise Rejected("bad_conversation", f"{label}: no user turn before the answer")
    if len(dialogue) == 1:
        body = dialogue[0][1]
    else:
        body = "\n\n".join(f"{TURN_LABELS[role]}: {content}" for role, content in dialogue)
    return "\n\n".join([*system, body])


def _answer(turns: list[tuple[str, str]], label: str) -> str:
    if not turns or turns[-1][0] != "assistant":
        last = turns[-1][0] if turns else "nothing"
        raise Rejected("bad_conversation", f"{label}: ends with {last}, not an assistant turn")
    return turns[-1][1]


# Each converter: (record, columns: our field → their column) → (canonical record, labels or None).
def _renamed(fields: dict[str, str]):
    """A style that is a renaming of columns onto canonical fields ({canonical: our field name})."""
    def convert(record: dict, columns: dict[str, str]):
        canonical, labels = {}, {}
        for target, ours in fields.items():
            column = columns.get(ours, ours)
            if column in record:
                canonical[target] = record[column]
            if column != target:
                labels[target] = column
        return canonical, labels or None
    return convert


def _messages(record: dict, columns: dict[str, str]):
    column = columns.get("messages", "messages")
    turns = _turns(record.get(column, _ABSENT), column)
    answer = _answer(turns, column)
    last = len(turns) - 1
    return ({"instruction": render_turns(turns[:-1], column), "output": answer},
            {"instruction": f"{column}[:{last}]", "output": f"{column}[{last}].content"})


def _chat_side(value, label: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [("assistant", value)]
    return _turns(value, label)


def _preference(record: dict, columns: dict[str, str]):
    """Plain prompt/chosen/rejected, or chat form: message lists, with the prompt either given or
    implicit (the turns chosen and rejected share before their answers)."""
    names = {ours: columns.get(ours, ours) for ours in ("prompt", "chosen", "rejected")}
    values = {ours: record.get(column, _ABSENT) for ours, column in names.items()}
    labels = {ours: column for ours, column in names.items() if column != ours}
    chat = any(isinstance(values[ours], list) for ours in ("prompt", "chosen", "rejected"))
    if not chat:
        return {ours: value for ours, value in values.items() if value is not _ABSENT}, labels or None
    chosen, rejected = (_chat_side(values[ours], names[ours]) for ours in ("chosen", "rejected"))
    answers = _answer(chosen, names["chosen"]), _answer(rejected, names["rejected"])
    if chosen[:-1] != rejected[:-1]:
        raise Rejected("bad_conversation", f"{names['chosen']} and {names['rejected']} differ before their answers")
    prompt = values["prompt"]
    if isinstance(prompt, str):
        prompt_turns = [("user", prompt)]
    elif prompt is _ABSENT or prompt is None:
        prompt_turns = []
    else:
        prompt_turns = _turns(prompt, names["prompt"])
    prompt_text = render_turns(prompt_turns + chosen[:-1], names["prompt"])
    labels = {"prompt": names["prompt"], "chosen": f"{names['chosen']}[-1].content",
              "rejected": f"{names['rejected']}[-1].content"}
    return {"prompt": prompt_text, "chosen": answers[0], "rejected": answers[1]}, labels


def _winner(value, column: str, names: dict):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{column}: {_type_name(value)}")
    winner = names.get(value.strip().lower())
    if winner is None:
        raise Rejected("judge_invalid", f"{column}: {value!r}")
    return winner


def _pairwise(record: dict, columns: dict[str, str], winners: str = "answers"):
    names = {ours: columns.get(ours, ours) for ours in ("question", "answer_1", "answer_2", "g1_winner", "g2_winner")}
    values = {ours: record.get(column, _ABSENT) for ours, column in names.items()}
    missing = [names[ours] if value is _ABSENT else f"{names[ours]}=null"
               for ours, value in values.items() if value is _ABSENT or value is None]
    if missing:
        raise Rejected("missing_field", ", ".join(missing))
    wrong = [f"{names[ours]}: {_type_name(values[ours])}" for ours in ("question", "answer_1", "answer_2")
             if not isinstance(values[ours], str)]
    if wrong:
        raise Rejected("wrong_type", ", ".join(wrong))
    accepted = WINNERS | ANSWER_NAMES if winners == "answers" else WINNERS
    first = _winner(values["g1_winner"], names["g1_winner"], accepted)
    second = _winner(values["g2_winner"], names["g2_winner"], accepted)
    if winners == "positions":
        second = {FIRST: SECOND, SECOND: FIRST}.get(second, second)  # g2 saw the answers swapped
    said = f"{names['g1_winner']}={values['g1_winner']!r}, {names['g2_winner']}={values['g2_winner']!r}"
    if TIE in (first, second):
        raise Rejected("judge_tie", said)
    if first != second:
        raise Rejected("judge_disagree", said)
    winner, loser = ("answer_1", "answer_2") if first == FIRST else ("answer_2", "answer_1")
    return ({"prompt": values["question"], "chosen": values[winner], "rejected": values[loser]},
            {"prompt": names["question"], "chosen": names[winner], "rejected": names[loser]})


@dataclass(frozen=True)
class Style:
    role: str
    columns: tuple[str, ...]  # our names for the columns a record of this style has
    expected: tuple[str, ...]  # columns that must appear in some record of the source
    convert: object = field(repr=False)


STYLES = {
    "alpaca": Style("sft", ("instruction", "input", "output"), ("instruction", "output"),
                    _renamed({"instruction": "instruction", "input": "input", "output": "output"})),
    "text_output": Style("sft", ("text", "output"), ("text", "output"),
                         _renamed({"instruction": "text", "output": "output"})),
    "messages": Style("sft", ("messages",), ("messages",), _messages),
    "preference": Style("preference", ("prompt", "chosen", "rejected"), ("chosen", "rejected"), _preference),
    "pairwise": Style("preference", ("question", "answer_1", "answer_2", "g1_winner", "g2_winner"),
                      ("question", "answer_1", "answer_2", "g1_winner", "g2_winner"), _pairwise),
}
STYLE_BY_ROLE = {"sft": "alpaca", "preference": "preference"}


@dataclass(frozen=True)
class Source:
    """A recipe source with its defaults filled, its style resolved and its files listed."""
    rank: int
    id: str
    path: str
    format: str
    style: str
    columns: dict
    split: str
    files: tuple[str, ...]
    weight: float = 1
    max_rows: int | None = None
    winners: str = "answers"

    @property
    def where(self) -> str:
        return f"source '{self.id}' ({self.path})"

    def at(self, file: str) -> str:
        """`where`, plus the file when the path names several."""
        return self.where if file == self.path else f"{self.where}, file {file}"

    @property
    def mapped(self) -> bool:
        """Whether records need converting; plain alpaca records are already canonical."""
        return self.style != "alpaca" or any(ours != theirs for ours, theirs in self.columns.items())

    def expected_columns(self) -> list[tuple[str, str]]:
        """(our name, their column) of every column some record must have: the style's own, and
        every column the recipe names explicitly."""
        ours = dict.fromkeys(STYLES[self.style].expected) | dict.fromkeys(self.columns)
        return [(name, self.columns.get(name, name)) for name in ours]


def source_with_defaults(source: dict) -> dict:
    """The source with the schema's defaults filled, so that direct calls behave like recipes."""
    properties = load_schema()["properties"]["sources"]["items"]["properties"]
    return {name: source.get(name, prop["default"]) for name, prop in properties.items()} | source


def resolve_sources(sources: list[dict], role: str, list_files: bool = True) -> list[Source]:
    """Check every source of `role` before anything is read; raise IngestError naming the first problem.
    Without `list_files` the files are not looked for (curation of ingested files needs none)."""
    chosen = [source for source in map(source_with_defaults, sources) if source["role"] == role]
    if not chosen:
        raise IngestError(f"no source has role '{role}'")
    ids = [source["id"] for source in chosen]
    for source in chosen:
        if ids.count(source["id"]) > 1:
            raise IngestError(f"source '{source['id']}' ({source['path']}): id is used twice")
    return [_resolve(source, rank, role, list_files) for rank, source in enumerate(chosen)]


def _resolve(source: dict, rank: int, role: str, list_files: bool = True) -> Source:
    """One source entry (defaults filled) checked against its role, with its files listed."""
    where = f"source '{source['id']}' ({source['path']})"
    if source["format"] not in SHARD_SUFFIXES and source["format"] != "hf":
        raise IngestError(f"{where}: format '{source['format']}' cannot be curated as {role}")
    style = STYLE_BY_ROLE.get(role) if source["style"] == "auto" else source["style"]
    if style not in STYLES or STYLES[style].role != role:
        fitting = sorted(name for name, entry in STYLES.items() if entry.role == role)
        raise IngestError(f"{where}: style '{source['style']}' does not fit role '{role}' (use one of {fitting})")
    columns = {ours: theirs for ours, theirs in source["columns"].items() if theirs is not None}
    unknown = sorted(set(columns) - set(STYLES[style].columns))
    if unknown:
        raise IngestError(f"{where}: columns {unknown} are not fields of style '{style}' "
                          f"(its fields: {list(STYLES[style].columns)})")
    files = source_files(source["path"], source["format"]) if list_files else []
    if list_files and not files:
        problem = "no file matches" if any(c in source["path"] for c in "*?[") else (
            f"directory has no {'/'.join(SHARD_SUFFIXES[source['format']])} files"
            if Path(source["path"]).is_dir() else "file not found")
        raise IngestError(f"{where}: {problem}")
    return Source(rank, source["id"], source["path"], source["format"], style, columns, source["split"],
                  tuple(files), source["weight"], source["max_rows"], source["winners"])


# ---- readers: each returns columns (file, line, raw, read_reason, read_detail) as lists ----------

class _Columns:
    """Rows as they are read; every BATCH_ROWS of them go to `sink` as one Arrow batch, so a source of
    millions of lines never sits in memory as Python objects."""
    BATCH_ROWS = 65_536

    def __init__(self, source_id: str, sink):
        self.source_id, self.sink, self.rows = source_id, sink, 0
        self.file, self.line, self.raw, self.reason, self.detail = [], [], [], [], []

    def add(self, file, line, raw, reason=None, detail=None):
        self.file.append(file)
        self.line.append(line)
        self.raw.append(raw)
        self.reason.append(reason)
        self.detail.append(detail)
        if len(self.line) >= self.BATCH_ROWS:
            self.flush()

    def flush(self):
        n = len(self.line)
        self.rows += n
        self.sink(pa.record_batch([pa.array([self.source_id] * n, pa.string()), pa.array(self.file, pa.string()),
                                   pa.array(self.line, pa.int64()), pa.array(self.raw, pa.string()),
                                   pa.array(self.reason, pa.string()), pa.array(self.detail, pa.string())],
                                  schema=INGESTED_SCHEMA))
        self.file, self.line, self.raw, self.reason, self.detail = [], [], [], [], []


def _decoded(data: bytes) -> tuple[str, bool]:
    """Text of a whole file (BOM dropped) and whether it had invalid UTF-8, kept as lone surrogates."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), True


def _repaired(text: str) -> str:
    return SURROGATES.sub("\ufffd", text)


def _read_jsonl(file: str, out: _Columns) -> None:
    """One row per line, split on LF only; CRLF and a line-1 BOM dropped; bad bytes found per line.
    Streamed line by line: a file of millions of lines is never held whole."""
    with open(file, "rb") as handle:
        for number, piece in enumerate(handle, start=1):
            # A trailing newline ends the last line, it does not start another.
            piece = piece.removesuffix(b"\n").removesuffix(b"\r")
            if number == 1:
                piece = piece.removeprefix(b"\xef\xbb\xbf")
            try:
                out.add(file, number, piece.decode("utf-8"))
            except UnicodeDecodeError as failure:
                out.add(file, number, piece.decode("utf-8", errors="replace"), "invalid_utf8",
                        f"{failure.reason} at byte {failure.start}")


def _dumped(value, bad_bytes: bool) -> tuple[str, str | None, str | None]:
    """A parsed value as JSON text, with invalid bytes (lone surrogates) replaced and reported."""
    text = json.dumps(value, ensure_ascii=False)
    if not SURROGATES.search(text):
        return text, None, None
    if bad_bytes:
        return _repaired(text), "invalid_utf8", "invalid UTF-8 bytes in the record"
    # A \ud800 escape in the source: keep it escaped, so the JSON check rejects it as SQL would.
    return json.dumps(value, ensure_ascii=True), None, None


def _read_json(file: str, out: _Columns) -> None:
    """A JSON array: one row per element (`line` = its 1-based index). Any other document, or text
    that does not parse, is one row, so it is quarantined (or kept, if it is a single record)."""
    text, bad_bytes = _decoded(Path(file).read_bytes())
    if not text.strip():
        return
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    else:
        if isinstance(document, list):
            for index, element in enumerate(document, start=1):
                out.add(file, index, *_dumped(element, bad_bytes))
            return
    if bad_bytes:
        out.add(file, 1, _repaired(text), "invalid_utf8", "invalid UTF-8 bytes in the document")
    else:
        out.add(file, 1, text)


def _read_csv(file: str, out: _Columns, source: Source) -> None:
    """One row per record, `line` = the line where it starts (header is line 1); each record becomes
    a JSON object of header → text, so the field checks apply; a row of the wrong width is kept apart."""
    text, bad_bytes = _decoded(Path(file).read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if file.lower().endswith(".tsv") else ",")
    limit = csv.field_size_limit(sys.maxsize)  # the default 128 kB limit would crash on a long answer
    try:
        header = next(reader, None)
        if header is None:
            return
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise IngestError(f"{source.at(file)}: the header repeats the columns {duplicated}")
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:
                out.add(file, line, "")
                continue
            fits = len(fields) == len(header)
            raw, reason, detail = _dumped(dict(zip(header, fields)) if fits else fields, bad_bytes)
            if reason is None and not fits:
                reason, detail = "wrong_column_count", f"{len(fields)} fields, the header has {len(header)}"
            out.add(file, line, raw, reason, detail)
    finally:
        csv.field_size_limit(limit)


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


def _read_parquet(source: Source, out: _Columns) -> None:
    """`line` = the row's 1-based number in its file. Files are read in one DuckDB scan per distinct
    schema, so shards whose column types differ are each read as they are (a union would cast one
    shard's numbers to the other's text, hiding a wrong type); each record holds its shard's columns."""
    extra = ("filename", "file_row_number")
    groups: dict[tuple, list[str]] = {}
    for file in source.files:
        try:
            schema = pq.read_schema(file)
        except (OSError, pa.ArrowException) as error:
            raise IngestError(f"{source.at(file)}: cannot read: {error}") from None
        groups.setdefault(tuple((field.name, str(field.type)) for field in schema), []).append(file)
    rows = []
    with duckdb.connect(config={"threads": 1}) as con:
        for files in groups.values():
            scan = "read_parquet($files, filename=true, file_row_number=true)"
            columns = [(name, kind) for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM {scan}",
                                                                     {"files": files}).fetchall()
                       if name not in extra]
            rows += con.execute(f"SELECT filename, file_row_number + 1, {_json_object_sql(columns)}, "
                                f"{_invalid_bytes_sql(columns)} FROM {scan}", {"files": files}).fetchall()
    for file, line, raw, invalid in sorted(rows, key=lambda row: (row[0], row[1])):
        if invalid:
            out.add(file, line, raw, "invalid_utf8", f"column(s) {invalid}: invalid UTF-8 bytes")
        else:
            out.add(file, line, raw)


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


def _read_hf(source: Source, out: _Columns) -> None:
    try:
        dataset = _load_hf(source)
    except IngestError:
        raise
    except Exception as error:  # datasets raises many kinds; all mean the source cannot be read
        raise IngestError(f"{source.where}: cannot load the dataset: {type(error).__name__}: {error}") from None
    table = dataset.with_format("arrow")[:]  # honours any index mapping (select, shuffle)
    with duckdb.connect(config={"threads": 1}) as con:
        con.register("dataset", table)
        columns = [(name, kind) for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM dataset").fetchall()]
        rows = con.execute(f"SELECT {_json_object_sql(columns)} FROM dataset").fetchall()
    for number, (raw,) in enumerate(rows, start=1):
        out.add(source.path, number, raw)


def _read_into(source: Source, out: _Columns) -> None:
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
                    _read_csv(file, out, source)
        out.flush()
    except OSError as error:
        raise IngestError(f"{source.at(str(error.filename))}: cannot read: {error.strerror or error}") from None
    except duckdb.Error as error:
        raise IngestError(f"{source.where}: cannot read: {error}") from None


def resolve_source(source: dict) -> Source:
    """One recipe source entry, checked against its own role (sft or preference) and its files listed."""
    source = source_with_defaults(source)
    if source["role"] not in STYLE_BY_ROLE:
        raise IngestError(f"source '{source['id']}' ({source['path']}): role '{source['role']}' is not curated")
    return _resolve(source, 0, source["role"])


def ingest_source(source: dict, out_path: str) -> dict:
    """Read one source into a Parquet file of raw records (INGESTED_SCHEMA), atomically.

    This is the per-source cache curation reads: a recipe change to one source re-reads only that
    source. The file's metadata (SOURCE_METADATA) records what was read: id, path, format, split and
    the files, so curation can count files and refuse a file ingested from another path. Returns that
    record with the row count."""
    resolved = resolve_source(source)
    described = {"id": resolved.id, "path": resolved.path, "format": resolved.format, "split": resolved.split,
                 "files": list(resolved.files)}
    schema = INGESTED_SCHEMA.with_metadata({SOURCE_METADATA: json.dumps(described, ensure_ascii=False)})
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        out = _Columns(resolved.id, lambda batch: writer.write_batch(batch.replace_schema_metadata(schema.metadata)))
        _read_into(resolved, out)
    return {**described, "rows": out.rows}


def ingested_source(path: str) -> dict:
    """The SOURCE_METADATA record of an ingested Parquet file."""
    metadata = pq.read_schema(path).metadata or {}
    if SOURCE_METADATA not in metadata:
        raise IngestError(f"{path}: not a file written by tunesmith.ingest.ingest_source")
    return json.loads(metadata[SOURCE_METADATA])


def _json_text(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if not SURROGATES.search(text) else json.dumps(value)


def canonical_function(sources: list[Source]):
    """An Arrow UDF (source_rank, record JSON text) → CANONICAL_TYPE for the sources' styles."""
    by_rank = {source.rank: source for source in sources}

    def apply(ranks, raws):
        results = []
        for rank, raw in zip(ranks.to_pylist(), raws.to_pylist()):
            source = by_rank[rank]
            try:
                try:
                    value = json.loads(raw)
                except RecursionError:  # valid JSON (SQL checked it) that Python's parser cannot descend
                    raise Rejected("invalid_json", f"nested more than {sys.getrecursionlimit()} levels deep") from None
                convert = STYLES[source.style].convert
                record, labels = (convert(value, source.columns, source.winners) if source.style == "pairwise"
                                  else convert(value, source.columns))
                results.append({"record": _json_text(record), "labels": _json_text(labels) if labels else None,
                                "reason": None, "detail": None})
            except Rejected as rejected:
                results.append({"record": None, "labels": None, "reason": rejected.reason, "detail": rejected.detail})
        return pa.array(results, type=CANONICAL_TYPE)

    return apply
