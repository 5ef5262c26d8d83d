"""Record styles: how a source's records map onto the fields curation checks (sft: instruction/input/
output; preference: prompt/chosen/rejected). Pure Python; curation calls `convert` from SQL (through
`tunesmith.data.curate_fields.canonical_function`) only for records that are valid JSON objects and that
SQL does not read in place (`curate_fields.sql_readings`: the columns of a `Style.renamed` style, the two
contents of a conversation of one user turn and the answer, a pair in TRL's conversational form) or convert
itself (`curate_fields.sql_conversion`: a `messages` conversation or a chat-form preference pair this module
would take, rendered as `render_turns` renders it; a change to the rules here must be made there too, which
tests/test_curate.py checks).

Conversations become a prompt by `render_turns`:

- the system turns come first, then the dialogue, separated by blank lines;
- a dialogue of one user turn is that turn's text; a longer one writes each turn as
  `User: ...` / `Assistant: ...`, so earlier answers stay in the prompt;
- the final assistant turn is the response (a conversation not ending with one is quarantined).

A record (tunesmith.data.curate_pipeline) or a conversation turn that repeats a key is refused
(`duplicate_key`): readers disagree about which value it holds.

Pairwise judgments: `g1_winner` judged (answer_1, answer_2), `g2_winner` the same pair shown in
swapped order. By default (`winners: answers`, FastChat's judgment files) each winner names the
answer it prefers whatever order its judge saw: `model_1` (or answer_1, 1, A) or `model_2` (answer_2,
2, B), `tie` or `draw`, since FastChat maps g2's verdict back to the model names. With `winners:
positions` each winner names a position in its own judge's order (1 or A the first shown, 2 or B the
second), so g2's 1 means answer_2. Only pairs both judgments agree on are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
TURN_LABELS = {"user": "User", "assistant": "Assistant"}
FIRST, SECOND, TIE = 1, 2, "tie"
WINNERS = {"1": FIRST, "a": FIRST, "2": SECOND, "b": SECOND, "tie": TIE, "draw": TIE}
# FastChat's names for the answers; under `winners: positions` they would be ambiguous, so only there refused.
ANSWER_NAMES = {"model_1": FIRST, "answer_1": FIRST, "model_2": SECOND, "answer_2": SECOND}
class Rejected(Exception):
    """A record that cannot be mapped onto the canonical fields: (reason, detail)."""

    def __init__(self, reason: str, detail: str | None):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


_ABSENT = object()


class RepeatedKeys(dict):
    """A JSON object that repeats keys (`repeated`); its values are the last ones, as Python reads them."""
    repeated: list[str]


def json_object(pairs: list[tuple[str, object]]) -> dict:
    """`json.loads`'s object_pairs_hook: a dict, or a RepeatedKeys when the object repeats a key, so
    that a turn read from it is refused (DuckDB would have read the first value, Python the last)."""
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    repeated = RepeatedKeys(value)
    repeated.repeated = sorted({key for key, _ in pairs if sum(other == key for other, _ in pairs) > 1})
    return repeated


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
        if isinstance(turn, RepeatedKeys):
            raise Rejected("duplicate_key", f"{where} repeats {', '.join(turn.repeated)}")
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
    # {canonical field: our column} when a record is its columns renamed, which curation reads in SQL
    # without `convert`; but a record holding a list in one of them when `lists_converted` (chat form).
    renamed: dict[str, str] | None = None
    lists_converted: bool = False


_ALPACA = {"instruction": "instruction", "input": "input", "output": "output"}
_TEXT_OUTPUT = {"instruction": "text", "output": "output"}
_PREFERENCE = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
STYLES = {
    "alpaca": Style("sft", ("instruction", "input", "output"), ("instruction", "output"), _renamed(_ALPACA), _ALPACA),
    "text_output": Style("sft", ("text", "output"), ("text", "output"), _renamed(_TEXT_OUTPUT), _TEXT_OUTPUT),
    "messages": Style("sft", ("messages",), ("messages",), _messages),
    "preference": Style("preference", ("prompt", "chosen", "rejected"), ("chosen", "rejected"), _preference,
                        _PREFERENCE, lists_converted=True),
    "pairwise": Style("preference", ("question", "answer_1", "answer_2", "g1_winner", "g2_winner"),
                      ("question", "answer_1", "answer_2", "g1_winner", "g2_winner"), _pairwise),
}
STYLE_BY_ROLE = {"sft": "alpaca", "preference": "preference"}
