"""Curation's reading of each record's canonical fields: SQL reads a record's fields where they are when
it can (`sql_readings`), else converts a conversation to canonical JSON itself (`sql_conversion`); the other
records become canonical JSON in Python (`canonical_function`, over Arrow batches; `styled`), and `typed`
gives every field's JSON type, text as read and name as the record has it, a text batch at a time
(tunesmith.data.curate_checks.normalise_texts).

SQL reads a renamed column (text_output, a mapped alpaca or preference column), the two contents of a
conversation of one user turn and the answer, and a pair in TRL's conversational form (a user turn, each
answer one assistant turn) where they are (`sql_readings`), and renders the prompt of any other conversation
or chat-form pair that the style's conversion takes (system turns, earlier exchanges, ShareGPT's keys, answers
given as whole conversations: `sql_conversion`). Each gives what the style's conversion gives
(tests/test_curate.py compares them): the conversion is a Python call per record, and on the bench's million
rows made curation 2-6x slower than for the same records as alpaca (bench/curate.py --style). Python converts
what SQL does not take: every record it refuses (it says why), and pairwise judgments.
"""

from __future__ import annotations

import json
import re
import sys

import pyarrow as pa

from tunesmith.data.curate_checks import Shape, sql_string
from tunesmith.data.sources import Source
from tunesmith.data.styles import ROLES, STYLES, TURN_LABELS, Rejected, json_object

# Records that no `sql_readings` reading takes become canonical JSON (or a reason) in Python; the rest are read
# as they are (`typed`), `reading` saying which of their source's readings takes them (each condition is tested
# once, in the one CASE that also calls Python for the rest). `labels` name where each canonical field came
# from, for the details of later checks.
STYLE_SQL = """
CREATE TEMP VIEW styled AS
WITH conversions AS (
  SELECT *, CASE WHEN line_reason IS NULL THEN {conversion} END AS conversion FROM framed
)
SELECT * EXCLUDE (conversion),
  conversion.reading AS reading,
  CASE WHEN conversion.reading IS NULL THEN conversion.record ELSE raw END AS record,
  conversion.labels AS labels,
  CASE WHEN line_reason IS NOT NULL THEN line_reason ELSE conversion.reason END AS early_reason,
  CASE WHEN line_reason IS NOT NULL THEN line_detail ELSE conversion.detail END AS early_detail
FROM conversions
"""
CONVERTED = "struct_insert(canonical(source_rank, json(raw)), reading := NULL::INTEGER)"


def sql_readings(source: Source) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """How SQL reads `source`'s records in place, the first that fits taking a record: (which records: an SQL
    condition on `raw`, a valid JSON object; {canonical field: JSON pointer}; {canonical field: its name in
    details} where not the field's own). What `Style.convert` makes of such a record is those values; a record
    no reading takes is converted by `sql_conversion` where that takes it, else in Python."""
    style = STYLES[source.style]
    if source.style == "messages":  # one user turn and the answer: the two contents are the fields
        column = source.columns.get("messages", "messages")
        pointer = json_pointer(column)
        return [(_conversations([(pointer, ("user", "assistant"))]),
                 {"instruction": f"{pointer}/0/content", "output": f"{pointer}/1/content"},
                 {"instruction": f"{column}[:1]", "output": f"{column}[1].content"})]
    if style.renamed is None:
        return []
    columns = {field: source.columns.get(ours, ours) for field, ours in style.renamed.items()}
    pointers = {field: json_pointer(column) for field, column in columns.items()}
    listed = ", ".join(map(sql_string, pointers.values()))
    renamed = (f"NOT list_contains(json_type(raw, [{listed}]), 'ARRAY')" if style.lists_converted else "true", pointers,
               {field: column for field, column in columns.items() if column != field})
    if source.style != "preference":
        return [renamed]
    # TRL's conversational form: the prompt one user turn, each answer one assistant turn.
    chat = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    return [renamed, (_conversations([(pointers[field], (role,)) for field, role in chat.items()]),
                      {field: f"{pointers[field]}/0/content" for field in chat},
                      {"prompt": columns["prompt"], "chosen": f"{columns['chosen']}[-1].content",
                       "rejected": f"{columns['rejected']}[-1].content"})]


ROLE_NAMES = {role: "(" + ", ".join(sql_string(name) for name, mapped in ROLES.items() if mapped == role) + ")"
              for role in set(ROLES.values())}


def _conversations(conversations: list[tuple[str, tuple[str, ...]]]) -> str:
    """SQL: whether each conversation (its JSON pointer, the roles of its turns) is exactly those turns, each
    an object of string role and content repeating no key, its role ASCII (lower-cased alike by DuckDB and
    Python) and one that `styles.ROLES` maps to the role given. One parse of the record for all of them."""
    def turn(text: str, role: str) -> str:
        said = f"json_extract_string({text}, '$.role')"
        return (f"json_type({text}, ['$.role', '$.content']) = ['VARCHAR', 'VARCHAR'] "
                f"AND lower({said}) IN {ROLE_NAMES[role]} AND strlen({said}) = length({said}) "
                f"AND len(json_keys({text})) = len(list_distinct(json_keys({text})))")
    paths, tests = [], []
    for pointer, roles in conversations:  # the array, its turns, and no turn after them
        at = len(paths) + 1
        paths += [pointer] + [f"{pointer}/{index}" for index in range(len(roles) + 1)]
        tests += [f"starts_with(m[{at}], '[')", f"m[{at + len(roles) + 1}] IS NULL"]
        tests += [turn(f"m[{at + 1 + index}]", role) for index, role in enumerate(roles)]
    extracted = f"json_extract(raw, [{', '.join(map(sql_string, paths))}])"
    return f"coalesce({_let(extracted, 'm', ' AND '.join(tests))}, false)"


def _let(value: str, name: str, body: str) -> str:
    """SQL: `body` with `name` bound to `value`, computed once per row (the lambda of a one-element list)."""
    return f"list_transform([{value}], lambda {name}: {body})[1]"


def _turn(turn: str) -> str:
    """SQL: a conversation turn (JSON) as {role, content}, its role the one `styles.ROLES` maps it to, or NULL
    where `styles._turns` would refuse it or the role is not ASCII (lower-cased alike by DuckDB and Python): the
    turn is an object repeating no key whose role and content are strings (ShareGPT's from and value where it
    has neither role nor content, as `_turns` reads it). One parse of the turn for the values, one for types, one
    for keys; scalar comparisons rather than lists' (a third of the time)."""
    paths = "['$.role', '$.content', '$.from', '$.value']"
    mapped = " ".join(f"WHEN {sql_string(name)} THEN {sql_string(role)}" for name, role in ROLES.items())
    names = "(" + ", ".join(map(sql_string, ROLES)) + ")"
    shared = "(q.types[1] IS NULL AND q.types[2] IS NULL)"  # ShareGPT's keys
    said = f"(CASE WHEN {shared} THEN q.strings[3] ELSE q.strings[1] END)"
    strings = (f"(CASE WHEN {shared} THEN q.types[3] = 'VARCHAR' AND q.types[4] = 'VARCHAR' "
               f"ELSE q.types[1] = 'VARCHAR' AND q.types[2] = 'VARCHAR' END)")
    # A turn of two keys holding both strings repeats neither; list_distinct only for the others
    unrepeated = "(len(q.keys) = 2 OR len(q.keys) = len(list_distinct(q.keys)))"
    return _let(f"{{'types': json_type({turn}, {paths}), 'strings': json_extract_string({turn}, {paths}), "
                f"'keys': json_keys({turn})}}", "q",
                f"CASE WHEN {strings} AND {unrepeated} AND strlen({said}) = length({said}) AND lower({said}) IN {names} "
                f"THEN {{'role': CASE lower({said}) {mapped} END, "
                f"'content': CASE WHEN {shared} THEN q.strings[4] ELSE q.strings[2] END}} END")


def _rendered(turns: str) -> str:
    """SQL: the prompt `styles.render_turns` writes for a list of {role, content} (a user turn among them), a name
    bound once (`_let`): the list is read three times."""
    labelled = " ".join(f"WHEN {sql_string(role)} THEN {sql_string(label + ': ')}" for role, label in TURN_LABELS.items())
    dialogue = f"list_filter({turns}, lambda t: t.role <> 'system')"
    body = _let(dialogue, "d", f"CASE WHEN len(d) = 1 THEN d[1].content ELSE array_to_string(list_transform(d, "
                               f"lambda t: CASE t.role {labelled} END || t.content), chr(10) || chr(10)) END")
    system = f"list_transform(list_filter({turns}, lambda t: t.role = 'system' AND t.content <> ''), lambda t: t.content)"
    return f"array_to_string(list_append({system}, {body}), chr(10) || chr(10))"


def _turns(pointer: str) -> str:
    """SQL: the turns (`_turn`) of the JSON array at `pointer` in `raw`."""
    return f"list_transform(from_json(json_extract(raw, {pointer}), '[\"JSON\"]'), lambda turn: {_turn('turn')})"


def _read(turns: str) -> str:
    """SQL: whether `_turn` read every turn of a list (none NULL; an empty list too). A NULL list is true here: the
    conditions that read its turns fail it."""
    return f"coalesce(list_bool_and(list_transform({turns}, lambda t: t IS NOT NULL)), true)"


def _answered(turns: str) -> str:
    """SQL: whether a list of turns ends with the assistant's (`styles._answer`)."""
    return f"{turns}[len({turns})].role = 'assistant'"


def _asked(turns: str) -> str:
    """SQL: whether a list of turns holds a user turn (`styles.render_turns` needs one)."""
    return f"list_contains(list_transform({turns}, lambda t: t.role), 'user')"


def _canonical(fields: dict[str, str], labels: dict[str, str]) -> str:
    """SQL: CANONICAL_TYPE of a record converted in SQL, its canonical JSON and labels as JSON objects."""
    def pairs(values: dict[str, str]) -> str:
        return ", ".join(f"'{name}', {value}" for name, value in values.items())
    return (f"{{'record': json_object({pairs(fields)}), 'labels': json_object({pairs(labels)}), "
            f"'reason': NULL::VARCHAR, 'detail': NULL::VARCHAR, 'reading': NULL::INTEGER}}")


def sql_conversion(source: Source) -> str | None:
    """SQL converting a record as `Style.convert` does (CANONICAL_TYPE, reading NULL: the record its canonical
    JSON), or NULL for a record it does not take, which Python converts and refuses with its reason. For
    `messages`: every turn one that `_turn` reads, the last the assistant's, a user turn before it. For
    `preference` in chat form (a list among the prompt and the answers, as `styles._preference` reads it): the
    prompt a string, a list of turns or none, each answer a string or a list of turns ending with the assistant's,
    both answers' earlier turns the same, a user turn among the prompt's and those. The prompt is rendered as
    `styles.render_turns` renders it. System turns, longer conversations and pairs given as whole conversations are
    common in chat data; converted in Python, they made curation about 2x slower than this (bench/README.md).
    None for other styles."""
    if source.style == "messages":
        column = source.columns.get("messages", "messages")
        pointer = sql_string(json_pointer(column))
        last = "(len(ts) - 1)"
        converted = _canonical({"instruction": _rendered("pt"), "output": "ts[len(ts)].content"},
                               {"instruction": f"{sql_string(column + '[:')} || {last} || ']'",
                                "output": f"{sql_string(column + '[')} || {last} || '].content'"})
        taken = f"{_read('ts')} AND {_answered('ts')} AND {_asked('pt')}"
        return (f"CASE WHEN json_type(raw, {pointer}) = 'ARRAY' THEN " + _let(_turns(pointer), "ts", _let(
            "list_slice(ts, 1, len(ts) - 1)", "pt", f"CASE WHEN {taken} THEN {converted} END")) + " END")
    if source.style != "preference":
        return None
    names = {ours: source.columns.get(ours, ours) for ours in ("prompt", "chosen", "rejected")}
    pointers = {ours: sql_string(json_pointer(name)) for ours, name in names.items()}

    def side(ours: str, index: int, role: str) -> str:  # a string is one turn of `role`; NULL: not taken
        return (f"CASE k[{index}] WHEN 'VARCHAR' THEN [{{'role': '{role}', 'content': json_extract_string(raw, "
                f"{pointers[ours]})}}] WHEN 'ARRAY' THEN {_turns(pointers[ours])} END")
    sides = (f"{{'p': CASE WHEN k[1] IS NULL OR k[1] = 'NULL' THEN []::STRUCT(role VARCHAR, content VARCHAR)[] "
             f"ELSE {side('prompt', 1, 'user')} END, 'c': {side('chosen', 2, 'assistant')}, "
             f"'r': {side('rejected', 3, 'assistant')}}}")
    earlier = {ours: f"list_slice(s.{ours}, 1, len(s.{ours}) - 1)" for ours in ("c", "r")}
    taken = (" AND ".join(f"{_read(f's.{ours}')}" for ours in "pcr") + f" AND {_answered('s.c')} AND {_answered('s.r')} "
             f"AND {earlier['c']} = {earlier['r']} AND {_asked('pt')}")
    converted = _canonical({"prompt": _rendered("pt"), "chosen": "s.c[len(s.c)].content",
                            "rejected": "s.r[len(s.r)].content"},
                           {"prompt": sql_string(names["prompt"]), "chosen": sql_string(f"{names['chosen']}[-1].content"),
                            "rejected": sql_string(f"{names['rejected']}[-1].content")})
    # Only records with a list among the three reach this (the renamed reading takes the others)
    return _let(f"json_type(raw, [{', '.join(pointers.values())}])", "k", _let(sides, "s", _let(
        f"s.p || {earlier['c']}", "pt", f"CASE WHEN {taken} THEN {converted} END")))


def style_sql(chosen: list[Source]) -> str:
    """STYLE_SQL for the sources: per valid JSON object, the reading that takes it (its number and labels), else
    its conversion in SQL where that takes it (`sql_conversion`), else its conversion in Python."""
    branches = []
    for source in chosen:
        taken = " ".join(
            f"WHEN {condition} THEN {{'record': NULL::VARCHAR, 'labels': "
            f"{sql_string(_json_text(names)) if names else 'NULL::VARCHAR'}, 'reason': NULL::VARCHAR, "
            f"'detail': NULL::VARCHAR, 'reading': {index}}}"
            for index, (condition, _, names) in enumerate(sql_readings(source), start=1))
        converted = sql_conversion(source)
        # DuckDB's coalesce calls Python only for the rows still NULL
        otherwise = f"coalesce({converted}, {CONVERTED})" if converted else CONVERTED
        if taken or converted:
            branches.append(f"WHEN {source.rank} THEN " + (f"CASE {taken} ELSE {otherwise} END" if taken else otherwise))
    return STYLE_SQL.format(conversion=f"CASE source_rank {' '.join(branches)} ELSE {CONVERTED} END" if branches
                            else CONVERTED)


# What the SQL receives back for a record converted in Python: its canonical JSON, or why it has none;
# labels name, per canonical field, where the value came from (for quarantine details).
CANONICAL_TYPE = pa.struct([("record", pa.string()), ("labels", pa.string()),
                            ("reason", pa.string()), ("detail", pa.string())])
SURROGATES = re.compile("[\ud800-\udfff]")


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
                    value = json.loads(raw, object_pairs_hook=json_object)
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


def typed_sql(shape: Shape, not_text: bool = False, chosen: list[Source] = ()) -> str:
    """View `typed` (read a batch at a time, never held whole): per record, each canonical field's JSON
    type, its text as read (for strings) and its name as the record has it (a mapped column, a conversation
    turn), for details. With `not_text`, a string from a column that table `not_text` lists (a Parquet
    timestamp, written as JSON text) has that column's type instead, so it is a wrong type, not text.
    The records of `chosen` sources that a reading took (`styled.reading`) are read where `sql_readings` says (a
    renamed column, a turn's content); the others hold the fields under their canonical names."""
    names = shape.required + shape.optional
    # One parse of the record for all fields (a path list): the values as read, strings unescaped and the rest as
    # JSON text. A value that reads as no JSON number, literal, array or object is a string; where one could be
    # (a string "42" and the number 42 read alike) or is null (JSON's null, or absent), the row's values are read
    # again as JSON text and typed from it: a second parse for those rows alone, as many as before for a source
    # whose records lack a field. A field the style lacks has an array index for path, which no object has.
    paths = "[" + ", ".join(f"'$.{f}'" for f in names) + "]"

    def extracted(function: str) -> str:  # over `styled` as `s`
        sources = "".join(f" WHEN s.source_rank = {source.rank} AND s.reading = {index} THEN {function}(s.record, ["
                          + ", ".join(sql_string(found[f]) if f in found else "'$[0]'" for f in names) + "])"
                          for source in chosen for index, (_, found, _) in enumerate(sql_readings(source), start=1)
                          if any(found.get(f) != json_pointer(f) for f in names))
        return f"CASE WHEN s.early_reason IS NOT NULL THEN NULL{sources} ELSE {function}(s.record, {paths}) END"
    labels = ", ".join(f"coalesce(json_extract_string(labels, '$.{f}'), '{f}') AS {f}_name" for f in names)
    joins = " ".join(f"LEFT JOIN not_text {f}_column ON {f}_column.source_rank = s.source_rank "
                     f"AND {f}_column.file = s.file AND {f}_column.column = s.{f}_name" for f in names) if not_text else ""

    def typed(index: int, f: str) -> str:  # a value as JSON text is a string when it opens with a quote
        found = (f"CASE WHEN NOT {f}_unsure THEN 'VARCHAR' WHEN starts_with(parts[{index}], '\"') THEN 'VARCHAR' "
                 f"ELSE json_type(parts[{index}]) END")
        if not not_text:
            return found
        return f"CASE WHEN {found} = 'VARCHAR' AND {f}_column.type IS NOT NULL THEN upper({f}_column.type) ELSE {found} END"
    fields = ",\n  ".join(
        f"{typed(index, f)} AS {f}_type,\n  CASE WHEN {f}_type = 'VARCHAR' THEN strings[{index}] END AS {f}_raw,\n  {f}_name"
        for index, f in enumerate(names, start=1))
    strings = f"SELECT s.*, {extracted('json_extract_string')} AS strings, {labels} FROM styled s"
    unsure = ", ".join(f"strings[{index}] IS NULL OR regexp_matches(strings[{index}], '^(?:[-0-9\\[{{]|true$|false$)') "
                       f"AS {f}_unsure" for index, f in enumerate(names, start=1))
    parts = (f"SELECT s.*, CASE WHEN {' OR '.join(f'{f}_unsure' for f in names)} THEN {extracted('json_extract')} END "
             f"AS parts FROM (SELECT *, {unsure} FROM ({strings})) s")
    return (f"CREATE TEMP VIEW typed AS SELECT pos, s.source_rank, s.source, s.file, s.line, early_reason, "
            f"early_detail, {fields} FROM ({parts}) s {joins}")


def json_pointer(key: str) -> str:
    """The JSON pointer of an object's key (RFC 6901: any key, escaped)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")
