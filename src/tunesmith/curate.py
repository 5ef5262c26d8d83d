"""Curation: raw corpora → deduplicated, decontaminated Parquet, a quarantine, and a card.

`tunesmith.ingest` reads every source (any format, any record style) into one row per record with
exact file and line, and maps record styles onto the canonical fields. Every decision after that is
DuckDB SQL over one table, so the rules read in one place and a million rows stay fast. Every input
record ends up in exactly one of the two outputs, and the card says so per source.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from tunesmith.atomic import atomic_path, write_json
from tunesmith.ingest import IngestError, Source, canonical_function, read_source, resolve_sources
from tunesmith.normalize import match_key, normalize_text
from tunesmith.tasks import read_tasks

# Priority order: a row that fails several checks is quarantined for the first. The reader's own
# reasons (bad bytes, a CSV row of the wrong width) come first; the record style's (a conversation
# without an answer, judges that tie or disagree) come after the checks of the fields they read.
REASONS = ("invalid_utf8", "wrong_column_count", "blank_line", "invalid_json", "not_object", "missing_field",
           "wrong_type", "bad_conversation", "judge_invalid", "judge_tie", "judge_disagree", "empty_field",
           "too_long", "chosen_equals_rejected", "contaminated", "duplicate")
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

# Line-level reasons, judged on the record as read. json_type() raises on invalid JSON, so each test
# is guarded by the one above it (DuckDB evaluates a CASE branch only for the rows that reach it).
# RE2's \s is ASCII only; \p{Z} adds the ideographic and no-break spaces of Japanese text.
FRAME_SQL = r"""
CREATE TEMP TABLE framed AS
SELECT *,
  CASE WHEN read_reason IS NOT NULL THEN read_reason
       WHEN regexp_matches(raw, '^[\s\v\p{Z}]*$') THEN 'blank_line'
       WHEN NOT json_valid(raw) THEN 'invalid_json'
       WHEN json_type(raw) <> 'OBJECT' THEN 'not_object' END AS line_reason,
  CASE WHEN read_reason IS NOT NULL THEN read_detail
       WHEN line_reason = 'not_object' THEN lower(json_type(raw)) END AS line_detail
FROM lines
"""

# Records of a mapped style become canonical JSON (or a reason) in Python; the rest are canonical as
# read. `labels` name where each canonical field came from, for the details of later checks.
STYLE_SQL = """
CREATE TEMP TABLE styled AS
WITH converted AS (
  SELECT *, CASE WHEN line_reason IS NULL AND list_contains($mapped, source_rank)
                 THEN canonical(source_rank, json(raw)) END AS conversion
  FROM framed
)
SELECT * EXCLUDE (conversion),
  CASE WHEN conversion IS NULL THEN raw ELSE conversion.record END AS record,
  conversion.labels AS labels,
  CASE WHEN line_reason IS NOT NULL THEN line_reason ELSE conversion.reason END AS early_reason,
  CASE WHEN line_reason IS NOT NULL THEN line_detail ELSE conversion.detail END AS early_detail
FROM converted
"""

# Per source: how many records are JSON objects, and which of the given columns any of them has.
COLUMNS_SQL = """SELECT count(*), list_distinct(flatten(list(list_intersect(json_keys(raw), $columns))))
FROM framed WHERE source_rank = $rank AND line_reason IS NULL"""

# Contamination and duplicates are only judged among rows that passed every other check, so a
# duplicate of a broken row is kept and a duplicate of a contaminated row is reported as contaminated.
CLASSIFY_SQL = """
CREATE TEMP TABLE classified AS
WITH contamination AS (
  SELECT c.source_rank, c.file, c.line, min(t.task_id) AS task_id
  FROM checked c JOIN tasks t ON contains(c.prompt_key, t.task_key)
  WHERE c.verdict IS NULL GROUP BY ALL
), ranked AS (
  SELECT c.*, m.task_id,
    row_number() OVER copies AS copy_rank,
    -- A source of several files names the file of its copy too.
    first_value(c.source || ':' || CASE WHEN list_contains($several_files, c.source_rank) THEN c.file || ':' ELSE '' END
                || c.line) OVER copies AS first_copy
  FROM checked c LEFT JOIN contamination m USING (source_rank, file, line)
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
CONTAMINATION_SQL = """SELECT source, file, line, task_id FROM classified
WHERE outcome.reason = 'contaminated' ORDER BY source_rank, file, line"""


def _listed(parts: list[str]) -> str:
    """SQL for the comma-separated names of the fields whose condition holds ('' when none)."""
    return "concat_ws(', ', " + ", ".join(parts) + ")" if parts else "''"


def _check_sql(shape: Shape) -> str:
    """Field-level reasons as one CASE yielding {reason, detail}; NULL means the row passed."""
    fields = shape.required + shape.optional
    # Details name each field as the record has it (a mapped column, a conversation turn).
    typed = ",\n  ".join(
        f"CASE WHEN early_reason IS NULL THEN json_type(record, '$.{f}') END AS {f}_type,\n  "
        f"CASE WHEN {f}_type = 'VARCHAR' THEN normalize_text(json_extract_string(record, '$.{f}')) END AS {f},\n  "
        f"coalesce(json_extract_string(labels, '$.{f}'), '{f}') AS {f}_name"
        for f in fields)
    # An explicit null counts as missing: it carries no text, exactly like an absent key.
    missing = _listed([f"CASE WHEN {f}_type IS NULL THEN {f}_name "
                       f"WHEN {f}_type = 'NULL' THEN {f}_name || '=null' END" for f in shape.required])
    wrong = _listed([f"CASE WHEN {f}_type NOT IN ('VARCHAR', 'NULL') THEN {f}_name || ': ' || lower({f}_type) END"
                     for f in fields])
    empty = _listed([f"CASE WHEN {f} = '' THEN {f}_name END" for f in shape.required])
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
  CASE WHEN early_reason IS NOT NULL THEN {{'reason': early_reason, 'detail': early_detail}}
       WHEN {missing} <> '' THEN {{'reason': 'missing_field', 'detail': {missing}}}
       WHEN {wrong} <> '' THEN {{'reason': 'wrong_type', 'detail': {wrong}}}
       WHEN {empty} <> '' THEN {{'reason': 'empty_field', 'detail': {empty}}}
       WHEN {too_long} <> '' THEN {{'reason': 'too_long', 'detail': {too_long}}}
       WHEN {shape.identical} THEN {{'reason': 'chosen_equals_rejected', 'detail': NULL}}
  END AS verdict,
  CASE WHEN verdict IS NULL THEN match_key(prompt_text) END AS prompt_key,
  CASE WHEN verdict IS NULL THEN concat_ws(chr(10), {key}) END AS dedup_key
FROM styled
"""


def _vectorised(function):
    """Wrap a str → str function as an Arrow UDF (one call per chunk rather than per row)."""
    def apply(values):
        return pa.array([function(value) for value in values.to_pylist()], type=pa.string())
    return apply


def _sql_path(path) -> str:  # COPY takes no parameter for its target
    return "'" + str(path).replace("'", "''") + "'"


def _resolved(sources: list[dict], role: str) -> list[Source]:
    if role not in SHAPES:
        raise CurationError(f"role must be one of {sorted(SHAPES)}, got {role!r}")
    try:
        return resolve_sources(sources, role)
    except IngestError as error:
        raise CurationError(str(error)) from None


def _read(chosen: list[Source]) -> list[pa.Table]:
    try:
        return [read_source(source) for source in chosen]
    except IngestError as error:
        raise CurationError(str(error)) from None


def _check_columns(con, chosen: list[Source]) -> None:
    """A column the style reads (or the recipe maps) that no record has is a recipe mistake, not dirt:
    fail, naming it, before anything is written rather than quarantine every record."""
    for source in chosen:
        expected = source.expected_columns()
        objects, found = con.execute(COLUMNS_SQL, {"rank": source.rank,
                                                   "columns": [theirs for _, theirs in expected]}).fetchall()[0]
        absent = [theirs if ours == theirs else f"{theirs} (for {ours})"
                  for ours, theirs in expected if theirs not in (found or [])]
        if objects and absent:
            raise CurationError(f"{source.where}: no record has the column(s) {', '.join(absent)} "
                                f"(style '{source.style}'; map other names with `columns`)")


def _reconciled_counts(con, chosen: list[Source], rows_in: dict[str, int], kept: Path, quarantined: Path) -> dict:
    """Per-source counts read back from the written files; raise if any record went missing or doubled."""
    found = {source.id: Counter() for source in chosen}
    for source, outcome, n in con.execute(
            f"SELECT source, 'kept', count(*) FROM read_parquet({_sql_path(kept)}) GROUP BY ALL UNION ALL "
            f"SELECT source, reason, count(*) FROM read_parquet({_sql_path(quarantined)}) GROUP BY ALL").fetchall():
        found[source][outcome] += n
    counts = {}
    for source in chosen:
        outcomes = found[source.id]
        counts[source.id] = {"path": source.path, "format": source.format, "style": source.style,
                             "files": len(source.files), "rows_in": rows_in[source.id],
                             "kept": outcomes.pop("kept", 0),
                             "quarantined": {reason: outcomes[reason] for reason in REASONS if outcomes[reason]}}
        if rows_in[source.id] != counts[source.id]["kept"] + outcomes.total():
            raise CurationError(f"{source.where}: {rows_in[source.id]} rows in, but "
                                f"{counts[source.id]['kept']} kept + {outcomes.total()} quarantined")
    return counts


def curate(sources: list[dict], role: str, tasks_path: str, settings: dict,
           kept_path: str, quarantine_path: str, card_path: str) -> dict:
    """Curate the sources of one role; write kept rows, quarantined rows and a card. Returns the card."""
    chosen = _resolved(sources, role)
    tasks = read_tasks(tasks_path) if settings["decontaminate"] else []
    shape = SHAPES[role]
    tables = _read(chosen)
    rows_in = {source.id: table.num_rows for source, table in zip(chosen, tables)}
    lines = pa.concat_tables(tables)
    task_inputs = pa.table({"task_id": pa.array([task.task_id for task in tasks], pa.int64()),
                            "input": pa.array([task.input for task in tasks], pa.string())})

    # One thread: Parquet bytes (row groups, page order) must not depend on scheduling.
    with duckdb.connect(config={"threads": 1}) as con:
        for name, function in (("normalize_text", normalize_text), ("match_key", match_key)):
            con.create_function(name, _vectorised(function), ["VARCHAR"], "VARCHAR", type="arrow")
        con.create_function("canonical", canonical_function(chosen), ["INTEGER", "VARCHAR"],
                            "STRUCT(record VARCHAR, labels VARCHAR, reason VARCHAR, detail VARCHAR)", type="arrow")
        con.register("lines", lines)
        con.register("task_inputs", task_inputs)
        # A blank task input would be contained in every prompt.
        con.execute("CREATE TEMP TABLE tasks AS SELECT task_id, match_key(input) AS task_key "
                    "FROM task_inputs WHERE task_key <> ''")
        con.execute(FRAME_SQL)
        _check_columns(con, chosen)
        con.execute(STYLE_SQL, {"mapped": [source.rank for source in chosen if source.mapped]})
        con.execute(_check_sql(shape), {"max_prompt": settings["max_prompt_chars"],
                                        "max_response": settings["max_response_chars"]})
        con.execute(CLASSIFY_SQL, {"dedup": bool(settings["dedup"]),
                                   "several_files": [source.rank for source in chosen if len(source.files) > 1]})

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
                "contamination": [{"source": source, "file": file, "line": line, "task_id": task_id}
                                  for source, file, line, task_id in con.execute(CONTAMINATION_SQL).fetchall()],
                "examples": {reason: raws for reason, raws in examples.items() if raws},
            }
            write_json(card_tmp, card)
    return card
