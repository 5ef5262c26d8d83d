"""Field checks: each record's canonical fields cleaned, normalised and measured in batches with Arrow
kernels (`texts`, one batch at a time), then one SQL CASE giving each row its first failing field reason
(`check_sql`, a SELECT over such a batch: each batch's rows are checked as they are written).

A field is kept as it will be trained: cleaned of noise only (tunesmith.data.normalize.clean_text), or
normalised when `curate.normalize_training_text` asks for it. Its lengths (characters, tokens) are
the trained text's; its match key, Japanese share and repetition come from the normalised text, so
width variants and spacing do not hide a copy, a task input or a repetition.
Cleaning, normalising and measuring happen once per field, over whole columns (tunesmith.data.normalize,
tunesmith.data.measures), not as per-row functions called from SQL, so the SQL that follows is native.
The prompt's measures are sums of its parts' (the instruction and an alpaca input).
"""

from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tunesmith.data.measures import REPETITION_KEYS, SPACES_RE2, measure_slices
from tunesmith.data.normalize import clean_arrow, match_keys_arrow, matching, normalize_arrow, plain_rows
from tunesmith.jobs.progress import Progress

TEXT_BATCH_ROWS = 262_144  # rows normalised at a time: bounds the Python side's memory
MEASURES = ("chars", "japanese", "units", "visible")


@dataclass(frozen=True)
class Shape:
    """What one role's records look like, and how they become a prompt and responses (SQL)."""
    required: tuple[str, ...]
    optional: tuple[str, ...]
    prompt: str
    prompt_parts: tuple[str, ...]  # the fields the prompt joins, by a line break when the second is not empty
    responses: tuple[str, ...]
    taught: str  # the answer the model learns to give: what quality filters judge
    instruction: str  # the prompt without its context (an alpaca input) ...
    context: str  # ... and the context: near duplicates are compared on each apart
    kept_columns: str
    identical: str  # a pair whose answers are the same once normalised teaches a preference nothing


SHAPES = {
    "sft": Shape(("instruction", "output"), ("input",),
                 "CASE WHEN coalesce(input, '') = '' THEN instruction ELSE instruction || chr(10) || input END",
                 ("instruction", "input"), ("output",), "output", "instruction", "input",
                 "prompt_text AS prompt, output AS response", "false"),
    "preference": Shape(("prompt", "chosen", "rejected"), (), "prompt", ("prompt",), ("chosen", "rejected"), "chosen",
                        "prompt", None, "prompt_text AS prompt, chosen, rejected", "responses_identical"),
}


def normalise_texts(con, shape: Shape, repetition: dict, tokenizer=None, normalize_training_text: bool = False,
                    threads: int = 1, *, table: str, select: str) -> None:
    """Table `table`: `select` over each batch of `texts`, which holds per row of `typed` its columns but
    the texts as read (`{field}_unusual` keeps those holding a control or replacement character), each field
    as it will be trained (cleaned; normalised when `normalize_training_text`), its measures, its match key,
    and for the taught answer the repetition found (`{taught}_repeated`: the quarantine detail, or NULL).
    With a `tokenizer`, each field's token count too (`{field}_ntokens`, special tokens left out). Only
    `table` is held in DuckDB, not `texts`. Batches are computed on `threads` worker threads (Arrow's kernels
    and numpy release the GIL), read from and written to DuckDB by this one, in pos order; a row's columns
    depend on its own texts alone. When `select` keeps the rows' order (one table, no join, aggregate or
    window), `table` holds the same rows in pos order for any number of threads, and a scan of it reads
    them in that order."""
    fields = shape.required + shape.optional
    first, last = con.execute("SELECT coalesce(min(pos), 1), coalesce(max(pos), 0) FROM typed").fetchall()[0]
    starts = list(range(first, max(last, first) + 1, TEXT_BATCH_ROWS))  # an empty table still makes `table`

    def read(start: int) -> pa.Table:  # in pos order, which typed keeps but after its joins with not_text
        batch = con.sql(f"SELECT * FROM typed WHERE pos BETWEEN {start} AND {start + TEXT_BATCH_ROWS - 1}").to_arrow_table()
        return batch if pc.all(pc.less(batch["pos"][:-1], batch["pos"][1:])).as_py() else batch.sort_by("pos")

    def computed(batch: pa.Table) -> dict:
        raws = {f"{field}_raw" for field in fields}  # texts carries the rest of typed, which can then go
        columns, normalised_responses = {name: batch[name] for name in batch.column_names if name not in raws}, []
        for field in fields:
            # Every step is a function of the text alone, so each distinct text of the batch is done
            # once and the results are taken back to the rows (an empty input, a repeated instruction).
            values, indices = _distinct(batch[f"{field}_raw"], distinct_shares, field)
            field_columns, normalised = _field_columns(field, values, shape, repetition, normalize_training_text)
            if indices is not None:
                field_columns = {name: pc.take(column, indices) for name, column in field_columns.items()}
                normalised = pc.take(normalised, indices)
            columns |= field_columns
            if field in shape.responses:
                normalised_responses.append(normalised)
        if len(normalised_responses) == 2:  # chosen and rejected: the same answer but for width or spacing
            columns["responses_identical"] = pc.equal(*normalised_responses)
        return columns

    def written(columns: dict) -> None:
        for field in fields if tokenizer is not None else ():  # in this thread: a tokenizer is not shared
            columns[f"{field}_ntokens"] = _token_counts(tokenizer, columns[field])
        con.register("texts", texts := pa.table(columns))
        con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} AS {select} LIMIT 0; INSERT INTO {table} {select}")
        con.unregister("texts")
        checked.update(checked.done + texts.num_rows)

    distinct_shares = {}  # field -> (its texts' distinct share in the batch last measured, batches since): _distinct
    pending = deque()  # `threads` batches in work, one being written
    checked = Progress("curation", last - first + 1, "records checked", every=sys.maxsize)  # a line each 30 s
    with _churning_pool(), ThreadPoolExecutor(max(1, threads), thread_name_prefix="normalise") as pool:
        for start in starts:
            pending.append(pool.submit(computed, read(start)))
            if len(pending) >= max(1, threads):
                written(pending.popleft().result())
        while pending:
            written(pending.popleft().result())


def _token_counts(tokenizer, texts) -> pa.Array:
    """Tokens in each text (special tokens left out; nulls stay null), each distinct text of the batch once.
    A fast tokenizer's own batch encoder gives the lengths without Python lists of ids (at 262,144 answers:
    1.9 s against 5.4, 0.3 s against 3.5 for repeated instructions; bench/README.md)."""
    values, indices = _distinct(texts)
    distinct = pc.fill_null(values, "").to_pylist()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if distinct and hasattr(backend, "encode_batch_fast"):
        lengths = [len(encoding) for encoding in backend.encode_batch_fast(distinct, add_special_tokens=False)]
    else:
        lengths = [len(ids) for ids in tokenizer(distinct, add_special_tokens=False)["input_ids"]] if distinct else []
    counts = pa.array(lengths, pa.int64(), mask=pc.is_null(values).to_numpy(zero_copy_only=False))
    return counts if indices is None else pc.take(counts, indices)


@contextmanager
def _churning_pool():
    """Arrow's jemalloc pool while batches are computed, where Arrow has one (Linux and macOS wheels). The
    kernels allocate and free column-sized buffers many times a batch; pyarrow's default pool (mimalloc)
    hands them back to the system and faults them in again: on the 1M-row bench corpus that was 5 s of
    system time against 1.4 s with jemalloc, and half the wall time of this step (bench/README.md).
    Buffers remember their pool, so arrays made here stay valid after the default is restored."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc: its default pool
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
        pool.release_unused()  # the step is done: its cached pages back to the system (50–90 MiB at 1M rows)


# Below this share of distinct texts in a batch, computing per distinct text and taking the results
# back beats computing per row (the take copies every column once).
DISTINCT_SHARE = 0.8
# A field whose texts were mostly distinct in the last batch measured is taken as such for this many batches
# more before it is measured again: finding the distinct texts of a batch of mostly distinct answers costs as
# much as a sixth of computing them (90 ms a 262,144-row batch of the bench corpus's answers), for nothing.
REMEASURE_AFTER = 3


def _distinct(raw, shares: dict | None = None, field: str | None = None) -> tuple:
    """(the texts to compute on, the row -> text indices to take results back with, or None when
    the texts are the rows themselves). A null row has a null index, so its results are null.
    `shares` remembers per `field` its last measured share of distinct texts: a field found mostly distinct
    is computed per row for the next REMEASURE_AFTER batches without looking. Either way every row gets
    the same results; only the time differs (a guess left stale by a change in the texts costs time)."""
    raw = raw.combine_chunks() if isinstance(raw, pa.ChunkedArray) else raw
    if shares is not None:
        share, since = shares.get(field, (0.0, 0))
        if share > DISTINCT_SHARE and since < REMEASURE_AFTER:
            shares[field] = (share, since + 1)
            return raw, None
    encoded = pc.dictionary_encode(raw)
    if shares is not None:
        shares[field] = (len(encoded.dictionary) / max(len(raw), 1), 0)
    if len(encoded.dictionary) > DISTINCT_SHARE * len(raw):
        return raw, None
    return encoded.dictionary, encoded.indices


def _field_columns(field: str, text, shape: Shape, repetition: dict, normalize_training_text: bool) -> tuple:
    """One field's columns of `texts` for the strings of `text` (the trained text, its measures and
    match key, for the taught answer the repetition found, and `{field}_unusual`), and its normalised form."""
    # Most texts are plain (plain_rows): the searches for noise and odd characters skip them (5 RE2 passes of 7).
    plain = plain_rows(text)
    normalised = normalize_arrow(text, plain)
    trained = normalised if normalize_training_text else clean_arrow(text, plain)
    # The text as read goes on only where it holds a character that never trains (one RE2 pass here;
    # DuckDB's took 0.26 s a 262k batch): the SQL describes those few rows alone (_character_details).
    unusual = matching(text, UNUSUAL_CHARACTERS, plain)
    columns = {field: trained, f"{field}_unusual": pc.if_else(unusual, text, pa.scalar(None, pa.string()))}
    taught = field == shape.taught
    measures = measure_slices(normalised, {name: repetition[name] for name in REPETITION_KEYS} if taught else None)
    if not normalize_training_text:  # lengths are the trained text's
        chars = pc.utf8_length(trained).cast(pa.int64())
        spaces = pc.count_substring_regex(trained, SPACES_RE2).cast(pa.int64())
        measures |= {"chars": chars, "visible": pc.subtract(chars, spaces)}
    columns |= {f"{field}_{name}": measures[name] for name in MEASURES}
    columns[f"{field}_key"] = match_keys_arrow(normalised, plain)
    if taught:
        columns[f"{field}_repeated"] = measures["repeated"]
    return columns, normalised


def _rule(reason: str, parts: list[tuple[str, str]]) -> str:
    """SQL: a CASE branch quarantining for `reason` the rows where a part's condition holds, its detail the
    parts' details where theirs hold, comma-separated. The conditions are tested first as booleans: the
    details are built for the few rows a rule quarantines, not for every row."""
    guard = " OR ".join(f"({condition})" for condition, _ in parts)
    detail = ", ".join(f"CASE WHEN {condition} THEN {detail} END" for condition, detail in parts)
    return f"WHEN {guard} THEN {{'reason': '{reason}', 'detail': concat_ws(', ', {detail})}}"


def sql_string(text: str) -> str:
    """The text as a SQL string literal (a view holds no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _prompt_measures(shape: Shape) -> str:
    """SQL: the prompt's measures from its parts' (a joining line break is one more character)."""
    head, *rest = shape.prompt_parts
    parts = []
    for name in MEASURES:
        total = f"{head}_{name}"
        for part in rest:
            total += f" + CASE WHEN coalesce({part}, '') = '' THEN 0 ELSE {part}_{name}{' + 1' if name == 'chars' else ''} END"
        parts.append(f"{total} AS prompt_text_{name}")
    return ", ".join(parts)


# Characters that never train, checked on each field as read (before any normalisation); tab, line
# feed and carriage return are text. C0 and C1 controls (NUL, BEL, ESC of ANSI escape sequences, DEL)
# and the bidirectional embeddings, overrides and isolates (U+202E makes code or text read
# differently than it is: "trojan source") quarantine the row as control_characters; U+FFFD, what a
# decoder writes for bytes it could not read, as replacement_character. The detail names the field,
# the first such character, where it is and how many there are.
CONTROL_CHARACTERS = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\x{202A}-\x{202E}\x{2066}-\x{2069}]"
UNUSUAL_CHARACTERS = CONTROL_CHARACTERS[:-1] + r"\x{FFFD}]"  # control or replacement
CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x0B: "VT", 0x0C: "FF", 0x1B: "ESC", 0x7F: "DEL",
                 0x85: "NEL", 0x202A: "LRE", 0x202B: "RLE", 0x202C: "PDF", 0x202D: "LRO",
                 0x202E: "RLO, right-to-left override", 0x2066: "LRI", 0x2067: "RLI", 0x2068: "FSI", 0x2069: "PDI"}


def _character_details(field: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """SQL (condition, detail) of the control_characters and of the replacement_character rule for one
    field, from its text as read where it holds such a character (`{field}_unusual`, normalise_texts)."""
    raw, name, pattern = f"{field}_unusual", f"{field}_name", sql_string(CONTROL_CHARACTERS)
    first = f"regexp_extract({raw}, {pattern})"
    names = " ".join(f"WHEN {point} THEN ' {label}'" for point, label in CONTROL_NAMES.items())
    ansi = f"CASE WHEN regexp_matches({raw}, '\\x1B\\[') THEN ' (an ANSI escape sequence)' ELSE '' END"
    control = (f"{name} || ': ' || printf('U+%04X', unicode({first})) "
               f"|| CASE unicode({first}) {names} ELSE '' END "
               f"|| CASE WHEN unicode({first}) = 27 THEN {ansi} ELSE '' END "
               f"|| ' at character ' || strpos({raw}, {first}) || ', ' || len(regexp_extract_all({raw}, {pattern})) "
               f"|| ' in all'")
    replacement = (f"{name} || ': U+FFFD at character ' || strpos({raw}, chr(65533)) || ', ' "
                   f"|| (len({raw}) - len(replace({raw}, chr(65533), ''))) || ' in all'")
    return ((f"{raw} IS NOT NULL AND regexp_matches({raw}, {pattern})", control),
            (f"{raw} IS NOT NULL AND strpos({raw}, chr(65533)) > 0", replacement))


def check_sql(shape: Shape, settings: dict, counted: bool = False) -> str:
    """SELECT over `texts` (see normalise_texts): field-level reasons as one CASE yielding {reason,
    detail} (NULL: passed) as `verdict`, with the texts and keys later steps read.
    `counted`: tokens come from the tokenizer's counts (`normalise_texts`), not the estimate; a
    prompt's are the sum of its parts'."""
    fields = shape.required + shape.optional
    texts = [("prompt_text", "'prompt'")] + [(r, f"{r}_name") for r in shape.responses]
    taught = [("prompt_text", "'prompt'"), (shape.taught, f"{shape.taught}_name")]
    tokens, japanese = settings["tokens"], settings["japanese"]

    # An explicit null counts as missing: it carries no text, exactly like an absent key.
    missing = [(f"{f}_type IS NULL OR {f}_type = 'NULL'",
                f"CASE WHEN {f}_type IS NULL THEN {f}_name ELSE {f}_name || '=null' END") for f in shape.required]
    wrong = [(f"{f}_type NOT IN ('VARCHAR', 'NULL')", f"{f}_name || ': ' || lower({f}_type)") for f in fields]
    empty = [(f"{f} = ''", f"{f}_name") for f in shape.required]
    details = [_character_details(f) for f in fields]

    def limits(measure: str, compare: str, prompt_bound, response_bound, unit: str = "") -> list:
        """Fields beyond a bound; a minimum of 1 character or 0 tokens, or a null maximum, checks nothing."""
        parts = []
        for text, name in texts:
            bound = prompt_bound if text == "prompt_text" else response_bound
            if bound is None or (compare == "<" and bound <= (1 if measure == "chars" else 0)):
                continue
            parts.append((f"{text}_{measure} {compare} {bound}", f"{name} || ' ' || {text}_{measure}{unit}"))
        return parts

    judged_script = {"prompt": taught[:1], "response": taught[1:], "both": taught}[japanese["fields"]]
    share = "({text}_japanese / nullif({text}_units, 0))"
    not_japanese = [(f"{share.format(text=text)} < {japanese['min_share']}",
                     f"{name} || ' ' || round({share.format(text=text)}, 2)")
                    for text, name in judged_script] if japanese["min_share"] > 0 else []
    blocked = [(f"regexp_matches({text}, {sql_string(pattern)})",
                f"{name} || ' matches ' || {sql_string(sql_string(pattern))}")
               for pattern in settings["block_patterns"] for text, name in taught]
    repetitive = [(f"{shape.taught}_repeated IS NOT NULL", f"{shape.taught}_name || ': ' || {shape.taught}_repeated")]
    rules = [("missing_field", missing), ("wrong_type", wrong), ("empty_field", empty),
             ("control_characters", [control for control, _ in details]),
             ("replacement_character", [replacement for _, replacement in details]),
             ("too_short", limits("chars", "<", settings["min_prompt_chars"], settings["min_response_chars"])),
             ("too_long", limits("chars", ">", settings["max_prompt_chars"], settings["max_response_chars"])),
             ("too_few_tokens", limits("tokens", "<", tokens["min_prompt"], tokens["min_response"], " || ' tokens'")),
             ("too_many_tokens", limits("tokens", ">", tokens["max_prompt"], tokens["max_response"], " || ' tokens'"))]
    late = [("not_japanese", not_japanese), ("blocked", blocked), ("repetitive", repetitive)]
    cases = "\n       ".join(_rule(reason, parts) for reason, parts in rules if parts)
    late = "\n       ".join(_rule(reason, parts) for reason, parts in late if parts)
    measured = [text for text, _ in texts[1:]] + ["prompt_text"]
    if counted:
        head, *rest = shape.prompt_parts
        prompt_tokens = f"{head}_ntokens" + "".join(
            f" + CASE WHEN coalesce({part}, '') = '' THEN 0 ELSE {part}_ntokens END" for part in rest)
        tokens_sql = ", ".join([f"{text}_ntokens AS {text}_tokens" for text in measured[:-1]]
                               + [f"{prompt_tokens} AS prompt_text_tokens"])
    else:
        tokens_sql = ", ".join(f"{text}_japanese + ceil(({text}_visible - {text}_japanese) / 4)::BIGINT "
                               f"AS {text}_tokens" for text in measured)
    context_key = f"coalesce({shape.context}_key, '')" if shape.context else "''"
    prompt_key = " || ".join(f"coalesce({part}_key, '')" for part in shape.prompt_parts)
    return f"""
WITH measured AS (
  SELECT *, {shape.prompt} AS prompt_text, {_prompt_measures(shape)} FROM texts
), structural AS (
  SELECT *, {tokens_sql} FROM measured
)
SELECT pos, source_rank, source, file, line, prompt_text,
  {", ".join(shape.responses)}, {", ".join(f"{text}_chars, {text}_tokens" for text in measured)},
  {prompt_key} AS prompt_key_all, {shape.instruction}_key AS instruction_key_all, {context_key} AS context_key_all,
  {", ".join(f"{r}_key" for r in shape.responses)},
  CASE WHEN early_reason IS NOT NULL THEN {{'reason': early_reason, 'detail': early_detail}}
     {cases}
     WHEN {shape.identical} THEN {{'reason': 'chosen_equals_rejected', 'detail': NULL}}
     {late}
  END AS verdict
FROM structural
"""
