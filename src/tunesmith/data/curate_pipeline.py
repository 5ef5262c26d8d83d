"""Curation's SQL pipeline: ingested records → one `classified` table in DuckDB, each row with its
outcome (NULL: kept; else the first failing reason and its detail) and its split.

The steps, in priority order (a row failing several is quarantined for the first; see REASONS):
reading and record-style problems (framed, styled; repeated keys); missing, mistyped and empty fields;
control and replacement characters in a field as read (control_characters, replacement_character); length in
characters (too_short, too_long) and in estimated tokens (too_few_tokens, too_many_tokens);
chosen_equals_rejected; the Japanese share (not_japanese); the block list (blocked); degenerate
repetition of the taught answer (repetitive); overlap with a task input (contaminated); exact copies
(duplicate); near copies (near_duplicate, MinHash LSH candidates checked by exact Jaccard, no chains);
then mixing: per-source weight (downsampled) and cap (over_cap). Kept rows get a `split`
(train/validation) by a hash of their id and the seed. The text measures are `tunesmith.data.measures`.

Quality filters (script share, block list, repetition) judge the prompt and the *taught* answer: the
response of an SFT row, the chosen answer of a preference pair. A rejected answer is meant to be bad.
"""

from __future__ import annotations

import json

import numpy
import pyarrow as pa
import pyarrow.parquet as pq

from tunesmith.data.curate_checks import Shape, check_sql, normalise_texts, sql_string
from tunesmith.data.curate_fields import canonical_function, style_sql, typed_sql
from tunesmith.data.measures import MACROS
from tunesmith.data.near_dup import near_duplicates
from tunesmith.data.ngrams import ngrams_sql
from tunesmith.data.normalize import match_key
from tunesmith.data.sources import Source

# Priority order: a row that fails several checks is quarantined for the first. The reader's own
# reasons (bad bytes, a CSV row of the wrong width or broken quoting, a line over curate.max_line_bytes:
# too_long, whatever its place here) come first; the record style's (a conversation without an answer,
# judges that tie or disagree) come after the checks of the fields they read.
REASONS = ("invalid_utf8", "wrong_column_count", "malformed_csv", "blank_line", "invalid_json", "not_object",
           "duplicate_key", "missing_field", "wrong_type", "bad_conversation", "judge_invalid", "judge_tie",
           "judge_disagree", "empty_field", "control_characters", "replacement_character", "too_short", "too_long",
           "too_few_tokens", "too_many_tokens", "chosen_equals_rejected", "not_japanese", "blocked", "repetitive",
           "contaminated", "duplicate", "near_duplicate", "downsampled", "over_cap")

SPLITS = ("train", "validation")


class CurationError(ValueError):
    """A source or result that cannot be used; the message names the source id and path."""


def strict_json_problems(raws):
    """An Arrow UDF: why each text that DuckDB's lenient parser accepted is not JSON (None when it is)."""
    def problem(raw: str) -> str | None:
        def constant(name):
            raise ValueError(f"{name} is not JSON")
        try:
            json.loads(raw, parse_constant=constant)
        except json.JSONDecodeError as error:
            return f"trailing comma at character {error.pos}"  # the leniency json_valid has besides NaN
        except ValueError as error:
            return str(error)
        except RecursionError:  # deeper than Python goes; DuckDB's parser has read it
            return None
        return None
    return pa.array([problem(raw) for raw in raws.to_pylist()], pa.string())


# Line-level reasons, judged on the record as read. json_type() raises on invalid JSON, so each test
# is guarded by the one above it (DuckDB evaluates a CASE branch only for the rows that reach it).
FRAME_SQL = r"""
CREATE TEMP VIEW framed AS
SELECT *,
  CASE WHEN read_reason IS NOT NULL THEN read_reason
       WHEN regexp_matches(raw, '^[\s\v\p{Z}]*$') THEN 'blank_line'
       WHEN NOT json_valid(raw) THEN 'invalid_json'
       -- json_valid also takes trailing commas, NaN and Infinity: Python's parser judges those rows
       WHEN (regexp_matches(raw, ',\s*[\]}]') OR contains(raw, 'NaN') OR contains(raw, 'Infinity'))
            AND strict_json_problem(raw) IS NOT NULL THEN 'invalid_json'
       -- valid JSON is an object when it opens with a brace, after JSON's white space (no parse, no copy)
       WHEN NOT regexp_matches(raw, '^[ \t\n\r]*\{') THEN 'not_object'
       -- DuckDB keeps a repeated key's first value, Python its last: a record that repeats a key is
       -- ambiguous, whichever reader reads it (keys inside conversation turns: tunesmith.data.styles).
       -- The keys are parsed once (the lambda's argument); a key found before its own place repeats one
       -- (a few keys: 5x cheaper than list_distinct, which is kept for records of many keys)
       WHEN list_transform([json_keys(raw)], lambda k: CASE WHEN len(k) <= 64
              THEN coalesce(list_bool_or(list_transform(k, lambda key, i: list_position(k, key) <> i)), false)
              ELSE len(k) <> len(list_distinct(k)) END)[1] THEN 'duplicate_key' END AS line_reason,
  CASE WHEN read_reason IS NOT NULL THEN read_detail
       WHEN line_reason = 'invalid_json' AND json_valid(raw) THEN strict_json_problem(raw)
       WHEN line_reason = 'not_object' THEN lower(json_type(raw))
       WHEN line_reason = 'duplicate_key' THEN 'repeated: ' || array_to_string(list_sort(list_filter(
         list_distinct(json_keys(raw)), lambda k: len(list_filter(json_keys(raw), lambda o: o = k)) > 1)), ', ')
  END AS line_detail
FROM records
"""

# Per source: how many records are JSON objects and which given columns any has (the first `limit`, or all if need be).
COLUMNS_SQL = """SELECT count(*), list_distinct(flatten(list(list_intersect(json_keys(raw), $columns))))
FROM (SELECT raw FROM framed WHERE source_rank = $rank AND line_reason IS NULL LIMIT $limit)"""
COLUMNS_PREFIX = 10_000

# A reference to a row in details and the card; a source of several files names the file too.
def _ref(row: str = "") -> str:
    """SQL for the reference of the row whose columns are prefixed by `row` (e.g. "k.")."""
    return (f"{row}source || ':' || CASE WHEN list_contains($several_files, {row}source_rank) THEN {row}file || ':' "
            f"ELSE '' END || {row}line")


# Row keys for the rows that passed every field check: the id hashes what exact dedup compares (row_key),
# so dedup compares ids. The near-duplicate pass's keys are kept only when it runs ({near}; else NULL), the
# match keys decontamination reads only when it runs (else not at all: 0.2 GB less held at 1M rows).
KEYS_SQL = """
SELECT * EXCLUDE (prompt_key_all, instruction_key_all, context_key_all, row_key{unread_keys}),
  {contamination_keys}sha256(row_key) AS id,
  CASE WHEN {near} THEN row_key END AS dedup_key,
  CASE WHEN {near} AND verdict IS NULL THEN concat_ws(chr(10), instruction_key_all, {response_keys}) END AS question_key,
  CASE WHEN {near} AND verdict IS NULL THEN context_key_all END AS context_key
FROM (SELECT *, CASE WHEN verdict IS NULL THEN concat_ws(chr(10), prompt_key_all, {response_keys}) END AS row_key
      FROM ({checked}))
"""
CONTAMINATION_KEYS = "CASE WHEN verdict IS NULL THEN prompt_key_all END AS prompt_key, "

# Decontamination: the share of each task's distinct n-grams found in a row's prompt or responses.
# The row side is streamed through the join, never materialised: a row's n-grams are many, matches few.
CONTAMINATION_SQL = """
CREATE TEMP TABLE contamination AS
WITH task_grams AS (
  SELECT DISTINCT task_id, unnest({task_grams}) AS gram FROM tasks WHERE length(task_key) >= {n}
), task_sizes AS (
  SELECT task_id, count(*) AS grams FROM task_grams GROUP BY task_id
), hits AS (
  SELECT r.pos, t.task_id, count(DISTINCT r.gram) AS shared
  FROM (SELECT pos, unnest({row_grams}) AS gram FROM keyed WHERE verdict IS NULL) r
  JOIN task_grams t USING (gram) GROUP BY ALL
)
SELECT pos, task_id, shared / grams AS overlap FROM hits JOIN task_sizes USING (task_id)
WHERE shared / grams >= {threshold}
UNION ALL
SELECT k.pos, t.task_id, 1.0 FROM keyed k JOIN tasks t ON t.task_key IN ({texts})
WHERE k.verdict IS NULL AND length(t.task_key) < {n}
"""

# Exact duplicates are only judged among rows that passed every other check, so a duplicate of a
# broken row is kept and a duplicate of a contaminated row is reported as contaminated. Each part reads
# `keyed` itself: DuckDB materialises a CTE read twice, which spills under a small curate.memory_limit.
# Only the rows quarantined here are written (`duplicates`), not a copy of all rows with their verdicts.
DEDUP_SQL = f"""
CREATE TEMP TABLE duplicates AS
WITH matched AS (
  SELECT pos, string_agg('task_id ' || task_id || ' (overlap ' || round(overlap, 2) || ')', ', ' ORDER BY task_id) AS matches
  FROM contamination GROUP BY pos
), firsts AS (  -- the first copy in recipe order of each id that has copies among the rows that pass
  SELECT id, min(pos) AS first_pos FROM keyed
  WHERE verdict IS NULL AND pos NOT IN (SELECT pos FROM matched) GROUP BY id HAVING count(*) > 1
), named AS (  -- each first copy's reference, read for those rows alone
  SELECT f.id, f.first_pos, 'kept ' || {_ref("k.")} AS kept FROM firsts f JOIN keyed k ON k.pos = f.first_pos
), copies AS (  -- later copies among the rows that pass every check (contamination's among them: below)
  SELECT k.pos, f.kept FROM keyed k
  JOIN named f ON k.verdict IS NULL AND f.id = k.id AND k.pos > f.first_pos
)
SELECT pos, {{'reason': 'contaminated', 'detail': matches}} AS verdict FROM matched  -- rows that passed alone
UNION ALL
SELECT pos, {{'reason': 'duplicate', 'detail': kept}} FROM copies WHERE $dedup AND pos NOT IN (SELECT pos FROM matched)
"""
DEDUPLICATED_SQL = """
CREATE TEMP VIEW deduplicated AS
SELECT k.pos, k.source_rank, k.source, k.file, k.line, k.id, k.dedup_key, k.question_key, k.context_key,
  coalesce(k.verdict, d.verdict) AS verdict
FROM keyed k LEFT JOIN duplicates d USING (pos)
"""

# Mixing and the split: weights and caps per source, hashed on the row id with the seed. A row's rank
# among its source's rows that pass, in draw order, is only computed when a source has max_rows.
MIX_RANK = """CASE WHEN verdict IS NULL AND NOT near_dropped AND mix_draw < least(weight, 1)
  THEN row_number() OVER (PARTITION BY source_rank, verdict IS NULL AND NOT near_dropped AND mix_draw < least(weight, 1)
                          ORDER BY mix_draw, pos) END"""
MIX_SQL = f"""
CREATE TABLE classified AS  -- not TEMP, nor `records`: the quarantine file is written from a second connection
WITH near AS (
  SELECT c.pos, c.cluster, c.jaccard, {_ref("k.")} AS kept_ref, c.pos <> c.label AS dropped
  FROM clusters c JOIN deduplicated k ON k.pos = c.label
), weighed AS (
  SELECT d.* EXCLUDE (dedup_key, question_key, context_key), n.cluster, n.jaccard, n.kept_ref,
    coalesce(n.dropped, false) AS near_dropped,
    w.weight, w.max_rows, uniform(d.id, $seed, 'mix') AS mix_draw
  FROM deduplicated d LEFT JOIN near n USING (pos) JOIN weights w USING (source_rank)
), capped AS (
  SELECT *, {{mix_rank}} AS mix_rank FROM weighed
)
SELECT pos, source, file, line,  -- what the files and the card read: the table is written once, read a few times
  CASE WHEN verdict IS NOT NULL THEN verdict
       WHEN near_dropped THEN {{'reason': 'near_duplicate',
                                'detail': 'kept ' || kept_ref || ' (cluster ' || cluster || ', Jaccard '
                                          || round(jaccard, 2) || ')'}}
       WHEN mix_draw >= weight THEN {{'reason': 'downsampled', 'detail': 'weight ' || weight}}
       WHEN mix_rank > max_rows THEN {{'reason': 'over_cap', 'detail': 'max_rows ' || max_rows}}
  END AS outcome,
  CASE WHEN uniform(id, $seed, 'split') < $validation_fraction THEN 'validation' ELSE 'train' END AS split
FROM capped  -- a source of weight above 1 writes a kept row more than once: tunesmith.data.curate.KEPT_SQL
"""


def _check_columns(con, chosen: list[Source]) -> None:
    """A column the style reads (or the recipe maps) that no record has is a recipe mistake, not dirt:
    fail, naming it, before anything is written rather than quarantine every record."""
    for source in chosen:
        expected = source.expected_columns()
        columns = [theirs for _, theirs in expected]
        for limit in (COLUMNS_PREFIX, None):
            objects, found = con.execute(COLUMNS_SQL, {"rank": source.rank, "columns": columns,
                                                       "limit": limit}).fetchall()[0]
            absent = [theirs if ours == theirs else f"{theirs} (for {ours})"
                      for ours, theirs in expected if theirs not in (found or [])]
            if not absent or objects < COLUMNS_PREFIX:
                break
        if objects and absent:
            raise CurationError(f"{source.where}: no record has the column(s) {', '.join(absent)} "
                                f"(style '{source.style}'; map other names with `columns`)")


def _register_not_text(con, chosen: list[Source], paths: list[str]) -> bool:
    """Table `not_text` (source_rank, file, column, type): the columns ingest found to hold no text
    (a Parquet timestamp: JSON text in the record, but a wrong type for a text field). Whether any."""
    from tunesmith.data.ingest import ingested_source  # Arrow and DuckDB are loaded by now

    rows = [(source.rank, file, column, kind) for source, path in zip(chosen, paths)
            for file, columns in ingested_source(path).get("not_text", {}).items()
            for column, kind in columns.items()]
    con.register("not_text", pa.table({name: pa.array(values, kind) for name, values, kind in zip(
        ("source_rank", "file", "column", "type"), zip(*rows) if rows else ([], [], [], []),
        (pa.int64(), pa.string(), pa.string(), pa.string()))}))
    return bool(rows)


def classify(con, chosen: list[Source], shape: Shape, settings: dict, seed: int, paths: list[str], tasks: list,
             several_files: list[int], tokenizer=None) -> None:
    """Run the pipeline on `con` over the ingested files `paths` (one per source of `chosen`, in
    order): leaves the view `records` (the records as read; pos, source, file, line, raw), `keyed` (texts
    and measures; decontamination's match keys dropped after dedup, the near ones after mixing) and `classified` (their
    outcomes), plus `contamination` and `clusters` for the card. `settings` are curate settings with defaults;
    `tokenizer` (optional) counts tokens instead of the estimate."""
    con.create_function("strict_json_problem", strict_json_problems, ["VARCHAR"], "VARCHAR", type="arrow",
                        null_handling="special")
    con.create_function("canonical", canonical_function(chosen), ["INTEGER", "VARCHAR"],
                        "STRUCT(record VARCHAR, labels VARCHAR, reason VARCHAR, detail VARCHAR)", type="arrow")
    con.execute(MACROS)
    # A blank task input would match everything.
    task_keys = [(task.task_id, match_key(task.input)) for task in tasks]
    con.register("tasks", pa.table({"task_id": pa.array([task_id for task_id, key in task_keys if key], pa.int64()),
                                    "task_key": pa.array([key for _, key in task_keys if key], pa.string())}))
    con.register("weights", pa.table({"source_rank": [source.rank for source in chosen],
                                      "weight": pa.array([float(source.weight) for source in chosen], pa.float64()),
                                      "max_rows": pa.array([source.max_rows for source in chosen], pa.int64())}))
    # pos: the row number in its ingested file (written in file and line order) after the rows of the sources
    # before it: no sort. `records` reads the raw lines from those files when a statement needs them, never
    # held; one SELECT per file, so a range of pos reaches each reader and a text batch reads its row groups.
    # Not TEMP, as `classified`: the quarantine file is written from a second connection (curate.py).
    offsets = numpy.cumsum([0] + [pq.read_metadata(path).num_rows for path in paths]).tolist()
    con.execute("CREATE VIEW records AS " + " UNION ALL ".join(
        f"SELECT {offset} + file_row_number + 1 AS pos, {source.rank} AS source_rank, * EXCLUDE (file_row_number) "
        f"FROM read_parquet({sql_string(str(path))}, file_row_number = true)"
        for source, path, offset in zip(chosen, paths, offsets)))
    con.execute(FRAME_SQL)
    _check_columns(con, chosen)
    not_text = _register_not_text(con, chosen, paths)
    con.execute(style_sql(chosen))
    con.execute(typed_sql(shape, not_text, chosen))
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]  # DuckDB's: idle meanwhile
    # Each batch of texts is checked and keyed as it is written: `keyed` is the one table of texts held.
    response_keys = ", ".join(f"{r}_key" for r in shape.responses)
    keys_sql = KEYS_SQL.format(checked=check_sql(shape, settings, counted=tokenizer is not None),
                               response_keys=response_keys, near=str(bool(settings["near_dedup"]["enabled"])).lower(),
                               unread_keys="" if tasks else ", " + response_keys,
                               contamination_keys=CONTAMINATION_KEYS if tasks else "")
    normalise_texts(con, shape, settings["repetition"], tokenizer, settings["normalize_training_text"], threads,
                    table="keyed", select=keys_sql)
    con.execute("DROP VIEW typed")
    decontamination, n = settings["decontamination"], settings["decontamination"]["ngram"]
    keys = ["prompt_key"] + [f"{r}_key" for r in shape.responses]
    contamination_sql = CONTAMINATION_SQL if tasks else "CREATE TEMP TABLE contamination AS {empty}"
    con.execute(contamination_sql.format(empty="SELECT 0::BIGINT AS pos, 0::BIGINT AS task_id, 0.0 AS overlap LIMIT 0",
        n=n, threshold=decontamination["threshold"], task_grams=ngrams_sql("task_key", n), texts=", ".join(keys),
        row_grams="flatten([" + ", ".join(ngrams_sql(key, n) for key in keys) + "])"))
    con.execute(DEDUP_SQL, {"dedup": bool(settings["dedup"]), "several_files": several_files})
    con.execute(DEDUPLICATED_SQL)
    if tasks:
        con.execute("; ".join(f"ALTER TABLE keyed DROP COLUMN {column}" for column in keys))  # less to hold and spill
    near_duplicates(con, settings["near_dedup"], seed)
    con.execute(MIX_SQL.replace("{mix_rank}", MIX_RANK if any(s.max_rows is not None for s in chosen) else "NULL::BIGINT"),
                {"several_files": several_files, "seed": seed, "validation_fraction": settings["validation_fraction"]})
    con.execute("DROP VIEW deduplicated; DROP TABLE duplicates; "  # classified has what the files and the card read
                + "; ".join(f"ALTER TABLE keyed DROP COLUMN {column}" for column in ("dedup_key", "question_key", "context_key")))
