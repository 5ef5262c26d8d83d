"""Malformed records, each with the outcome a correct curation must give (issue 19, items 1-5).

Used by tests/test_malformed_fuzz.py, and runnable on its own to count outcomes over every case:

    python tests/malformed_fuzz.py [--src OTHER_CHECKOUT/src]

which ends with `RESULT malformed_fuzz tried=... poison_kept=... good_lost=... swallowed=...
miscounted=... crashes=...`. With --src it curates with another checkout's code (the counts before a
change). Every record carries a marker (`m0001`...) in its text, so a kept row shows which records it
came from: a malformed record's marker in a kept row is poison kept, a good record's marker missing
from the kept rows is a good record lost, a kept row holding two markers swallowed a record. Each
family is curated in one call (its sources side by side), so a crash costs that family's records.

Families, each in the formats it concerns: an unclosed CSV quote followed by records a lenient reader
swallows; Parquet columns without text (timestamp, date) mapped to text fields, and a Parquet string
that is not UTF-8; control characters (NUL, BEL, an ANSI escape, DEL, VT, NEL, U+202E) and U+FFFD in
JSONL, CSV and Parquet, in the prompt and the answer; repeated JSON keys in every style; lines over
curate.max_line_bytes in JSONL and CSV.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINE_BYTES = 4096
MARKER = re.compile(r"m\d{4}")
POISON_CHARACTERS = ["\x00", "\x07", "\x1b[31m", "\x7f", "\x0b", "\x85", "\u202e", "\ufffd"]


@dataclass
class Family:
    name: str
    sources: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    good: set[str] = field(default_factory=set)  # markers that must be kept, each in a row of its own
    bad: set[str] = field(default_factory=set)  # markers that must never be kept
    records: dict[str, int] = field(default_factory=dict)  # source id -> records a person counts
    role: str = "sft"


class _Markers:
    def __init__(self):
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"m{self.count:04d}"


def _csv(rows: list[list[str]]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def families() -> list[Family]:
    import pyarrow as pa

    marker = _Markers()
    found = []

    # 1. An unclosed quote: the records after it must be read as their own.
    unclosed = Family("csv_unclosed_quote")
    for case in range(6):
        good_before, broken, after = marker(), marker(), [marker() for _ in range(3)]
        lines = ["instruction,output\n", _csv([[f"question {good_before}", "answer"]]),
                 f'"question {broken} never closed,answer\n']
        lines += [_csv([[f"plain {after[0]}", "answer"]]),
                  _csv([[f'quoted "{after[1]}" text' if case % 2 else f"with, comma {after[1]}", "answer"]]),
                  _csv([[f"last {after[2]}", "answer" if case < 4 else 'say "hi"']])]
        if case % 3 == 2:  # the quote left open on the last line instead
            lines = lines[:2] + lines[3:] + [lines[2]]
        name = f"unclosed{case}.csv"
        unclosed.files[name] = "".join(lines).encode()
        unclosed.sources.append({"id": f"unclosed{case}", "path": name, "format": "csv"})
        unclosed.good |= {good_before, *after}
        unclosed.bad.add(broken)
        unclosed.records[f"unclosed{case}"] = 5
    found.append(unclosed)

    # 2. Parquet: columns without text mapped to text fields; a string that is not UTF-8.
    typed = Family("parquet_types")
    for kind, value in (("timestamp", datetime.datetime(2024, 1, 1)), ("date", datetime.date(2024, 1, 1))):
        markers = [marker() for _ in range(3)]
        typed.files[f"{kind}.parquet"] = _parquet({"when": pa.array([value] * 3),
                                                   "answer": [f"answer {m}" for m in markers]})
        typed.sources.append({"id": kind, "path": f"{kind}.parquet", "format": "parquet",
                              "columns": {"instruction": "when", "output": "answer"}})
        typed.bad |= set(markers)
        typed.records[kind] = 3
    markers = [marker(), marker()]  # text beside them, so that the family keeps something
    typed.files["text.parquet"] = _parquet({"asked": [f"question {m}" for m in markers], "answer": ["a", "b"]})
    typed.sources.append({"id": "text", "path": "text.parquet", "format": "parquet",
                          "columns": {"instruction": "asked", "output": "answer"}})
    typed.good |= set(markers)
    typed.records["text"] = 2
    found.append(typed)
    typed = Family("parquet_bad_utf8")  # apart: a reader that fails on it fails its whole family
    good, broken = [marker(), marker()], marker()
    values = [f"question {good[0]}".encode(), f"question {broken} \xff".encode("latin-1"),
              f"question {good[1]}".encode()]
    question = pa.Array.from_buffers(pa.string(), 3, pa.array(values, pa.binary()).buffers())
    typed.files["bytes.parquet"] = _parquet({"instruction": question, "output": ["a", "b", "c"]})
    typed.sources.append({"id": "bytes", "path": "bytes.parquet", "format": "parquet"})
    typed.good |= set(good)
    typed.bad.add(broken)
    typed.records["bytes"] = 3
    found.append(typed)

    # 3. Control and replacement characters, in each format and field.
    characters = Family("control_characters")
    jsonl, rows, parquet = [], [], {"instruction": [], "output": []}
    for character in POISON_CHARACTERS:
        for where in ("instruction", "output"):
            for target in (jsonl, rows, parquet):
                bad, good = marker(), marker()
                record = {"instruction": f"question {bad}", "output": "answer"}
                record[where] = record[where] + character
                clean = {"instruction": f"question {good}\twith a tab", "output": "line one\nline two"}
                for entry in (record, clean):
                    if target is jsonl:
                        jsonl.append(json.dumps(entry, ensure_ascii=bool(len(jsonl) % 2)))
                    elif target is rows:
                        rows.append([entry["instruction"], entry["output"]])
                    else:
                        parquet["instruction"].append(entry["instruction"])
                        parquet["output"].append(entry["output"])
                characters.bad.add(bad)
                characters.good.add(good)
    characters.files["chars.jsonl"] = ("\n".join(jsonl) + "\n").encode()
    characters.files["chars.csv"] = _csv([["instruction", "output"], *rows]).encode()
    characters.files["chars.parquet"] = _parquet(parquet)
    characters.sources += [{"id": "chars_jsonl", "path": "chars.jsonl"},
                           {"id": "chars_csv", "path": "chars.csv", "format": "csv"},
                           {"id": "chars_parquet", "path": "chars.parquet", "format": "parquet"}]
    characters.records = {"chars_jsonl": len(jsonl), "chars_csv": len(rows), "chars_parquet": len(parquet["output"])}
    found.append(characters)

    # 4. Repeated keys, in every style that reads JSON objects; both values would pass (and both carry
    #    the marker), so only a refusal keeps the record out (which value trains depended on the reader).
    for role in ("sft", "preference"):
        repeated = Family(f"duplicate_keys_{role}", role=role)
        lines: dict[str, list[str]] = {}
        for style in (("alpaca", "renamed", "messages") if role == "sft" else ("preference", "chat", "pairwise")):
            for case in range(3):
                bad, good = marker(), marker()
                if style == "alpaca":
                    texts = [f'{{"instruction": "first {bad}", "instruction": "last {bad}", "output": "o"}}',
                             f'{{"instruction": "question {good}", "output": "o"}}']
                elif style == "renamed":
                    texts = [f'{{"q": "question {bad}", "a": "first", "a": "last"}}',
                             f'{{"q": "question {good}", "a": "o"}}']
                elif style == "messages":
                    texts = [f'{{"messages": [{{"role": "user", "content": "q {bad}", "content": "other {bad}"}}, '
                             f'{{"role": "assistant", "content": "a"}}]}}',
                             json.dumps({"messages": [{"role": "user", "content": f"q {good}"},
                                                      {"role": "assistant", "content": "a"}]})]
                elif style == "preference":
                    texts = [f'{{"prompt": "p {bad}", "chosen": "good", "rejected": "bad", "chosen": "fine"}}',
                             json.dumps({"prompt": f"p {good}", "chosen": "good", "rejected": "bad"})]
                elif style == "chat":
                    texts = [f'{{"prompt": "p {bad}", "chosen": [{{"role": "assistant", "content": "good", '
                             f'"content": "fine"}}], "rejected": [{{"role": "assistant", "content": "bad"}}]}}',
                             json.dumps({"prompt": f"p {good}", "chosen": [{"role": "assistant", "content": "good"}],
                                         "rejected": [{"role": "assistant", "content": "bad"}]})]
                else:
                    texts = [f'{{"question": "q {bad}", "answer_1": "x", "answer_2": "y", "g1_winner": "model_1", '
                             f'"g2_winner": "model_1", "g1_winner": "1"}}',
                             json.dumps({"question": f"q {good}", "answer_1": "x", "answer_2": "y",
                                         "g1_winner": "model_1", "g2_winner": "model_1"})]
                lines.setdefault(style, []).extend(texts)
                repeated.bad.add(bad)
                repeated.good.add(good)
        for style, texts in lines.items():
            repeated.files[f"{style}.jsonl"] = ("\n".join(texts) + "\n").encode()
            entry = {"id": style, "path": f"{style}.jsonl"}
            if style == "renamed":
                entry["columns"] = {"instruction": "q", "output": "a"}
            elif style in ("messages", "pairwise"):
                entry["style"] = style
            repeated.sources.append(entry)
            repeated.records[style] = len(texts)
        if role == "sft":  # a JSON array's elements, which ingest parses itself
            elements = []
            for _ in range(3):
                bad, good = marker(), marker()
                elements += [f'{{"instruction": "first {bad}", "output": "o", "instruction": "last {bad}"}}',
                             json.dumps({"instruction": f"question {good}", "output": "o"})]
                repeated.bad.add(bad)
                repeated.good.add(good)
            repeated.files["array.json"] = ("[" + ", ".join(elements) + "]").encode()
            repeated.sources.append({"id": "array", "path": "array.json", "format": "json"})
            repeated.records["array"] = len(elements)
        found.append(repeated)

    # 5. Lines over curate.max_line_bytes.
    long = Family("too_long")
    jsonl, rows = [], [["instruction", "output"]]
    for size in (MAX_LINE_BYTES + 1, MAX_LINE_BYTES * 3, MAX_LINE_BYTES * 40):
        for target in (jsonl, rows):
            bad, good = marker(), marker()
            if target is jsonl:
                jsonl += [json.dumps({"instruction": f"q {bad} " + "x" * size, "output": "o"}),
                          json.dumps({"instruction": f"q {good}", "output": "o"})]
            else:
                rows += [[f"q {bad} " + "x" * size, "o"], [f"q {good}", "o"]]
            long.bad.add(bad)
            long.good.add(good)
    long.files["long.jsonl"] = ("\n".join(jsonl) + "\n").encode()
    long.files["long.csv"] = _csv(rows).encode()
    long.sources += [{"id": "long_jsonl", "path": "long.jsonl"},
                     {"id": "long_csv", "path": "long.csv", "format": "csv"}]
    long.records = {"long_jsonl": len(jsonl), "long_csv": len(rows) - 1}
    found.append(long)
    return found


@dataclass
class Counts:
    tried: int = 0
    poison_kept: int = 0
    good_lost: int = 0
    swallowed: int = 0
    miscounted: int = 0
    crashes: int = 0
    problems: list[str] = field(default_factory=list)


def judge(family: Family, folder: Path, counts: Counts) -> None:
    """Curate one family in `folder` and count what went wrong."""
    import pyarrow.parquet as pq

    from tunesmith.config.recipe import load_schema
    from tunesmith.data.curate import curate

    for name, data in family.files.items():
        (folder / name).write_bytes(data)
    sources = [{**source, "role": family.role, "path": str(folder / source["path"])} for source in family.sources]
    settings = {"decontaminate": False, "min_kept_share": 0, "max_prompt_chars": 1_000_000,
                "max_response_chars": 1_000_000, "dedup": False, "near_dedup": {"enabled": False}}
    if "max_line_bytes" in load_schema()["properties"]["curate"]["properties"]:
        settings["max_line_bytes"] = MAX_LINE_BYTES
    counts.tried += len(family.bad)
    try:
        card = curate(sources, family.role, str(folder / "no-tasks.jsonl"), settings, str(folder / "kept.parquet"),
                      str(folder / "quarantine.parquet"), str(folder / "card.json"))
    except Exception as error:  # a crash costs the family: every record counts as lost or unjudged
        counts.crashes += 1
        counts.good_lost += len(family.good)
        counts.problems.append(f"{family.name}: {type(error).__name__}: {str(error)[:200]}")
        return
    kept_markers = []
    for row in pq.read_table(folder / "kept.parquet").to_pylist():
        text = " ".join(str(value) for key, value in row.items() if key in ("prompt", "response", "chosen", "rejected"))
        markers = MARKER.findall(text)
        kept_markers += markers
        if len(set(markers)) > 1:
            counts.swallowed += 1
            counts.problems.append(f"{family.name}: one kept row holds {sorted(set(markers))}")
    poison = family.bad & set(kept_markers)
    lost = family.good - set(kept_markers)
    counts.poison_kept += len(poison)
    counts.good_lost += len(lost)
    if poison:
        counts.problems.append(f"{family.name}: kept {sorted(poison)}")
    if lost:
        counts.problems.append(f"{family.name}: lost {sorted(lost)}")
    for source_id, expected in family.records.items():
        if card["sources"][source_id]["rows_in"] != expected:
            counts.miscounted += 1
            counts.problems.append(f"{family.name}/{source_id}: records in {card['sources'][source_id]['rows_in']}, "
                                   f"a person counts {expected}")


def run(selected: list[Family] | None = None) -> Counts:
    counts = Counts()
    with tempfile.TemporaryDirectory(prefix="malformed-fuzz-") as scratch:
        for family in selected or families():
            folder = Path(scratch) / family.name
            folder.mkdir()
            judge(family, folder, counts)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="curate with another checkout's src/ (the counts before a change)")
    parser.add_argument("--verbose", action="store_true", help="list every problem")
    arguments = parser.parse_args(argv)
    if arguments.src:
        environment = {**os.environ, "PYTHONPATH": str(Path(arguments.src).resolve())}
        command = [sys.executable, __file__] + (["--verbose"] if arguments.verbose else [])
        return subprocess.run(command, env=environment, check=False).returncode
    counts = run()
    if arguments.verbose:
        print("\n".join(counts.problems))
    print(f"RESULT malformed_fuzz tried={counts.tried} poison_kept={counts.poison_kept} good_lost={counts.good_lost} "
          f"swallowed={counts.swallowed} miscounted={counts.miscounted} crashes={counts.crashes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
