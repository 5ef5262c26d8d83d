"""Curation: raw JSONL corpora → deduplicated, decontaminated Parquet, a quarantine, and a card.

Python only splits the bytes into lines and decodes them, so line numbers and bad bytes are exact.
Every decision after that is DuckDB SQL over one table, so the rules read in one place and a
million rows stay fast. Every input line ends up in exactly one of the two outputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from tunesmith.atomic import atomic_path, write_json
from tunesmith.normalize import match_key, normalize_text
from tunesmith.tasks import read_tasks

# Priority order: a row that fails several checks is quarantined for the first.
REASONS = ("invalid_utf8", "blank_line", "invalid_json", "not_object", "missing_field", "wrong_type",
           "empty_field", "too_long", "chosen_equals_rejected", "contaminated", "duplicate")
EXAMPLES_PER_REASON = 3


class CurationError(ValueError):
    """A source or result that cannot be used; the message names the source id and path."""


@dataclass(frozen=True)
class Shape:
    """What one role's records look like, and how they become a prompt and responses (SQL)."""
    required: tuple[str, ...]
    optional: tuple[str, ...]
    prompt: str
    responses: tuple[str, ...]
    kept_columns: str
    identical: str  # a pair whose answers are the same teaches a preference nothing


SHAPES = {
    "sft": Shape(("instruction", "output"), ("input",),
                 "CASE WHEN coalesce(input, '') = '' THEN instruction ELSE instruction || chr(10) || input END",
                 ("output",), "prompt_text AS prompt, output AS response", "false"),
    "preference": Shape(("prompt", "chosen", "rejected"), (), "prompt", ("chosen", "rejected"),
                        "prompt_text AS prompt, chosen, rejected", "chosen = rejected"),
}

LINES_SCHEMA = pa.schema([("source_rank", pa.int32()), ("source", pa.string()), ("file", pa.string()),
                          ("line", pa.int64()), ("raw", pa.string()), ("utf8_error", pa.string())])

# Line-level reasons. json_type() raises on invalid JSON, so each test is guarded by the one above it
# (DuckDB evaluates a CASE branch only for the rows that reach it). RE2's \s is ASCII only; \p{Z}
# adds the ideographic and no-break spaces of Japanese text.
FRAME_SQL = r"""
CREATE TEMP TABLE framed AS
SELECT *,
  CASE WHEN utf8_error IS NOT NULL THEN 'invalid_utf8'
       WHEN regexp_matches(raw, '^[\s\v\p{Z}]*$') THEN 'blank_line'
       WHEN NOT json_valid(raw) THEN 'invalid_json'
       WHEN json_type(raw) <> 'OBJECT' THEN 'not_object' END AS line_reason,
  CASE WHEN line_reason = 'invalid_utf8' THEN utf8_error
       WHEN line_reason = 'not_object' THEN lower(json_type(raw)) END AS line_detail
FROM lines
"""

# Contamination and duplicates are only judged among rows that passed every other check, so a
# duplicate of a broken row is kept and a duplicate of a contaminated row is reported as contaminated.
CLASSIFY_SQL = """
CREATE TEMP TABLE classified AS
WITH contamination AS (
  SELECT c.source_rank, c.line, min(t.task_id) AS task_id
  FROM checked c JOIN tasks t ON contains(c.prompt_key, t.task_key)
  WHERE c.verdict IS NULL GROUP BY ALL
), ranked AS (
  SELECT c.*, m.task_id,
    row_number() OVER copies AS copy_rank,
    first_value(c.source || ':' || c.line) OVER copies AS first_copy
  FROM checked c LEFT JOIN contamination m USING (source_rank, line)
  WINDOW copies AS (PARTITION BY c.verdict IS NULL AND m.task_id IS NULL, c.dedup_key
                    ORDER BY c.source_rank, c.file, c.line)
)
SELECT *,
  CASE WHEN verdict IS NOT NULL THEN verdict
       WHEN task_id IS NOT NULL THEN {'reason': 'contaminated', 'detail': 'task_id ' || task_id}
       WHEN $dedup AND copy_rank > 1 THEN {'reason': 'duplicate', 'detail': 'kept ' || first_copy}
  END AS outcome
FROM ranked
"""

KEPT_SQL = """SELECT sha256(dedup_key) AS id, source, file, line, {columns} FROM classified
WHERE outcome IS NULL ORDER BY source_rank, file, line"""
QUARANTINE_SQL = """SELECT source, file, line, outcome.reason AS reason, outcome.detail AS detail, raw
FROM classified WHERE outcome IS NOT NULL ORDER BY source_rank, file, line"""
EXAMPLES_SQL = """SELECT outcome.reason, raw FROM classified WHERE outcome IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY outcome.reason ORDER BY source_rank, file, line) <= $n
ORDER BY source_rank, file, line"""
CONTAMINATION_SQL = """SELECT source, line, task_id FROM classified
WHERE outcome.reason = 'contaminated' ORDER BY source_rank, file, line"""


def _listed(parts: list[str]) -> str:
    """SQL for the comma-separated names of the fields whose condition holds ('' when none)."""
    return "concat_ws(', ', " + ", ".join(parts) + ")" if parts else "''"


def _check_sql(shape: Shape) -> str:
    """Field-level reasons as one CASE yielding {reason, detail}; NULL means the row passed."""
    fields = shape.required + shape.optional
    typed = ",\n  ".join(
        f"CASE WHEN line_reason IS NULL THEN json_type(raw, '$.{f}') END AS {f}_type,\n  "
        f"CASE WHEN {f}_type = 'VARCHAR' THEN normalize_text(json_extract_string(raw, '$.{f}')) END AS {f}"
        for f in fields)
    # An explicit null counts as missing: it carries no text, exactly like an absent key.
    missing = _listed([f"CASE WHEN {f}_type IS NULL THEN '{f}' WHEN {f}_type = 'NULL' THEN '{f}=null' END"
                       for f in shape.required])
    wrong = _listed([f"CASE WHEN {f}_type NOT IN ('VARCHAR', 'NULL') THEN '{f}: ' || lower({f}_type) END"
                     for f in fields])
    empty = _listed([f"CASE WHEN {f} = '' THEN '{f}' END" for f in shape.required])
    too_long = _listed(["CASE WHEN length(prompt_text) > $max_prompt THEN 'prompt ' || length(prompt_text) END"]
                       + [f"CASE WHEN length({r}) > $max_response THEN '{r} ' || length({r}) END"
                          for r in shape.responses])
    # Keys lose all whitespace, so a newline between them cannot be confused with content.
    key = ", ".join(["prompt_key"] + [f"match_key({r})" for r in shape.responses])
    return f"""
CREATE TEMP TABLE checked AS
SELECT source_rank, source, file, line, raw,
  {typed},
  {shape.prompt} AS prompt_text,
  CASE WHEN line_reason IS NOT NULL THEN {{'reason': line_reason, 'detail': line_detail}}
       WHEN {missing} <> '' THEN {{'reason': 'missing_field', 'detail': {missing}}}
       WHEN {wrong} <> '' THEN {{'reason': 'wrong_type', 'detail': {wrong}}}
       WHEN {empty} <> '' THEN {{'reason': 'empty_field', 'detail': {empty}}}
       WHEN {too_long} <> '' THEN {{'reason': 'too_long', 'detail': {too_long}}}
       WHEN {shape.identical} THEN {{'reason': 'chosen_equals_rejected', 'detail': NULL}}
  END AS verdict,
  CASE WHEN verdict IS NULL THEN match_key(prompt_text) END AS prompt_key,
  CASE WHEN verdict IS NULL THEN concat_ws(chr(10), {key}) END AS dedup_key
FROM framed
"""


def _read_lines(rank: int, source: dict) -> list[tuple]:
    """One row per line of the file: split on LF only, CRLF and a line-1 BOM dropped."""
    data = Path(source["path"]).read_bytes()
    pieces = data.split(b"\n")
    if pieces[-1] == b"":  # a trailing newline ends the last line, it does not start another
        pieces.pop()
    rows = []
    for number, piece in enumerate(pieces, start=1):
        piece = piece.removesuffix(b"\r")
        if number == 1:
            piece = piece.removeprefix(b"\xef\xbb\xbf")
        try:
            raw, error = piece.decode("utf-8"), None
        except UnicodeDecodeError as failure:
            raw, error = piece.decode("utf-8", errors="replace"), f"{failure.reason} at byte {failure.start}"
        rows.append((rank, source["id"], source["path"], number, raw, error))
    return rows


def _vectorised(function):
    """Wrap a str → str function as an Arrow UDF (one call per chunk rather than per row)."""
    def apply(values):
        return pa.array([function(value) for value in values.to_pylist()], type=pa.string())
    return apply


def _sql_path(path) -> str:  # COPY takes no parameter for its target
    return "'" + str(path).replace("'", "''") + "'"


def _check_sources(sources: list[dict], role: str) -> list[dict]:
    if role not in SHAPES:
        raise CurationError(f"role must be one of {sorted(SHAPES)}, got {role!r}")
    chosen = [source for source in sources if source.get("role") == role]
    if not chosen:
        raise CurationError(f"no source has role '{role}'")
    ids = [source["id"] for source in chosen]
    for source in chosen:
        where = f"source '{source['id']}' ({source['path']})"
        if ids.count(source["id"]) > 1:
            raise CurationError(f"{where}: id is used twice")
        if source.get("format", "jsonl") != "jsonl":
            raise CurationError(f"{where}: format '{source.get('format')}' cannot be curated as {role}")
        if not Path(source["path"]).is_file():
            raise CurationError(f"{where}: file not found")
    return chosen


def _reconciled_counts(con, chosen: list[dict], rows_in: dict[str, int], kept: Path, quarantined: Path) -> dict:
    """Per-source counts read back from the written files; raise if any line went missing or doubled."""
    found = {source["id"]: Counter() for source in chosen}
    for source, outcome, n in con.execute(
            f"SELECT source, 'kept', count(*) FROM read_parquet({_sql_path(kept)}) GROUP BY ALL UNION ALL "
            f"SELECT source, reason, count(*) FROM read_parquet({_sql_path(quarantined)}) GROUP BY ALL").fetchall():
        found[source][outcome] += n
    counts = {}
    for source in chosen:
        name, outcomes = source["id"], found[source["id"]]
        counts[name] = {"path": source["path"], "rows_in": rows_in[name], "kept": outcomes.pop("kept", 0),
                        "quarantined": {reason: outcomes[reason] for reason in REASONS if outcomes[reason]}}
        if rows_in[name] != counts[name]["kept"] + outcomes.total():
            raise CurationError(f"source '{name}' ({source['path']}): {rows_in[name]} lines in, but "
                                f"{counts[name]['kept']} kept + {outcomes.total()} quarantined")
    return counts


def curate(sources: list[dict], role: str, tasks_path: str, settings: dict,
           kept_path: str, quarantine_path: str, card_path: str) -> dict:
    """Curate the sources of one role; write kept rows, quarantined rows and a card. Returns the card."""
    chosen = _check_sources(sources, role)
    tasks = read_tasks(tasks_path) if settings["decontaminate"] else []
    shape = SHAPES[role]
    per_source = {source["id"]: _read_lines(rank, source) for rank, source in enumerate(chosen)}
    rows_in = {name: len(rows) for name, rows in per_source.items()}
    columns = list(zip(*(row for rows in per_source.values() for row in rows))) or [()] * len(LINES_SCHEMA)
    lines = pa.Table.from_arrays([pa.array(column, field.type) for column, field in zip(columns, LINES_SCHEMA)],
                                 schema=LINES_SCHEMA)
    task_inputs = pa.table({"task_id": pa.array([task.task_id for task in tasks], pa.int64()),
                            "input": pa.array([task.input for task in tasks], pa.string())})

    # One thread: Parquet bytes (row groups, page order) must not depend on scheduling.
    with duckdb.connect(config={"threads": 1}) as con:
        for name, function in (("normalize_text", normalize_text), ("match_key", match_key)):
            con.create_function(name, _vectorised(function), ["VARCHAR"], "VARCHAR", type="arrow")
        con.register("lines", lines)
        con.register("task_inputs", task_inputs)
        # A blank task input would be contained in every prompt.
        con.execute("CREATE TEMP TABLE tasks AS SELECT task_id, match_key(input) AS task_key "
                    "FROM task_inputs WHERE task_key <> ''")
        con.execute(FRAME_SQL)
        con.execute(_check_sql(shape), {"max_prompt": settings["max_prompt_chars"],
                                        "max_response": settings["max_response_chars"]})
        con.execute(CLASSIFY_SQL, {"dedup": bool(settings["dedup"])})

        with atomic_path(kept_path) as kept, atomic_path(quarantine_path) as quarantined, \
                atomic_path(card_path) as card_tmp:
            con.execute(f"COPY ({KEPT_SQL.format(columns=shape.kept_columns)}) TO {_sql_path(kept)} (FORMAT parquet)")
            con.execute(f"COPY ({QUARANTINE_SQL}) TO {_sql_path(quarantined)} (FORMAT parquet)")
            counts = _reconciled_counts(con, chosen, rows_in, kept, quarantined)
            examples: dict[str, list[str]] = {reason: [] for reason in REASONS}
            for reason, raw in con.execute(EXAMPLES_SQL, {"n": EXAMPLES_PER_REASON}).fetchall():
                examples[reason].append(raw)
            totals = sum((Counter(entry["quarantined"]) for entry in counts.values()), Counter())
            card = {
                "role": role,
                "sources": counts,
                "totals": {"rows_in": sum(rows_in.values()), "kept": sum(entry["kept"] for entry in counts.values()),
                           "quarantined": {reason: totals[reason] for reason in REASONS if totals[reason]}},
                "contamination": [{"source": source, "line": line, "task_id": task_id}
                                  for source, line, task_id in con.execute(CONTAMINATION_SQL).fetchall()],
                "examples": {reason: raws for reason, raws in examples.items() if raws},
            }
            write_json(card_tmp, card)
    return card
