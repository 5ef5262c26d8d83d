"""Curation: ingested sources → filtered, deduplicated, decontaminated, mixed Parquet, a quarantine and a card.

`tunesmith.ingest.ingest_source` reads each source (any format, any record style) into a Parquet file
of raw records with exact file and line; curation reads those files and maps record styles onto the
canonical fields. Every decision after that is DuckDB SQL over one table, so the rules read in one
place and a million rows stay fast. Every input record ends up in exactly one of the two outputs (a
kept record of weight > 1 may be written several times), and the card says so per source.

The checks, in priority order (a row failing several is quarantined for the first; see REASONS):
reading and record-style problems; missing, mistyped and empty fields; length in characters
(too_short, too_long) and in estimated tokens (too_few_tokens, too_many_tokens: one token per
Japanese character plus one per 4 other non-space characters, rounded up: no tokenizer exists at
curation time for the tiny model); chosen_equals_rejected; the share of Japanese characters among
letters (not_japanese); the block list (blocked); degenerate repetition of the taught answer
(repetitive); overlap with a task input (contaminated); exact copies (duplicate); MinHash LSH near
copies (near_duplicate); then mixing: per-source weight (downsampled) and cap (over_cap). Kept rows get
a `split` column (train/validation) by a hash of their id and the seed.

Quality filters (script share, block list, repetition) judge the prompt and the *taught* answer: the
response of an SFT row, the chosen answer of a preference pair. A rejected answer is meant to be bad.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy
import pyarrow as pa
import pyarrow.compute as pc

from tunesmith.atomic import atomic_path, write_json
from tunesmith.measures import MACROS, SPACES_RE2, repeated_unit, tandem_repeats
from tunesmith.ingest import (IngestError, Source, canonical_function, ingest_source, ingested_source, resolve_sources,
                              source_with_defaults)
from tunesmith.normalize import match_keys_arrow, normalize_arrow
from tunesmith.recipe import load_schema
from tunesmith.tasks import read_tasks

# Priority order: a row that fails several checks is quarantined for the first. The reader's own
# reasons (bad bytes, a CSV row of the wrong width) come first; the record style's (a conversation
# without an answer, judges that tie or disagree) come after the checks of the fields they read.
REASONS = ("invalid_utf8", "wrong_column_count", "blank_line", "invalid_json", "not_object", "missing_field",
           "wrong_type", "bad_conversation", "judge_invalid", "judge_tie", "judge_disagree", "empty_field",
           "too_short", "too_long", "too_few_tokens", "too_many_tokens", "chosen_equals_rejected", "not_japanese",
           "blocked", "repetitive", "contaminated", "duplicate", "near_duplicate", "downsampled", "over_cap")
EXAMPLES_PER_REASON = 3
KEPT_EXAMPLES = 3
EXAMPLE_CHARS = 1000  # a 10 MB record would make the card unreadable
CARD_CLUSTERS = 100  # the largest near-duplicate clusters listed in the card (all are counted)
SPLITS = ("train", "validation")


class CurationError(ValueError):
    """A source or result that cannot be used; the message names the source id and path."""


@dataclass(frozen=True)
class Shape:
    """What one role's records look like, and how they become a prompt and responses (SQL)."""
    required: tuple[str, ...]
    optional: tuple[str, ...]
    prompt: str
    responses: tuple[str, ...]
    taught: str  # the answer the model learns to give: what quality filters judge
    instruction: str  # the prompt without its context (an alpaca input) ...
    context: str  # ... and the context: near duplicates are compared on each apart
    kept_columns: str
    identical: str  # a pair whose answers are the same teaches a preference nothing


SHAPES = {
    "sft": Shape(("instruction", "output"), ("input",),
                 "CASE WHEN coalesce(input, '') = '' THEN instruction ELSE instruction || chr(10) || input END",
                 ("output",), "output", "instruction", "coalesce(input, '')",
                 "prompt_text AS prompt, output AS response", "false"),
    "preference": Shape(("prompt", "chosen", "rejected"), (), "prompt", ("chosen", "rejected"), "chosen", "prompt", "''",
                        "prompt_text AS prompt, chosen, rejected", "chosen = rejected"),
}

# Line-level reasons, judged on the record as read. json_type() raises on invalid JSON, so each test
# is guarded by the one above it (DuckDB evaluates a CASE branch only for the rows that reach it).
FRAME_SQL = r"""
CREATE TEMP VIEW framed AS
SELECT *,
  CASE WHEN read_reason IS NOT NULL THEN read_reason
       WHEN regexp_matches(raw, '^[\s\v\p{Z}]*$') THEN 'blank_line'
       WHEN NOT json_valid(raw) THEN 'invalid_json'
       -- json_valid also takes trailing commas, NaN and Infinity: Python's parser judges those rows
       WHEN regexp_matches(raw, ',\s*[\]}]|NaN|Infinity') AND strict_json_problem(raw) IS NOT NULL THEN 'invalid_json'
       WHEN json_type(raw) <> 'OBJECT' THEN 'not_object' END AS line_reason,
  CASE WHEN read_reason IS NOT NULL THEN read_detail
       WHEN line_reason = 'invalid_json' AND json_valid(raw) THEN strict_json_problem(raw)
       WHEN line_reason = 'not_object' THEN lower(json_type(raw)) END AS line_detail
FROM lines
"""

# Records of a mapped style become canonical JSON (or a reason) in Python; the rest are canonical as
# read. `labels` name where each canonical field came from, for the details of later checks.
STYLE_SQL = """
CREATE TEMP VIEW styled AS
WITH converted AS (
  SELECT *, CASE WHEN line_reason IS NULL AND list_contains({mapped}, source_rank)
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

# A reference to a row in details and the card; a source of several files names the file too.
REF = ("source || ':' || CASE WHEN list_contains($several_files, source_rank) THEN file || ':' ELSE '' END "
       "|| line")


def _listed(parts: list[str]) -> str:
    """SQL for the comma-separated names of the fields whose condition holds ('' when none)."""
    return "concat_ws(', ', " + ", ".join(parts) + ")" if parts else "''"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_path(path) -> str:  # COPY takes no parameter for its target
    return _quoted(str(path))


def _ngrams_sql(text: str, n: int) -> str:
    """SQL: the list of hashes of the text's character n-grams (duplicates kept; empty when shorter)."""
    window = ", ".join(f"cp[i + {offset}]" for offset in range(n))
    return (f"list_transform([code_points({text})], lambda cp: "
            f"list_transform(range(1, len(cp) - {n - 2}), lambda i: hash({window})))[1]")


def _check_sql(shape: Shape, settings: dict) -> str:
    """Field-level reasons as one CASE yielding {reason, detail}; NULL means the row passed."""
    fields = shape.required + shape.optional
    # Details name each field as the record has it (a mapped column, a conversation turn).
    typed = ",\n  ".join(
        f"CASE WHEN early_reason IS NULL THEN json_type(record, '$.{f}') END AS {f}_type,\n  "
        f"CASE WHEN {f}_type = 'VARCHAR' THEN json_extract_string(record, '$.{f}') END AS {f}_raw,\n  "
        f"coalesce(json_extract_string(labels, '$.{f}'), '{f}') AS {f}_name"
        for f in fields)
    normalised = ", ".join(f"normalize_text({f}_raw) AS {f}" for f in fields)
    texts = [("prompt_text", "'prompt'")] + [(r, f"{r}_name") for r in shape.responses]
    taught = [("prompt_text", "'prompt'"), (shape.taught, f"{shape.taught}_name")]
    tokens, japanese = settings["tokens"], settings["japanese"]

    # An explicit null counts as missing: it carries no text, exactly like an absent key.
    missing = _listed([f"CASE WHEN {f}_type IS NULL THEN {f}_name "
                       f"WHEN {f}_type = 'NULL' THEN {f}_name || '=null' END" for f in shape.required])
    wrong = _listed([f"CASE WHEN {f}_type NOT IN ('VARCHAR', 'NULL') THEN {f}_name || ': ' || lower({f}_type) END"
                     for f in fields])
    empty = _listed([f"CASE WHEN {f} = '' THEN {f}_name END" for f in shape.required])

    def limits(measure: str, compare: str, prompt_bound, response_bound, unit: str = "") -> str:
        """Fields beyond a bound; a minimum of 1 character or 0 tokens, or a null maximum, checks nothing."""
        parts = []
        for text, name in texts:
            bound = prompt_bound if text == "prompt_text" else response_bound
            if bound is None or (compare == "<" and bound <= (1 if measure == "length" else 0)):
                continue
            parts.append(f"CASE WHEN {measure}({text}) {compare} {bound} THEN {name} || ' ' || {measure}({text})"
                         f"{unit} END")
        return _listed(parts)

    too_short = limits("length", "<", settings["min_prompt_chars"], settings["min_response_chars"])
    too_long = limits("length", ">", settings["max_prompt_chars"], settings["max_response_chars"])
    too_few = limits("estimated_tokens", "<", tokens["min_prompt"], tokens["min_response"], " || ' tokens'")
    too_many = limits("estimated_tokens", ">", tokens["max_prompt"], tokens["max_response"], " || ' tokens'")
    judged_script = {"prompt": taught[:1], "response": taught[1:], "both": taught}[japanese["fields"]]
    not_japanese = _listed([f"CASE WHEN japanese_share({text}) < {japanese['min_share']} THEN {name} || ' ' || "
                            f"round(japanese_share({text}), 2) END" for text, name in judged_script]
                           if japanese["min_share"] > 0 else [])
    blocked = _listed([f"CASE WHEN regexp_matches({text}, {_quoted(pattern)}) THEN {name} || ' matches ' || "
                       f"{_quoted(_quoted(pattern))} END" for pattern in settings["block_patterns"]
                       for text, name in taught])
    rules = [("missing_field", missing), ("wrong_type", wrong), ("empty_field", empty), ("too_short", too_short),
             ("too_long", too_long), ("too_few_tokens", too_few), ("too_many_tokens", too_many)]
    cases = "\n       ".join(f"WHEN {condition} <> '' THEN {{'reason': '{reason}', 'detail': {condition}}}"
                             for reason, condition in rules if condition != "''")
    late = "\n       ".join(f"WHEN {condition} <> '' THEN {{'reason': '{reason}', 'detail': {condition}}}"
                            for reason, condition in (("not_japanese", not_japanese), ("blocked", blocked))
                            if condition != "''")

    return f"""
CREATE TEMP TABLE checked AS
WITH typed AS (
  SELECT pos, source_rank, early_reason, early_detail, {typed}
  FROM styled
), normalised AS (
  SELECT * EXCLUDE ({", ".join(f"{f}_raw" for f in fields)}), {normalised} FROM typed
), structural AS (
  SELECT *, {shape.prompt} AS prompt_text, {shape.instruction} AS instruction_text,
    {shape.context} AS context_text FROM normalised
)
SELECT pos, source_rank, prompt_text, instruction_text, context_text, {", ".join(shape.responses)},
  {shape.taught}_name AS taught_name,
  CASE WHEN early_reason IS NOT NULL THEN {{'reason': early_reason, 'detail': early_detail}}
     {cases}
     WHEN {shape.identical} THEN {{'reason': 'chosen_equals_rejected', 'detail': NULL}}
     {late}
  END AS verdict
FROM structural
"""


def _judge_repetition(con, shape: Shape, repetition: dict) -> None:
    """Quarantine as repetitive the rows still passing whose taught answer (spaces removed) holds a
    unit repeated `min_copies` times in a row covering `min_share` of it (tunesmith.measures)."""
    rows = con.execute(f"SELECT pos, regexp_replace({shape.taught}, '{SPACES_RE2}', '', 'g') AS taught FROM checked "
                       f"WHERE verdict IS NULL AND visible_chars({shape.taught}) >= $min_chars",
                       {"min_chars": repetition["min_chars"]}).fetchnumpy()
    texts = rows["taught"].tolist()
    copies, units = tandem_repeats(texts, repetition["max_unit_chars"], repetition["min_copies"])
    lengths = numpy.fromiter(map(len, texts), numpy.int64, len(texts))
    with numpy.errstate(divide="ignore", invalid="ignore"):
        share = numpy.where(lengths > 0, copies * units / numpy.maximum(lengths, 1), 0)
    flagged = numpy.flatnonzero((copies > 0) & (share >= repetition["min_share"]))
    details = [f"{repeated_unit(texts[index], int(units[index]), int(copies[index]))!r} repeated "
               f"{int(copies[index])} times in a row, covering {round(float(share[index]), 2)}" for index in flagged]
    con.register("repeated", pa.table({"pos": pa.array(rows["pos"][flagged], pa.int64()),
                                       "detail": pa.array(details, pa.string())}))
    con.execute("""UPDATE checked SET verdict = {'reason': 'repetitive', 'detail': taught_name || ': ' || r.detail}
                   FROM repeated r WHERE checked.pos = r.pos""")
    con.unregister("repeated")


# Row keys for the rows that passed every field check: what exact dedup compares and what the id hashes.
KEYS_SQL = """
CREATE TEMP TABLE keyed AS
SELECT c.*, l.source, l.file, l.line,
  CASE WHEN verdict IS NULL THEN fold_key(prompt_text) END AS prompt_key,
  CASE WHEN verdict IS NULL THEN concat_ws(chr(10), prompt_key, {response_keys}) END AS dedup_key,
  sha256(dedup_key) AS id,
  CASE WHEN verdict IS NULL THEN concat_ws(chr(10), fold_key(instruction_text), {response_keys}) END AS question_key,
  CASE WHEN verdict IS NULL THEN fold_key(context_text) END AS context_key
FROM checked c JOIN lines l USING (pos)
"""
# What a near-duplicate pair must be similar in (curate.near_dedup.key). instruction_response: the
# instruction with the response(s), and the context passage (an alpaca input) apart, so that a long
# passage shared by different questions does not make them near copies, and a short input that is
# the question itself still tells rows apart. prompt_response: the whole row as one text.
NEAR_PARTS = {"instruction_response": ("question_key", "context_key"), "prompt_response": ("dedup_key",)}

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
# broken row is kept and a duplicate of a contaminated row is reported as contaminated.
DEDUP_SQL = f"""
CREATE TEMP TABLE deduplicated AS
WITH matched AS (
  SELECT pos, list(task_id ORDER BY task_id) AS task_ids,
    string_agg('task_id ' || task_id || ' (overlap ' || round(overlap, 2) || ')', ', ' ORDER BY task_id) AS matches
  FROM contamination GROUP BY pos
), ranked AS (
  SELECT k.*, m.task_ids, m.matches,
    row_number() OVER copies AS copy_rank,
    first_value({REF}) OVER copies AS first_copy
  FROM keyed k LEFT JOIN matched m USING (pos)
  WINDOW copies AS (PARTITION BY k.verdict IS NULL AND m.pos IS NULL, k.dedup_key ORDER BY k.pos)
)
SELECT * EXCLUDE (verdict),
  CASE WHEN verdict IS NOT NULL THEN verdict
       WHEN task_ids IS NOT NULL THEN {{'reason': 'contaminated', 'detail': matches}}
       WHEN $dedup AND copy_rank > 1 THEN {{'reason': 'duplicate', 'detail': 'kept ' || first_copy}}
  END AS verdict
FROM ranked
"""

# MinHash LSH finds candidate pairs: each row's shingles are hashed once; `permutations` seeded hash
# functions of those hashes give the signature (one min aggregate each, computed in one pass); rows
# whose band of `rows` values agree become candidates. A candidate pair counts when the exact
# Jaccard similarity of its shingle sets reaches `threshold` (an estimate would lose true pairs
# near the threshold, and candidates are few).
SHINGLES_SQL = """
CREATE TEMP TABLE shingles AS
SELECT pos, unnest({grams}) AS shingle FROM deduplicated WHERE verdict IS NULL
"""
SIGNATURES_SQL = "CREATE TEMP TABLE signatures AS SELECT pos, [{minima}] AS signature FROM shingles GROUP BY pos"
LINKS_SQL = """
CREATE TEMP TABLE links AS
WITH bands AS (
  SELECT pos, band, hash(signature[band * {rows} + 1 : (band + 1) * {rows}]) AS bucket
  FROM signatures, range({bands}) AS b(band)
), candidates AS (
  SELECT DISTINCT x.pos AS a, y.pos AS b FROM bands x JOIN bands y ON x.band = y.band AND x.bucket = y.bucket
  WHERE x.pos < y.pos
), sets AS (
  SELECT pos, {sets} FROM deduplicated WHERE pos IN (SELECT a FROM candidates UNION SELECT b FROM candidates)
)
SELECT a, b, jaccard FROM (
  SELECT c.a, c.b, least({similarities}) AS jaccard
  FROM candidates c JOIN sets sa ON sa.pos = c.a JOIN sets sb ON sb.pos = c.b
) WHERE jaccard >= {threshold}
"""


def _similarity_sql(part: str) -> str:
    """SQL: the Jaccard similarity of a candidate pair's n-gram sets of one key part (sets `sa`, `sb`);
    a part too short to have n-grams on either side is similar only when equal (two empty contexts are)."""
    grams, key = f"{part}_grams", f"{part}"
    shared = f"len(list_intersect(sa.{grams}, sb.{grams}))"
    return (f"CASE WHEN len(sa.{grams}) = 0 OR len(sb.{grams}) = 0 THEN (sa.{key} = sb.{key})::DOUBLE "
            f"ELSE {shared} / (len(sa.{grams}) + len(sb.{grams}) - {shared}) END")


def _kept_against(links) -> tuple[list[int], list[int], list[float]]:
    """(dropped row, the kept row it copies, their Jaccard) from links (a < b, jaccard), in row order.
    A row goes only when it is close to a row that is *kept*: a row close only to a dropped row stays,
    so clusters do not chain. Each dropped row names its closest kept row (the earliest on a tie)."""
    order = numpy.lexsort((links["a"], -links["jaccard"], links["b"]))
    dropped: dict[int, tuple[int, float]] = {}
    for a, b, jaccard in zip(links["a"][order].tolist(), links["b"][order].tolist(),
                             links["jaccard"][order].tolist()):
        if b not in dropped and a not in dropped:  # rows before b are settled when b comes
            dropped[b] = (a, jaccard)
    rows = sorted(dropped)
    return rows, [dropped[row][0] for row in rows], [dropped[row][1] for row in rows]


# Mixing and the split: weights and caps per source, hashed on the row id with the seed.
MIX_SQL = f"""
CREATE TEMP TABLE classified AS
WITH near AS (
  SELECT c.pos, c.cluster, c.jaccard, k.ref AS kept_ref, c.pos <> c.label AS dropped
  FROM clusters c JOIN (SELECT pos, {REF} AS ref FROM deduplicated) k ON k.pos = c.label
), weighed AS (
  SELECT d.*, n.cluster, n.jaccard, n.kept_ref, coalesce(n.dropped, false) AS near_dropped,
    w.weight, w.max_rows, uniform(d.id, $seed, 'mix') AS mix_draw
  FROM deduplicated d LEFT JOIN near n USING (pos) JOIN weights w USING (source_rank)
), capped AS (
  SELECT *, CASE WHEN verdict IS NULL AND NOT near_dropped AND mix_draw < least(weight, 1)
                 THEN row_number() OVER (PARTITION BY source_rank, verdict IS NULL AND NOT near_dropped
                                         AND mix_draw < least(weight, 1) ORDER BY mix_draw, pos) END AS mix_rank
  FROM weighed
)
SELECT * EXCLUDE (verdict),
  CASE WHEN verdict IS NOT NULL THEN verdict
       WHEN near_dropped THEN {{'reason': 'near_duplicate',
                                'detail': 'kept ' || kept_ref || ' (cluster ' || cluster || ', Jaccard '
                                          || round(jaccard, 2) || ')'}}
       WHEN mix_draw >= weight THEN {{'reason': 'downsampled', 'detail': 'weight ' || weight}}
       WHEN mix_rank > max_rows THEN {{'reason': 'over_cap', 'detail': 'max_rows ' || max_rows}}
  END AS outcome,
  CASE WHEN uniform(id, $seed, 'split') < $validation_fraction THEN 'validation' ELSE 'train' END AS split,
  -- weight above 1: whole copies, plus one more with the fractional part as probability (train only)
  CASE WHEN split = 'validation' OR weight <= 1 THEN 1
       ELSE floor(weight)::INTEGER + (mix_draw < weight - floor(weight))::INTEGER END AS copies
FROM capped
"""

KEPT_SQL = """SELECT id, source, file, line, {columns}, split FROM classified, range(copies) AS c(copy)
WHERE outcome IS NULL ORDER BY pos, copy"""
QUARANTINE_SQL = """SELECT source, file, line, outcome.reason AS reason, outcome.detail AS detail, raw
FROM classified JOIN lines USING (pos, source, file, line) WHERE outcome IS NOT NULL ORDER BY pos"""
EXAMPLES_SQL = f"""SELECT outcome.reason, source, file, line, outcome.detail, left(raw, {EXAMPLE_CHARS}) FROM classified
JOIN lines USING (pos, source, file, line) WHERE outcome IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY outcome.reason ORDER BY uniform(pos, $seed, 'example')) <= $n ORDER BY pos"""
KEPT_EXAMPLES_SQL = """SELECT source, file, line, split, {columns} FROM classified WHERE outcome IS NULL
ORDER BY uniform(pos, $seed, 'example') LIMIT $n"""
CONTAMINATION_CARD_SQL = """SELECT d.source, d.file, d.line, c.task_id, round(c.overlap, 4) FROM contamination c
JOIN deduplicated d USING (pos) WHERE d.verdict.reason = 'contaminated' ORDER BY pos, task_id"""
CLUSTERS_CARD_SQL = """SELECT c.cluster, count(*) OVER (PARTITION BY c.cluster) AS size, d.source, d.file, d.line,
  c.pos = c.label AS kept, round(c.jaccard, 4) FROM clusters c JOIN deduplicated d USING (pos)
ORDER BY size DESC, c.cluster, c.pos"""


def _strict_json_problems(raws):
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


def check_settings(settings: dict, at: str = "curate") -> list[str]:
    """Problems of curate settings no schema can state, each starting with its key path (empty: fine):
    block patterns RE2 cannot compile (as DuckDB compiles them), and MinHash bands that do not divide
    the permutations. Reads no file, so the recipe validator can run it before any job."""
    settings = with_defaults(settings)
    problems = []
    with duckdb.connect() as con:
        for index, pattern in enumerate(settings["block_patterns"]):
            try:
                con.execute("SELECT regexp_matches('', $pattern)", {"pattern": pattern})
            except duckdb.Error as error:
                reason = str(error).removeprefix("Invalid Input Error: ")
                problems.append(f"{at}.block_patterns[{index}]: {pattern!r} is not an RE2 regular expression ({reason})")
    near = settings["near_dedup"]
    if near["permutations"] % near["bands"]:
        problems.append(f"{at}.near_dedup.permutations: {near['permutations']} is not a multiple of "
                        f"{at}.near_dedup.bands ({near['bands']})")
    return problems


def with_defaults(settings: dict) -> dict:
    """The curate settings with the schema's defaults filled (nested objects too), so that direct
    calls behave like recipes."""
    def fill(schema: dict, value: dict) -> dict:
        filled = dict(value)
        for name, prop in schema.get("properties", {}).items():
            if name not in filled:
                filled[name] = prop["default"]
            if prop.get("type") == "object" and isinstance(filled[name], dict):
                filled[name] = fill(prop, filled[name])
        return filled
    return fill(load_schema()["properties"]["curate"], settings)


def _resolved(sources: list[dict], role: str, list_files: bool) -> list[Source]:
    if role not in SHAPES:
        raise CurationError(f"role must be one of {sorted(SHAPES)}, got {role!r}")
    try:
        return resolve_sources(sources, role, list_files)
    except IngestError as error:
        raise CurationError(str(error)) from None


def _matched_ingests(chosen: list[Source], ingested: list[str]) -> tuple[list[str], dict[str, dict]]:
    """The ingested file of each source, in source order, checked against the recipe entry."""
    by_id = {}
    for path in ingested:
        try:
            described = ingested_source(path)
        except (IngestError, OSError) as error:
            raise CurationError(f"{path}: cannot read the ingested source: {error}") from None
        by_id[described["id"]] = (path, described)
    paths, described = [], {}
    for source in chosen:
        if source.id not in by_id:
            raise CurationError(f"{source.where}: no ingested file among {sorted(ingested)}")
        path, entry = by_id[source.id]
        read_as = {key: entry[key] for key in ("path", "format", "split")}
        if read_as != {"path": source.path, "format": source.format, "split": source.split}:
            raise CurationError(f"{source.where}: {path} was ingested from {read_as}; ingest the source again")
        paths.append(path)
        described[source.id] = entry
    return paths, described


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


def _near_duplicates(con, settings: dict, seed: int) -> None:
    """Fill `clusters` (pos, label, cluster, jaccard): each kept row with the rows dropped as its near
    copies (label: the kept row; jaccard 1 for the kept row itself); empty when the pass is off."""
    near = settings["near_dedup"]
    con.execute("CREATE TEMP TABLE clusters (pos BIGINT, label BIGINT, cluster BIGINT, jaccard DOUBLE)")
    if not near["enabled"]:
        return
    con.execute(SHINGLES_SQL.format(grams=_ngrams_sql("dedup_key", near["ngram"])))
    # hash(shingle XOR salt): DuckDB's several-argument hash() combines its arguments too weakly for
    # min-wise independence (estimates twice as noisy as they should be); a full hash of a salted value is not.
    salts = [int.from_bytes(hashlib.sha256(f"{seed}/minhash/{index}".encode()).digest()[:8], "big")
             for index in range(near["permutations"])]
    minima = ", ".join(f"min(hash(xor(shingle, {salt}::UBIGINT)))" for salt in salts)
    con.execute(SIGNATURES_SQL.format(minima=minima))
    con.execute("DROP TABLE shingles")
    parts = NEAR_PARTS[near["key"]]
    sets = ", ".join(f"{part}, list_distinct({_ngrams_sql(part, near['ngram'])}) AS {part}_grams" for part in parts)
    con.execute(LINKS_SQL.format(rows=near["permutations"] // near["bands"], bands=near["bands"],
                                 threshold=near["threshold"], sets=sets,
                                 similarities=", ".join(map(_similarity_sql, parts))))
    con.execute("DROP TABLE signatures")
    dropped, kept, jaccard = _kept_against(con.execute("SELECT a, b, jaccard FROM links").fetchnumpy())
    labels = sorted(set(kept))
    cluster = {label: index + 1 for index, label in enumerate(labels)}
    con.register("near_copies", pa.table({
        "pos": pa.array(labels + dropped, pa.int64()), "label": pa.array(labels + kept, pa.int64()),
        "cluster": pa.array([cluster[label] for label in labels + kept], pa.int64()),
        "jaccard": pa.array([1.0] * len(labels) + jaccard, pa.float64())}))
    con.execute("INSERT INTO clusters SELECT * FROM near_copies")
    con.unregister("near_copies")


def _reconciled_counts(con, chosen: list[Source], described: dict, kept: Path, quarantined: Path) -> dict:
    """Per-source counts read back from the written files; raise if any record went missing or doubled."""
    rows_in = dict(con.execute("SELECT source, count(*) FROM lines GROUP BY source").fetchall())
    found = {source.id: Counter() for source in chosen}
    written = {source.id: Counter() for source in chosen}
    for source, outcome, n in con.execute(
            f"SELECT source, 'kept', count(DISTINCT (file, line)) FROM read_parquet({_sql_path(kept)}) GROUP BY ALL "
            f"UNION ALL SELECT source, reason, count(*) FROM read_parquet({_sql_path(quarantined)}) GROUP BY ALL"
    ).fetchall():
        found[source][outcome] += n
    for source, split, n in con.execute(
            f"SELECT source, split, count(*) FROM read_parquet({_sql_path(kept)}) GROUP BY ALL").fetchall():
        written[source][split] += n
    counts = {}
    for source in chosen:
        outcomes, n_in = found[source.id], rows_in.get(source.id, 0)
        counts[source.id] = {"path": source.path, "format": source.format, "style": source.style,
                             "files": len(described[source.id]["files"]), "weight": source.weight,
                             "max_rows": source.max_rows, "rows_in": n_in, "kept": outcomes.pop("kept", 0),
                             "written": {split: written[source.id][split] for split in SPLITS},
                             "quarantined": {reason: outcomes[reason] for reason in REASONS if outcomes[reason]}}
        if n_in != counts[source.id]["kept"] + outcomes.total():
            raise CurationError(f"{source.where}: {n_in} rows in, but "
                                f"{counts[source.id]['kept']} kept + {outcomes.total()} quarantined")
    return counts


def _lengths(con, shape: Shape) -> dict:
    """Per text field of the kept rows: characters and estimated tokens, as numpy arrays (for the card)."""
    fields = [("prompt", "prompt_text")] + [(r if len(shape.responses) > 1 else "response", r)
                                            for r in shape.responses]
    selected = ", ".join(f"length({column}) AS {name}_chars, estimated_tokens({column}) AS {name}_tokens"
                         for name, column in fields)
    arrays = con.execute(f"SELECT {selected} FROM classified WHERE outcome IS NULL").fetchnumpy()
    return {name: {"chars": arrays[f"{name}_chars"], "tokens": arrays[f"{name}_tokens"]} for name, _ in fields}


def _summary(values) -> dict:
    if not len(values):
        return {"count": 0}
    quantiles = numpy.quantile(values, [0.5, 0.9, 0.99], method="lower")
    return {"count": int(len(values)), "min": int(values.min()), "p50": int(quantiles[0]), "p90": int(quantiles[1]),
            "p99": int(quantiles[2]), "max": int(values.max()), "mean": round(float(values.mean()), 2)}


def _clusters(con) -> tuple[int, list[dict]]:
    clusters: dict[int, dict] = {}
    for cluster, size, source, file, line, kept, jaccard in con.execute(CLUSTERS_CARD_SQL).fetchall():
        if cluster not in clusters and len(clusters) == CARD_CLUSTERS:
            continue
        entry = clusters.setdefault(cluster, {"cluster": cluster, "size": size, "kept": None, "members": []})
        row = {"source": source, "file": file, "line": line}
        if kept:
            entry["kept"] = row
        else:
            entry["members"].append({**row, "jaccard": jaccard})
    total = con.execute("SELECT count(DISTINCT cluster) FROM clusters").fetchone()[0]
    return total, list(clusters.values())


MIXING = ("downsampled", "over_cap")  # the recipe's choice, not a loss
TOP_REASONS = 3


def _check_kept(con, role: str, chosen: list[Source], counts: dict, min_share: float, several_files: list) -> None:
    """Fail when the role keeps nothing, or a source passes curation's checks for under `min_share`
    of its records (mixing aside): a mapping or convention mistake, not dirt. Names each source at
    fault with its top quarantine reasons and an example of each."""
    empty = sum(entry["kept"] for entry in counts.values()) == 0
    problems = []
    for source in chosen:
        entry = counts[source.id]
        passed = entry["kept"] + sum(entry["quarantined"].get(reason, 0) for reason in MIXING)
        share = passed / entry["rows_in"] if entry["rows_in"] else 0
        if not empty and (not entry["rows_in"] or share >= min_share):
            continue
        reasons = sorted(((n, reason) for reason, n in entry["quarantined"].items() if reason not in MIXING),
                         key=lambda item: (-item[0], REASONS.index(item[1])))[:TOP_REASONS]
        described = []
        for n, reason in reasons:
            file, line, detail = con.execute(
                "SELECT file, line, outcome.detail FROM classified WHERE source = $source AND outcome.reason = $reason "
                "ORDER BY pos LIMIT 1", {"source": source.id, "reason": reason}).fetchall()[0]
            where = f"{file}:{line}" if source.rank in several_files else f"line {line}"
            described.append(f"{reason} {n} (e.g. {where}" + (f": {detail})" if detail else ")"))
        below = "" if empty else f" ({round(share, 2)}, below curate.min_kept_share {min_share})"
        problems.append(f"{source.where}: kept {entry['kept']} of {entry['rows_in']} records{below}"
                        + ("; top quarantine reasons: " + ", ".join(described) if described else ""))
    if problems:
        headline = (f"curation of role '{role}' keeps no rows" if empty
                    else f"curation of role '{role}': a source keeps too little")
        raise CurationError(headline + ":\n  " + "\n  ".join(problems))


def curate(sources: list[dict], role: str, tasks_path: str, settings: dict, kept_path: str, quarantine_path: str,
           card_path: str, *, ingested: list[str] | None = None, seed: int = 0,
           card_markdown_path: str | None = None, lengths_plot_path: str | None = None, threads: int = 1) -> dict:
    """Curate the sources of one role; write kept rows, quarantined rows and a card. Returns the card.

    `ingested`: the Parquet files `tunesmith.ingest.ingest_source` wrote for these sources (the
    workflow's per-source cache); None ingests them here first, into a temporary folder. `seed` is the
    recipe seed (mixing, split, MinHash functions, examples). The Markdown card and the PNG of length
    histograms are written when their paths are given. `threads` only speeds up the SQL: the written
    files are the same for any number."""
    settings = with_defaults(settings)
    problems = check_settings(settings)
    if problems:
        raise CurationError("\n".join(problems))
    chosen = _resolved(sources, role, list_files=ingested is None)
    if ingested is None:
        with tempfile.TemporaryDirectory(prefix="tunesmith-ingest-") as folder:
            paths = [str(Path(folder) / f"{index}.parquet") for index in range(len(chosen))]
            try:
                for entry, path in zip([s for s in map(source_with_defaults, sources) if s["role"] == role], paths):
                    ingest_source(entry, path)
            except IngestError as error:
                raise CurationError(str(error)) from None
            return curate(sources, role, tasks_path, settings, kept_path, quarantine_path, card_path,
                          ingested=paths, seed=seed, card_markdown_path=card_markdown_path,
                          lengths_plot_path=lengths_plot_path, threads=threads)
    paths, described = _matched_ingests(chosen, ingested)
    tasks = read_tasks(tasks_path) if settings["decontaminate"] else []
    shape = SHAPES[role]
    task_inputs = pa.table({"task_id": pa.array([task.task_id for task in tasks], pa.int64()),
                            "input": pa.array([task.input for task in tasks], pa.string())})
    several_files = [source.rank for source in chosen if len(described[source.id]["files"]) > 1]

    with duckdb.connect(config={"threads": threads}) as con:
        con.create_function("normalize_text", normalize_arrow, ["VARCHAR"], "VARCHAR", type="arrow")
        con.create_function("fold_key", match_keys_arrow, ["VARCHAR"], "VARCHAR", type="arrow")
        con.create_function("strict_json_problem", _strict_json_problems, ["VARCHAR"], "VARCHAR", type="arrow",
                            null_handling="special")
        con.create_function("canonical", canonical_function(chosen), ["INTEGER", "VARCHAR"],
                            "STRUCT(record VARCHAR, labels VARCHAR, reason VARCHAR, detail VARCHAR)", type="arrow")
        con.execute(MACROS)
        con.register("task_inputs", task_inputs)
        con.register("weights", pa.table({"source_rank": [source.rank for source in chosen],
                                          "weight": pa.array([float(source.weight) for source in chosen], pa.float64()),
                                          "max_rows": pa.array([source.max_rows for source in chosen], pa.int64())}))
        ranks = ", ".join(f"({_quoted(source.id)}, {source.rank})" for source in chosen)
        con.execute(f"""CREATE TEMP TABLE lines AS
            SELECT row_number() OVER (ORDER BY r.source_rank, i.file, i.line) AS pos, r.source_rank, i.*
            FROM read_parquet([{", ".join(map(_sql_path, paths))}]) i
            JOIN (VALUES {ranks}) AS r(source, source_rank) USING (source)""")
        # A blank task input would match everything.
        con.execute("CREATE TEMP TABLE tasks AS SELECT task_id, fold_key(normalize_text(input)) AS task_key "
                    "FROM task_inputs WHERE task_key <> ''")
        con.execute(FRAME_SQL)
        _check_columns(con, chosen)
        con.execute(STYLE_SQL.format(mapped=[source.rank for source in chosen if source.mapped]))
        con.execute(_check_sql(shape, settings))
        _judge_repetition(con, shape, settings["repetition"])
        response_keys = ", ".join(f"fold_key({r})" for r in shape.responses)
        con.execute(KEYS_SQL.format(response_keys=response_keys))
        con.execute("DROP TABLE checked")  # keyed has all of it: hold one copy of the texts, not two
        decontamination = settings["decontamination"]
        n = decontamination["ngram"]
        keys = ["prompt_key"] + [f"fold_key({r})" for r in shape.responses]
        contamination_sql = CONTAMINATION_SQL if tasks else "CREATE TEMP TABLE contamination AS {empty}"
        con.execute(contamination_sql.format(empty="SELECT 0::BIGINT AS pos, 0::BIGINT AS task_id, 0.0 AS overlap LIMIT 0",
            n=n, threshold=decontamination["threshold"], task_grams=_ngrams_sql("task_key", n), texts=", ".join(keys),
            row_grams="flatten([" + ", ".join(_ngrams_sql(key, n) for key in keys) + "])"))
        con.execute(DEDUP_SQL, {"dedup": bool(settings["dedup"]), "several_files": several_files})
        con.execute("DROP TABLE keyed")
        _near_duplicates(con, settings, seed)
        con.execute(MIX_SQL, {"several_files": several_files, "seed": seed,
                              "validation_fraction": settings["validation_fraction"]})
        con.execute("SET threads = 1")  # Parquet bytes (row groups, page order) must not depend on scheduling

        with atomic_path(kept_path) as kept, atomic_path(quarantine_path) as quarantined:
            con.execute(f"COPY ({KEPT_SQL.format(columns=shape.kept_columns)}) TO {_sql_path(kept)} (FORMAT parquet)")
            con.execute(f"COPY ({QUARANTINE_SQL}) TO {_sql_path(quarantined)} (FORMAT parquet)")
            counts = _reconciled_counts(con, chosen, described, kept, quarantined)
            _check_kept(con, role, chosen, counts, settings["min_kept_share"], several_files)
            card = _card(con, role, shape, counts, seed)
            lengths = _lengths(con, shape)
            card["lengths"] = {field: {measure: _summary(values) for measure, values in measures.items()}
                               for field, measures in lengths.items()}
            write_json(card_path, card)
            if card_markdown_path or lengths_plot_path:
                from tunesmith.card import plot_lengths, write_markdown  # matplotlib only when asked for

                if lengths_plot_path:
                    plot_lengths(lengths, role, lengths_plot_path)
                if card_markdown_path:
                    write_markdown(card, card_markdown_path,
                                   Path(lengths_plot_path).name if lengths_plot_path else None)
    return card


def _card(con, role: str, shape: Shape, counts: dict, seed: int) -> dict:
    examples: dict[str, list[dict]] = {reason: [] for reason in REASONS}
    for reason, source, file, line, detail, raw in con.execute(EXAMPLES_SQL, {"n": EXAMPLES_PER_REASON,
                                                                               "seed": seed}).fetchall():
        examples[reason].append({"source": source, "file": file, "line": line, "detail": detail, "raw": raw})
    kept_columns = [column.split(" AS ")[-1] for column in shape.kept_columns.split(", ")]
    kept_examples = [dict(zip(["source", "file", "line", "split", *kept_columns], row)) for row in con.execute(
        KEPT_EXAMPLES_SQL.format(columns=shape.kept_columns), {"n": KEPT_EXAMPLES, "seed": seed}).fetchall()]
    totals = sum((Counter(entry["quarantined"]) for entry in counts.values()), Counter())
    cluster_count, clusters = _clusters(con)
    return {
        "role": role,
        "sources": counts,
        "totals": {"rows_in": sum(entry["rows_in"] for entry in counts.values()),
                   "kept": sum(entry["kept"] for entry in counts.values()),
                   "written": {split: sum(entry["written"][split] for entry in counts.values()) for split in SPLITS},
                   "quarantined": {reason: totals[reason] for reason in REASONS if totals[reason]}},
        "contamination": [{"source": source, "file": file, "line": line, "task_id": task_id, "overlap": overlap}
                          for source, file, line, task_id, overlap in con.execute(CONTAMINATION_CARD_SQL).fetchall()],
        "near_duplicate_clusters": {"count": cluster_count, "listed": clusters},
        "examples": {reason: rows for reason, rows in examples.items() if rows},
        "kept_examples": kept_examples,
    }
