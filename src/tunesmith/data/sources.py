"""What a recipe's sources name, checked before any job reads them.

`source_files` lists the files a source path names (plan and ingest both use it: the workflow's file
dependencies and the reader see the same list). `resolve_sources` turns recipe entries into checked
`Source`s. `check_inputs` and `check_settings` are the early checks the recipe validator runs, so
that `snakemake -n` and `tunesmith validate` report them before any job: each problem starts with the
recipe key path and names the file; `check_inputs` reads at most one record per source.

This module stays light (no DuckDB or Arrow at import): the workflow imports it to plan the DAG.

Over 350 lines because the source checks refuse special files (/proc, /sys, devices, FIFOs) and files
whose content does not fit their format before any job reads them, beside the plan's file listing.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.schema import with_defaults
from tunesmith.data.styles import STYLE_BY_ROLE, STYLES

SHARD_SUFFIXES = {"jsonl": (".jsonl", ".ndjson"), "json": (".json",), "csv": (".csv", ".tsv"),
                  "parquet": (".parquet",)}
FIRST_RECORD_BYTES = 1 << 20  # enough for the first record of any sane file; a larger one is not checked early


class IngestError(ValueError):
    """A source that cannot be read at all; the message names the source id, the path and the problem."""


def source_files(path: str, format: str) -> list[str]:
    """The files a path names: itself, a directory's shards of that format (recursively, hidden
    files skipped), or a glob's matches (`**` recursive). Sorted, so line order is reproducible."""
    if format == "hf":
        return [path]
    if any(character in path for character in "*?["):
        return sorted(match for match in glob.glob(path, recursive=True) if Path(match).is_file())
    folder = Path(path)
    if folder.is_dir():
        suffixes = SHARD_SUFFIXES.get(format, ())
        return sorted(str(file) for file in folder.rglob("*")
                      if file.is_file() and file.suffix.lower() in suffixes
                      and not any(part.startswith(".") for part in file.relative_to(folder).parts))
    return [path] if folder.is_file() else []


PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")
FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device"}


def special_file_problem(path: str) -> str | None:
    """Why a path is no data a recipe may name (None when it may): anything under /proc, /sys or /dev
    (/proc/self/environ is the process's environment, API keys included), or a file that is not a
    regular file or folder (a FIFO blocks its reader, a device never ends). For a glob, the folder it
    searches. Names the path, and what it resolves to when a link led there."""
    searched = path
    if glob.has_magic(path):
        first = min(index for index, character in enumerate(path) if character in "*?[")
        searched = path[:first].rpartition("/")[0] or ("/" if path.startswith("/") else ".")
    try:
        real = os.path.realpath(searched)
        mode = os.stat(real).st_mode if os.path.lexists(real) else None
    except (OSError, ValueError):
        return None  # a path the file system cannot take is the validator's business, with its key
    via = f" (it resolves to {real})" if real != os.path.abspath(searched) else ""
    for system in PSEUDO_FILE_SYSTEMS:
        if (real == system or real.startswith(system + "/")) and not real.startswith("/dev/shm/"):
            return (f"{path!r} is under {system}{via}: not data (a recipe must never read the process's environment, "
                    "kernel state or a device); name regular files, a folder or a glob of them")
    if mode is not None and stat.S_IFMT(mode) in FILE_KINDS:
        return f"{path!r} is {FILE_KINDS[stat.S_IFMT(mode)]}{via}, not a regular file"
    return None


def special_files_problem(files: list[str]) -> str | None:
    """The first of a source's files that is no regular data file (a link in a data folder to
    /proc/self/environ, a FIFO matched by a glob), with the reason."""
    return next((reason for file in files if (reason := special_file_problem(file))), None)


def _missing_files(path: str, format: str) -> str:
    """Why a path names no file."""
    if any(character in path for character in "*?["):
        return "no file matches"
    if Path(path).is_dir():
        return f"directory has no {'/'.join(SHARD_SUFFIXES.get(format, ('.' + format,)))} files"
    return "file not found"


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

    def expected_columns(self) -> list[tuple[str, str]]:
        """(our name, their column) of every column some record must have: the style's own, and
        every column the recipe names explicitly."""
        ours = dict.fromkeys(STYLES[self.style].expected) | dict.fromkeys(self.columns)
        return [(name, self.columns.get(name, name)) for name in ours]


def source_with_defaults(source: dict) -> dict:
    """The source with the schema's defaults filled, so that direct calls behave like recipes."""
    return with_defaults("sources/items", source)


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
    mapping = source["columns"]
    columns = {ours: mapping[ours] for ours in mapping if mapping[ours] is not None}
    unknown = sorted(set(columns) - set(STYLES[style].columns))
    if unknown:
        raise IngestError(f"{where}: columns {unknown} are not fields of style '{style}' "
                          f"(its fields: {list(STYLES[style].columns)})")
    if list_files and (reason := special_file_problem(source["path"])):
        raise IngestError(f"{where}: {reason}")
    files = source_files(source["path"], source["format"]) if list_files else []
    if list_files and not files:
        raise IngestError(f"{where}: {_missing_files(source['path'], source['format'])}")
    if list_files and (reason := special_files_problem(files)):
        raise IngestError(f"{where}: {reason}")
    return Source(rank, source["id"], source["path"], source["format"], style, columns, source["split"],
                  tuple(files), source["weight"], source["max_rows"], source["winners"])


def resolve_source(source: dict) -> Source:
    """One recipe source entry, checked against its own role (sft or preference) and its files listed."""
    source = source_with_defaults(source)
    if source["role"] not in STYLE_BY_ROLE:
        raise IngestError(f"source '{source['id']}' ({source['path']}): role '{source['role']}' is not curated")
    return _resolve(source, 0, source["role"])


# ---- early checks: each problem starts with its recipe key path ------------------------------------

def check_inputs(recipe: dict) -> list[str]:
    """Problems with what the sources of a validated recipe name, found before any job: a path that
    names no file, a style that does not fit the role, a mapped field the style lacks, and a column
    the style reads (or the recipe maps) that the first record of the source's first file lacks.
    Reads at most one record per source; Hugging Face sources are left to their ingest job."""
    problems = []
    for index, entry in enumerate(recipe.get("sources", [])):
        at, source = f"sources[{index}]", source_with_defaults(entry)
        if reason := special_file_problem(source["path"]):
            problems.append(f"{at}.path: {reason}")
            continue
        if source["format"] == "hf":
            continue
        files = source_files(source["path"], source["format"])
        if not files:
            problems.append(f"{at}.path: {source['path']!r}: {_missing_files(source['path'], source['format'])}")
            continue
        if reason := special_files_problem(files):
            problems.append(f"{at}.path: {reason}")
            continue
        if reason := format_problem(files[0], source["format"]):
            problems.append(f"{at}.format: {reason}")
            continue
        role = source["role"]
        if role not in STYLE_BY_ROLE:
            continue  # pretrain text: one document per line, no columns
        style = STYLE_BY_ROLE[role] if source["style"] == "auto" else source["style"]
        if STYLES[style].role != role:
            fitting = sorted(name for name, entry in STYLES.items() if entry.role == role)
            problems.append(f"{at}.style: '{style}' does not fit role '{role}' (use one of {fitting})")
            continue
        columns = {ours: theirs for ours, theirs in source["columns"].items() if theirs is not None}
        for ours in sorted(set(columns) - set(STYLES[style].columns)):
            problems.append(f"{at}.columns.{ours}: not a field of style '{style}' "
                            f"(its fields: {', '.join(STYLES[style].columns)})")
        names = _first_record_columns(files[0], source["format"])
        if names is None:
            continue  # unreadable or not an object: curation quarantines it with its reason
        for ours in STYLES[style].expected:
            theirs = columns.get(ours, ours)
            if theirs not in names:
                key = f"{at}.columns.{ours}" if ours in columns else f"{at}.style"
                hint = "" if ours in columns else f" (style '{style}' reads it; map another column with `columns`)"
                problems.append(f"{key}: the first record of {files[0]} has no column {theirs!r}{hint}; "
                                f"it has {', '.join(map(repr, names)) or 'none'}")
    return problems


MAGIC = {b"PAR1": "a Parquet file (format: parquet)", b"\x1f\x8b": "gzip-compressed",
         b"PK\x03\x04": "a zip archive", b"(\xb5/\xfd": "zstd-compressed", b"BZh": "bzip2-compressed",
         b"\xfd7zXZ\x00": "xz-compressed", b"ARROW1": "an Arrow IPC file"}
SNIFF_LINES = 20


def format_problem(file: str, format: str) -> str | None:
    """Why a file's content is not of the recipe's `format`, from its first bytes (None when it may
    be): a Parquet file or a compressed archive named as text; a file named Parquet that is not; a
    JSON Lines source none of whose first lines is a JSON object (CSV, say); a JSON source holding
    one object per line (JSON Lines); a CSV source holding JSON. A bad record further in is
    quarantined by curation, not refused here."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(FIRST_RECORD_BYTES)
    except OSError:
        return None  # the ingest job reports an unreadable file with the reader's message
    found = next((what for magic, what in MAGIC.items() if head.startswith(magic)), None)
    if format == "parquet":
        return None if head.startswith(b"PAR1") or not head else (
            f"parquet, but {file} is not a Parquet file (it does not start with PAR1; "
            f"it looks like {found or _text_kind(head)})")
    if found:
        return f"{format}, but {file} is {found}"
    text = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.split("\n") if line.strip()][:SNIFF_LINES]
    if not lines or format == "text":
        return None
    if format == "jsonl" and not any(line.startswith("{") for line in lines):
        return (f"jsonl, but none of the first {len(lines)} lines of {file} is a JSON object; it looks like "
                f"{_text_kind(head)}")
    if format == "json":
        if not lines[0].startswith(("[", "{")):
            return f"json, but {file} is not a JSON document; it looks like {_text_kind(head)}"
        if len(lines) > 1 and lines[1].startswith("{") and _is_json_object(lines[0]):
            return f"json, but {file} holds one JSON object per line; it looks like JSON Lines (format: jsonl)"
    if format == "csv" and lines[0].startswith(("{", "[")):
        return f"csv, but {file} starts with JSON; it looks like {_text_kind(head)}"
    return None


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _text_kind(head: bytes) -> str:
    """What the start of a file looks like, in words, for a format_problem message."""
    text = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace").lstrip()
    first = text.split("\n", 1)[0]
    if head.startswith(b"PAR1"):
        return "Parquet (format: parquet)"
    if text.startswith("["):
        return "a JSON array (format: json)"
    if text.startswith("{"):
        return "JSON Lines (format: jsonl)" if _is_json_object(first.strip()) else "JSON (format: json)"
    if "," in first or "\t" in first:
        return f"CSV (format: csv; its first line is {_excerpt_line(first)})"
    return f"plain text (its first line is {_excerpt_line(first)})"


def _excerpt_line(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:59] + "…")


def _first_record_columns(file: str, format: str) -> list[str] | None:
    """The column names of a file's first record (a Parquet file's schema), or None when the start of
    the file holds no readable object."""
    if format == "parquet":
        import pyarrow.parquet as pq  # only Parquet sources need it

        try:
            return pq.read_schema(file).names
        except Exception:  # unreadable: the ingest job reports it with the reader's message
            return None
    try:
        with open(file, "rb") as handle:
            text = handle.read(FIRST_RECORD_BYTES).removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    except OSError:
        return None
    if format == "csv":
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if file.lower().endswith(".tsv")
                                 else ","), None)
        return header
    decoder = json.JSONDecoder()
    try:
        if format == "jsonl":
            first = next((line for line in text.split("\n") if line.strip()), None)
            record = json.loads(first) if first is not None else None
        else:
            start = len(text) - len(text.lstrip())
            if text[start:start + 1] == "[":
                start = len(text) - len(text[start + 1:].lstrip())
            record, _ = decoder.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    return list(record) if isinstance(record, dict) else None


def check_settings(curate: dict, at: str = "curate") -> list[str]:
    """Problems of curate settings (defaults filled) that no schema can state, each starting with its
    key path: block patterns that RE2 cannot compile (compiled by DuckDB, as curation does), and
    MinHash bands that do not divide the permutations. Reads no file."""
    problems = []
    if curate.get("block_patterns"):
        import duckdb  # only recipes with block patterns pay for the import

        with duckdb.connect() as con:
            for index, pattern in enumerate(curate["block_patterns"]):
                try:
                    con.execute("SELECT regexp_matches('', $pattern)", {"pattern": pattern})
                except duckdb.Error as error:
                    reason = str(error).removeprefix("Invalid Input Error: ")
                    problems.append(f"{at}.block_patterns[{index}]: {pattern!r} is not an RE2 regular expression "
                                    f"({reason})")
    near = curate.get("near_dedup", {})
    if "permutations" in near and "bands" in near and near["permutations"] % near["bands"]:
        problems.append(f"{at}.near_dedup.permutations: {near['permutations']} is not a multiple of "
                        f"{at}.near_dedup.bands ({near['bands']})")
    return problems
