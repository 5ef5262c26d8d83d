"""Ingest: every format and record style through `curate`, exact file/line, and every record accounted for."""

import csv
import datetime
import io
import json
import re
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tunesmith.data.curate import CurationError, curate
from tunesmith.data.sources import IngestError, source_files

SETTINGS = {"max_prompt_chars": 200, "max_response_chars": 100, "dedup": True, "decontaminate": False,
            "min_kept_share": 0}


def record(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False)


def jsonl(*records) -> str:
    return "".join(line + "\n" for line in records)


def run(tmp_path, sources, role="sft", **settings):
    """Curate `sources` (role filled in); check the card against the written files; return all three."""
    out = tmp_path / "out"
    card = curate([{"role": role, **source} for source in sources], role, str(tmp_path / "no-tasks.jsonl"),
                  {**SETTINGS, **settings}, str(out / "kept.parquet"), str(out / "quarantine.parquet"),
                  str(out / "card.json"))
    kept = pq.read_table(out / "kept.parquet").to_pylist()
    quarantined = pq.read_table(out / "quarantine.parquet").to_pylist()
    for source_id, entry in card["sources"].items():
        assert entry["rows_in"] == entry["kept"] + sum(entry["quarantined"].values())
        assert entry["kept"] == sum(row["source"] == source_id for row in kept)
        assert entry["quarantined"] == Counter(row["reason"] for row in quarantined if row["source"] == source_id)
    return card, kept, quarantined


def outcomes(tmp_path, kept, quarantined):
    """{(file relative to tmp_path, line): 'kept' or (reason, detail)}."""
    def name(path):
        return str(path).removeprefix(str(tmp_path) + "/")
    found = {(name(row["file"]), row["line"]): "kept" for row in kept}
    found.update({(name(row["file"]), row["line"]): (row["reason"], row["detail"]) for row in quarantined})
    return found


def raw_at(quarantined, file_suffix, line):
    """The quarantined record's text as read."""
    [raw] = [row["raw"] for row in quarantined if row["file"].endswith(file_suffix) and row["line"] == line]
    return raw


# ---- files: globs, directories, formats ------------------------------------------------------------

def test_glob_of_2000_one_record_files_is_fast_with_per_file_lines(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for index in range(2000):
        lines = [record(instruction=f"Question {index}", output=f"Answer {index}")]
        if index % 500 == 0:  # a few files with more lines, so line numbers restart per file
            lines += ["", record(instruction=f"Second {index}", output="more")]
        (shards / f"{index:04d}.jsonl").write_text(jsonl(*lines), encoding="utf-8")
    (shards / "1999.jsonl").write_text(jsonl(record(instruction="QUESTION 0", output="answer 0")), encoding="utf-8")
    started = time.perf_counter()
    card, kept, quarantined = run(tmp_path, [{"id": "shards", "path": str(shards / "*.jsonl")}])
    assert time.perf_counter() - started < 20  # one read; a per-file query would take minutes at 15k files
    assert card["sources"]["shards"]["files"] == 2000
    assert card["sources"]["shards"]["rows_in"] == 2000 + 4 * 2
    found = outcomes(tmp_path, kept, quarantined)
    assert found[("shards/0500.jsonl", 1)] == found[("shards/0500.jsonl", 3)] == "kept"
    assert found[("shards/0500.jsonl", 2)] == ("blank_line", None)
    assert found[("shards/0501.jsonl", 1)] == "kept"
    # With several files, a duplicate names the file of the copy it kept.
    assert found[("shards/1999.jsonl", 1)] == ("duplicate", f"kept shards:{shards / '0000.jsonl'}:1")
    assert [row["file"] for row in kept[:3]] == [str(shards / "0000.jsonl")] * 2 + [str(shards / "0001.jsonl")]


def test_directory_takes_its_shards_of_the_format_recursively(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "part" / ".cache").mkdir(parents=True)
    (folder / "b.jsonl").write_text(jsonl(record(instruction="B", output="b")), encoding="utf-8")
    (folder / "part" / "a.ndjson").write_text(jsonl(record(instruction="A", output="a")), encoding="utf-8")
    (folder / "README.md").write_text("# not data\n", encoding="utf-8")
    (folder / "part" / ".cache" / "c.jsonl").write_text("{broken\n", encoding="utf-8")
    assert source_files(str(folder), "jsonl") == [str(folder / "b.jsonl"), str(folder / "part" / "a.ndjson")]
    card, kept, _ = run(tmp_path, [{"id": "dir", "path": str(folder)}])
    assert (card["sources"]["dir"]["files"], [row["prompt"] for row in kept]) == (2, ["B", "A"])


def test_json_arrays_one_row_per_element(tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([{"instruction": "One", "output": "1"}, "text", {"output": "x"},
                                               {"instruction": "Four", "output": 4}], indent=2), encoding="utf-8")
    (folder / "b_single.json").write_text(record(instruction="Solo", output="s"), encoding="utf-8")
    (folder / "c_broken.json").write_text('[{"instruction": "x", "output": "y"},', encoding="utf-8")
    (folder / "d_bytes.json").write_bytes(b'\xef\xbb\xbf[{"instruction": "\xff", "output": "y"}, '
                                          b'{"instruction": "Fine", "output": "z"}]')
    (folder / "e_empty.json").write_bytes(b"")
    (folder / "f_nul.json").write_bytes(b'[{"instruction": "raw\x00nul", "output": "y"}]')
    card, kept, quarantined = run(tmp_path, [{"id": "arrays", "path": str(folder), "format": "json"}])
    assert outcomes(tmp_path, kept, quarantined) == {
        ("json/a.json", 1): "kept", ("json/a.json", 2): ("not_object", "varchar"),
        ("json/a.json", 3): ("missing_field", "instruction"), ("json/a.json", 4): ("wrong_type", "output: ubigint"),
        ("json/b_single.json", 1): "kept", ("json/c_broken.json", 1): ("invalid_json", None),
        ("json/d_bytes.json", 1): ("invalid_utf8", "invalid UTF-8 bytes in the record"),
        ("json/d_bytes.json", 2): "kept", ("json/f_nul.json", 1): ("invalid_json", None),
    }
    assert card["sources"]["arrays"]["files"] == 6
    assert raw_at(quarantined, "c_broken.json", 1) == '[{"instruction": "x", "output": "y"},'  # as it was


def test_csv_rows_keep_their_starting_line(tmp_path):
    data = (b"\xef\xbb\xbfinstruction,input,output\r\n"
            b"Say hi,,Hi\r\n"                      # 2: an empty optional input is no input
            b'"Multi\nline",ctx,ok\r\n'            # 3-4: a quoted newline
            b"\r\n"                                # 5
            b"too,many,fields,here\r\n"            # 6
            b"Empty output,,\r\n"                  # 7
            b"\xff bad,,x\r\n"                     # 8
            b"nul\x00inside,,y\r\n"                # 9: a NUL never trains
            b"short\r\n"                           # 10
            b'"\xfe quoted",,z\r\n')                # 11: read by the csv module, not alone as line 8
    (tmp_path / "rows.csv").write_bytes(data)
    card, kept, quarantined = run(tmp_path, [{"id": "csv", "path": str(tmp_path / "rows.csv"), "format": "csv"}])
    assert outcomes(tmp_path, kept, quarantined) == {
        ("rows.csv", 2): "kept", ("rows.csv", 3): "kept", ("rows.csv", 5): ("blank_line", None),
        ("rows.csv", 6): ("wrong_column_count", "4 fields, the header has 3"),
        ("rows.csv", 7): ("empty_field", "output"),
        ("rows.csv", 8): ("invalid_utf8", "invalid UTF-8 bytes in the record"),
        ("rows.csv", 9): ("control_characters", "instruction: U+0000 NUL at character 4, 1 in all"),
        ("rows.csv", 10): ("wrong_column_count", "1 fields, the header has 3"),
        ("rows.csv", 11): ("invalid_utf8", "invalid UTF-8 bytes in the record"),
    }
    assert [row["prompt"] for row in kept] == ["Say hi", "Multi\nline\nctx"]
    assert raw_at(quarantined, "rows.csv", 8) == '{"instruction": "\ufffd bad", "input": "", "output": "x"}'
    assert card["sources"]["csv"]["rows_in"] == 9  # the header is not a record; lines 3-4 are one


def test_a_csv_record_reads_as_json_dumps_writes_its_fields(tmp_path):
    """A CSV record becomes the JSON text `json.dumps` makes of header -> field (written faster, per field):
    quotes, backslashes, controls, line and paragraph separators, full-width and astral characters alike."""
    from tunesmith.data.ingest import ingest_source

    header = ["指示", 'a "quoted" \\ key', "output"]
    rows = [["日本の首都は？", 'say "hi"\\n', "東京です。\t（答え）"], ["\x01\x1f\x7f", "\u2028\u2029", "😀\u200dＡ"],
            ["", "line\nbreak", "</script>"]]
    with open(tmp_path / "rows.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    ingest_source({"id": "c", "path": str(tmp_path / "rows.csv"), "format": "csv", "role": "sft"}, str(tmp_path / "c.parquet"))
    assert pq.read_table(tmp_path / "c.parquet")["raw"].to_pylist() == [
        json.dumps(dict(zip(header, row)), ensure_ascii=False) for row in rows]


def test_parquet_glob_rows_numbered_per_file_and_mapped(tmp_path):
    pq.write_table(pa.table({"question": ["Q1", "Q2", None], "answer": ["A1", None, "A3"]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"question": ["Q4", "Q5"], "answer": ["A4", ""], "meta": [{"n": 1}, None]}),
                   tmp_path / "p2.parquet")
    pq.write_table(pa.table({"instruction": ["I"], "output": [7]}), tmp_path / "typed.parquet")
    card, kept, quarantined = run(tmp_path, [
        {"id": "pq", "path": str(tmp_path / "p?.parquet"), "format": "parquet",
         "columns": {"instruction": "question", "output": "answer"}},
        {"id": "typed", "path": str(tmp_path / "typed.parquet"), "format": "parquet"},
    ])
    assert outcomes(tmp_path, kept, quarantined) == {
        ("p1.parquet", 1): "kept", ("p1.parquet", 2): ("missing_field", "answer=null"),
        ("p1.parquet", 3): ("missing_field", "question=null"), ("p2.parquet", 1): "kept",
        ("p2.parquet", 2): ("empty_field", "answer"), ("typed.parquet", 1): ("wrong_type", "output: ubigint"),
    }
    # Each record holds the columns of its own shard (shards of one schema are read in one scan).
    assert json.loads(raw_at(quarantined, "p1.parquet", 2)) == {"question": "Q2", "answer": None}
    assert json.loads(raw_at(quarantined, "p2.parquet", 2)) == {"question": "Q5", "answer": "", "meta": None}
    assert card["sources"]["pq"]["files"] == 2


def test_hugging_face_datasets_from_disk_and_local_folders(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"instruction": ["T1"], "output": ["t1"]}),
        "test": datasets.Dataset.from_dict({"instruction": ["E1", "E2", "E3"], "output": ["e1", "", "e3"]}),
    }).save_to_disk(str(saved))
    single = tmp_path / "single"
    dated = {"when": [datetime.datetime(2024, 1, 1)]}  # a timestamp: no text, whatever to_json makes of it
    datasets.Dataset.from_dict({"text": ["S1"], "output": ["s1"], **dated}).save_to_disk(str(single))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text(jsonl(record(instruction="F1", output="f1")), encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "saved", "path": str(saved), "format": "hf", "split": "test"},
        {"id": "single", "path": str(single), "format": "hf", "style": "text_output"},
        {"id": "folder", "path": str(folder), "format": "hf"},
        {"id": "dated", "path": str(single), "format": "hf", "style": "text_output", "columns": {"text": "when"}},
    ])
    assert [(row["source"], row["line"], row["prompt"]) for row in kept] == [
        ("saved", 1, "E1"), ("saved", 3, "E3"), ("single", 1, "S1"), ("folder", 1, "F1")]
    assert [(row["file"], row["line"], row["reason"], row["detail"]) for row in quarantined] == [
        (str(saved), 2, "empty_field", "output"), (str(single), 1, "wrong_type", "when: timestamp")]
    assert card["sources"]["saved"]["rows_in"] == 3

    with pytest.raises(CurationError, match=r"source 'saved' \(.*saved\): no split 'validation'"):
        run(tmp_path, [{"id": "saved", "path": str(saved), "format": "hf", "split": "validation"}])
    with pytest.raises(CurationError, match=r"source 'hub' \(nobody/no-such-dataset\): cannot load the dataset"):
        run(tmp_path, [{"id": "hub", "path": "nobody/no-such-dataset", "format": "hf"}])


# ---- dirt in JSONL ---------------------------------------------------------------------------------

def test_huge_line_nul_bytes_and_empty_files_are_rows_not_crashes(tmp_path):
    huge = record(instruction="x" * 10_000_000, output="y")
    (tmp_path / "a.jsonl").write_bytes(b"\n".join([
        record(instruction="Fine", output="ok").encode(), huge.encode(),
        b'{"instruction": "raw\x00nul", "output": "y"}', b"\x00\x00", b'{"instruction": "esc\\u0000", "output": "k"}',
    ]))
    (tmp_path / "b.jsonl").write_bytes(b"")
    card, kept, quarantined = run(tmp_path, [{"id": "dirt", "path": str(tmp_path / "*.jsonl")}],
                                  max_line_bytes=16 << 20)  # the 10 MB line is read
    assert outcomes(tmp_path, kept, quarantined) == {
        ("a.jsonl", 1): "kept", ("a.jsonl", 2): ("too_long", "prompt 10000000"),
        ("a.jsonl", 3): ("invalid_json", None), ("a.jsonl", 4): ("invalid_json", None),
        ("a.jsonl", 5): ("control_characters", "instruction: U+0000 NUL at character 4, 1 in all"),
    }
    assert len(quarantined[0]["raw"]) == len(huge)  # under max_line_bytes: kept whole
    assert (card["sources"]["dirt"]["files"], card["sources"]["dirt"]["rows_in"]) == (2, 5)


# ---- record styles ---------------------------------------------------------------------------------

def test_text_output_and_alpaca_column_mappings_name_their_columns(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(jsonl(
        record(text="Translate: cat", output="neko"), record(output="no text"), record(text="T", output=["list"]),
    ), encoding="utf-8")
    (tmp_path / "renamed.jsonl").write_text(jsonl(
        record(q="Q", a="A", ctx="C"), record(q="Q2", a=5), record(q="", a="A3"),
    ), encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "pairs", "path": str(tmp_path / "pairs.jsonl"), "style": "text_output"},
        {"id": "renamed", "path": str(tmp_path / "renamed.jsonl"),
         "columns": {"instruction": "q", "input": "ctx", "output": "a", "text": None}},
    ])
    assert [(row["prompt"], row["response"]) for row in kept] == [("Translate: cat", "neko"), ("Q\nC", "A")]
    assert outcomes(tmp_path, kept, quarantined) | {} == {
        ("pairs.jsonl", 1): "kept", ("pairs.jsonl", 2): ("missing_field", "text"),
        ("pairs.jsonl", 3): ("wrong_type", "output: array"),
        ("renamed.jsonl", 1): "kept", ("renamed.jsonl", 2): ("wrong_type", "a: ubigint"),
        ("renamed.jsonl", 3): ("empty_field", "q"),
    }
    assert raw_at(quarantined, "renamed.jsonl", 2) == record(q="Q2", a=5)  # as read, not as mapped
    assert card["sources"]["pairs"]["style"] == "text_output"


def test_messages_render_earlier_turns_and_the_system_prompt_into_the_prompt(tmp_path):
    def turn(role, content):
        return {"role": role, "content": content}
    rows = [
        [turn("user", "Hi"), turn("assistant", "Hello")],                                     # 1
        [turn("system", "Be brief."), turn("user", "Q1"), turn("assistant", "A1"),
         turn("user", "Q2"), turn("assistant", "A2")],                                        # 2
        [turn("user", "Q"), turn("assistant", "A"), turn("user", "unanswered")],              # 3
        [turn("user", "Q"), turn("tool", "{}"), turn("assistant", "A")],                      # 4
        [turn("user", "Q"), turn("assistant", 7)],                                            # 5
        [turn("user", "Q"), turn("assistant", " ")],                                          # 6
        [turn("assistant", "Unprompted")],                                                    # 7
        "not a list",                                                                         # 8
        None,                                                                                 # 9
        [turn("user", "Q"), {"role": "assistant"}],                                           # 10
    ]
    (tmp_path / "chat.jsonl").write_text(jsonl(*(record(messages=row) for row in rows)), encoding="utf-8")
    (tmp_path / "sharegpt.jsonl").write_text(jsonl(record(conversations=[
        {"from": "system", "value": "Sys"}, {"from": "human", "value": "Hey"}, {"from": "gpt", "value": "Yo"}])),
        encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "chat", "path": str(tmp_path / "chat.jsonl"), "style": "messages"},
        {"id": "sharegpt", "path": str(tmp_path / "sharegpt.jsonl"), "style": "messages",
         "columns": {"messages": "conversations"}},
    ])
    assert [(row["prompt"], row["response"]) for row in kept] == [
        ("Hi", "Hello"), ("Be brief.\n\nUser: Q1\n\nAssistant: A1\n\nUser: Q2", "A2"), ("Sys\n\nHey", "Yo")]
    assert outcomes(tmp_path, kept, quarantined) == {
        ("chat.jsonl", 1): "kept", ("chat.jsonl", 2): "kept",
        ("chat.jsonl", 3): ("bad_conversation", "messages: ends with user, not an assistant turn"),
        ("chat.jsonl", 4): ("bad_conversation", "messages[1].role: tool"),
        ("chat.jsonl", 5): ("wrong_type", "messages[1].content: ubigint"),
        ("chat.jsonl", 6): ("empty_field", "messages[1].content"),
        ("chat.jsonl", 7): ("bad_conversation", "messages: no user turn before the answer"),
        ("chat.jsonl", 8): ("wrong_type", "messages: varchar"),
        ("chat.jsonl", 9): ("missing_field", "messages=null"),
        ("chat.jsonl", 10): ("missing_field", "messages[1].content"),
        ("sharegpt.jsonl", 1): "kept",
    }


def test_preference_in_plain_and_chat_form(tmp_path):
    def said(role, content):
        return [{"role": role, "content": content}]
    user, assistant = (lambda text: said("user", text)), (lambda text: said("assistant", text))
    rows = [
        record(prompt="Q1", chosen="good", rejected="bad"),                                            # 1
        record(prompt=user("Q2"), chosen=assistant("yes"), rejected=assistant("no")),                  # 2
        record(chosen=user("Q3") + assistant("c"), rejected=user("Q3") + assistant("r")),              # 3 implicit
        record(chosen=user("Q4") + assistant("c"), rejected=user("Other") + assistant("r")),           # 4
        record(prompt="Q5", chosen=assistant("c") + user("more?"), rejected="r"),                      # 5
        record(prompt=said("system", "Sys") + user("Q6"), chosen="c6", rejected=assistant("r6")),      # 6
        record(prompt="Q7", chosen="same", rejected=assistant(" same")),                               # 7
        record(prompt="Q8", chosen="c"),                                                               # 8
    ]
    (tmp_path / "prefs.jsonl").write_text(jsonl(*rows), encoding="utf-8")
    (tmp_path / "renamed.jsonl").write_text(jsonl(record(instruction="R1", better="b", worse="w"),
                                                  record(instruction="R2", worse=3)), encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "prefs", "path": str(tmp_path / "prefs.jsonl")},
        {"id": "renamed", "path": str(tmp_path / "renamed.jsonl"),
         "columns": {"prompt": "instruction", "chosen": "better", "rejected": "worse"}},
    ], role="preference")
    assert [(row["prompt"], row["chosen"], row["rejected"]) for row in kept] == [
        ("Q1", "good", "bad"), ("Q2", "yes", "no"), ("Q3", "c", "r"), ("Sys\n\nQ6", "c6", "r6"), ("R1", "b", "w")]
    assert outcomes(tmp_path, kept, quarantined) == {
        ("prefs.jsonl", 1): "kept", ("prefs.jsonl", 2): "kept", ("prefs.jsonl", 3): "kept",
        ("prefs.jsonl", 4): ("bad_conversation", "chosen and rejected differ before their answers"),
        ("prefs.jsonl", 5): ("bad_conversation", "chosen: ends with user, not an assistant turn"),
        ("prefs.jsonl", 6): "kept", ("prefs.jsonl", 7): ("chosen_equals_rejected", None),
        ("prefs.jsonl", 8): ("missing_field", "rejected"),
        ("renamed.jsonl", 1): "kept", ("renamed.jsonl", 2): ("missing_field", "better"),
    }
    assert card["sources"]["prefs"]["style"] == "preference"


def test_pairwise_by_positions_keeps_only_pairs_both_judgments_agree_on(tmp_path):
    def judged(g1, g2, answer_1="first", answer_2="second", question=None, **extra):
        fields = {"question": question or f"Q {g1} {g2}", "answer_1": answer_1, "answer_2": answer_2,
                  "g1_winner": g1, "g2_winner": g2, **extra}
        return json.dumps({key: value for key, value in fields.items() if value is not ...})
    rows = [
        judged("A", "B"),                        # 1 g2 saw (answer_2, answer_1): its B is answer_1 → agree
        judged(2, 1),                            # 2 both pick answer_2
        judged("A", "A"),                        # 3 disagree
        judged("B", "B"),                        # 4 disagree
        judged("tie", "B"),                      # 5
        judged("error", "A"),                    # 6
        judged("A", ...),                        # 7 g2 missing
        judged("A", "B", answer_1=3),            # 8
        judged("a", "b", answer_2="first "),     # 9 answers equal once normalised
        judged(" a ", "b", answer_2=""),         # 10 rejected is empty
        judged("A", "B", question="Q 1 again"),  # 11 kept: a different prompt
    ]
    (tmp_path / "judged.jsonl").write_text(jsonl(*rows), encoding="utf-8")
    (tmp_path / "renamed.csv").write_text("instruction,answer_1,answer_2,judge_a,judge_b\nR,x,y,2,1\nS,x,y,1,1\n",
                                          encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "judged", "path": str(tmp_path / "judged.jsonl"), "style": "pairwise", "winners": "positions"},
        {"id": "renamed", "path": str(tmp_path / "renamed.csv"), "format": "csv", "style": "pairwise",
         "winners": "positions",
         "columns": {"question": "instruction", "g1_winner": "judge_a", "g2_winner": "judge_b"}},
    ], role="preference")
    assert [(row["line"], row["chosen"], row["rejected"]) for row in kept] == [
        (1, "first", "second"), (2, "second", "first"), (11, "first", "second"), (2, "y", "x")]
    found = outcomes(tmp_path, kept, quarantined)
    assert {key: value for key, value in found.items() if value != "kept"} == {
        ("judged.jsonl", 3): ("judge_disagree", "g1_winner='A', g2_winner='A'"),
        ("judged.jsonl", 4): ("judge_disagree", "g1_winner='B', g2_winner='B'"),
        ("judged.jsonl", 5): ("judge_tie", "g1_winner='tie', g2_winner='B'"),
        ("judged.jsonl", 6): ("judge_invalid", "g1_winner: 'error'"),
        ("judged.jsonl", 7): ("missing_field", "g2_winner"),
        ("judged.jsonl", 8): ("wrong_type", "answer_1: ubigint"),
        ("judged.jsonl", 9): ("chosen_equals_rejected", None),
        ("judged.jsonl", 10): ("empty_field", "answer_2"),
        ("renamed.csv", 3): ("judge_disagree", "judge_a='1', judge_b='1'"),
    }
    assert card["sources"]["judged"]["quarantined"] == {
        "missing_field": 1, "wrong_type": 1, "judge_invalid": 1, "judge_tie": 1, "judge_disagree": 2,
        "empty_field": 1, "chosen_equals_rejected": 1}
    assert card["totals"]["quarantined"]["judge_disagree"] == 3


# ---- what cannot be read at all fails first --------------------------------------------------------

def test_mapping_naming_a_missing_column_fails_before_anything_is_written(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl(record(instruction="I", output="O"), "{broken"), encoding="utf-8")
    (tmp_path / "b.csv").write_text("prompt,response\nP,R\n", encoding="utf-8")
    cases = [
        ({"id": "typo", "path": str(tmp_path / "a.jsonl"), "columns": {"output": "answer"}},
         r"source 'typo' \(.*a\.jsonl\): no record has the column\(s\) answer \(for output\)"),
        ({"id": "style", "path": str(tmp_path / "a.jsonl"), "style": "text_output"},
         r"source 'style' \(.*a\.jsonl\): no record has the column\(s\) text \(style 'text_output'"),
        ({"id": "header", "path": str(tmp_path / "b.csv"), "format": "csv", "columns": {"instruction": "prompt"}},
         r"source 'header' \(.*b\.csv\): no record has the column\(s\) output"),
    ]
    for source, message in cases:
        with pytest.raises(CurationError, match=message):
            run(tmp_path, [source])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, message", [
    ({"path": "{tmp}/none-*.jsonl"}, "no file matches"),
    ({"path": "{tmp}/empty-dir"}, "directory has no .jsonl/.ndjson files"),
    ({"path": "{tmp}/gone.csv", "format": "csv"}, "file not found"),
    ({"path": "{tmp}/ok.jsonl", "style": "pairwise"}, r"style 'pairwise' does not fit role 'sft'"),
    ({"path": "{tmp}/ok.jsonl", "columns": {"question": "q"}}, r"columns \['question'\] are not fields of style"),
    ({"path": "{tmp}/garbage.parquet", "format": "parquet"}, "cannot read"),
    ({"path": "{tmp}/twice.csv", "format": "csv"}, r"the header repeats the columns \['output'\]"),
], ids=["empty-glob", "empty-dir", "missing", "style-role", "unknown-field", "corrupt-parquet", "csv-header"])
def test_unreadable_source_fails_naming_source_and_path(tmp_path, source, message):
    (tmp_path / "ok.jsonl").write_text(jsonl(record(instruction="I", output="O")), encoding="utf-8")
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "empty-dir" / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "twice.csv").write_text("instruction,output,output\nI,O,P\n", encoding="utf-8")
    before = sorted(path.name for path in tmp_path.iterdir())
    path = source["path"].format(tmp=tmp_path)
    with pytest.raises(CurationError, match=rf"source 'bad' \({re.escape(path)}\): {message}"):
        run(tmp_path, [{"id": "fine", "path": str(tmp_path / "ok.jsonl")}, {**source, "id": "bad", "path": path}])
    assert sorted(path.name for path in tmp_path.iterdir()) == before


# ---- the per-source cache ---------------------------------------------------------------------------

def test_ingest_source_writes_raw_records_with_what_was_read(tmp_path):
    from tunesmith.data.ingest import ingest_source, ingested_source

    (tmp_path / "a.jsonl").write_bytes(b'{"instruction": "I", "output": "O"}\r\n\n\xff\n')
    summary = ingest_source({"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}, str(tmp_path / "a.parquet"))
    assert summary == {"id": "a", "path": str(tmp_path / "a.jsonl"), "format": "jsonl", "split": "train",
                       "files": [str(tmp_path / "a.jsonl")], "not_text": {}, "rows": 3}
    assert ingested_source(str(tmp_path / "a.parquet")) == {key: value for key, value in summary.items() if key != "rows"}
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert [(row["line"], row["raw"], row["read_reason"]) for row in rows] == [
        (1, '{"instruction": "I", "output": "O"}', None), (2, "", None), (3, "\ufffd", "invalid_utf8")]
    with pytest.raises(Exception, match="role 'pretrain' is not curated"):
        ingest_source({"id": "t", "path": str(tmp_path / "a.jsonl"), "role": "pretrain"}, str(tmp_path / "t.parquet"))


def test_jsonl_lines_read_the_same_whatever_the_chunk_boundaries_cut(tmp_path, monkeypatch):
    """JSONL is read in chunks into one reused buffer, a line unfinished at a chunk's end carried to the next: a
    BOM, CRLF and lone CR, bad bytes, multi-byte characters, blank lines, a line longer than a chunk, one over
    curate.max_line_bytes and a last line without a line feed read alike wherever the chunks end."""
    from tunesmith.data import ingest, records

    lines = [b"\xef\xbb\xbf" + record(instruction="最初", output="o").encode(), record(instruction="ＣＲＬＦ", output="é").encode()
             + b"\r", b"", b"lone\rCR", b'{"instruction": "\xff\xfe", "output": "x"}', "かなカナ漢字".encode() * 9,
             b"x" * 150, b"y" * 5000, b"\r", "最後".encode()]
    (tmp_path / "a.jsonl").write_bytes(data := b"\n".join(lines))
    read = []
    for chunk in (1 << 20, 5, 17, 64, 149, 151, 4096, len(data) - 1, len(data), len(data) + 1):
        monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", chunk)
        monkeypatch.setattr(records, "SKIP_BYTES", 7)
        ingest.ingest_source({"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}, str(tmp_path / "a.parquet"),
                             max_line_bytes=4500)
        read.append([(row["line"], row["raw"], row["read_reason"]) for row in pq.read_table(tmp_path / "a.parquet").to_pylist()])
    assert all(rows == read[0] for rows in read[1:])
    assert [(line, reason) for line, _, reason in read[0]] == [(line, None) for line in range(1, 11)] \
        [:4] + [(5, "invalid_utf8"), (6, None), (7, None), (8, "too_long"), (9, None), (10, None)]
    assert [raw for _, raw, _ in read[0]][:4] == [record(instruction="最初", output="o"),
                                                  record(instruction="ＣＲＬＦ", output="é"), "", "lone\rCR"]
    assert read[0][5][1] == "かなカナ漢字" * 9 and read[0][7][1] == "y" * 1000 + " …" and read[0][9][1] == "最後"


@pytest.mark.parametrize("failing", ["reading", "writing"])
def test_ingest_that_fails_midway_leaves_no_file_and_says_why(tmp_path, monkeypatch, failing):
    """Batches are written on a second thread while the next is read: a failure on either side, with
    batches already written, ends the ingest with that error and no file (not a shorter one)."""
    from tunesmith.data import ingest

    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 1000)  # many batches, each written before the failure
    (tmp_path / "a.jsonl").write_text("".join(record(instruction=f"q{i}", output="o") + "\n" for i in range(500)))
    reads, writes, add, write = [], [], ingest._add_jsonl_lines, pq.ParquetWriter.write_batch

    def failing_add(*args):
        reads.append(1)
        if failing == "reading" and len(reads) == 10:
            raise OSError(5, "disk read error", args[0])
        return add(*args)

    def failing_write(self, batch, *args, **kwargs):
        writes.append(1)
        if failing == "writing" and len(writes) == 10:
            raise OSError(28, "disk full")
        return write(self, batch, *args, **kwargs)

    monkeypatch.setattr(ingest, "_add_jsonl_lines", failing_add)
    monkeypatch.setattr(pq.ParquetWriter, "write_batch", failing_write)
    with pytest.raises(IngestError, match=r"a\.jsonl\): cannot read: disk read error" if failing == "reading"
                       else r"a\.jsonl\): cannot write .*a\.parquet: disk full"):
        ingest.ingest_source({"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}, str(tmp_path / "a.parquet"))
    assert len(writes) >= 9 and sorted(path.name for path in tmp_path.iterdir()) == ["a.jsonl"]
    ingest.ingest_source({"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}, str(tmp_path / "a.parquet"))
    assert pq.read_table(tmp_path / "a.parquet").num_rows == 500  # and it runs through once nothing fails


def test_curation_reads_only_the_ingested_files_and_one_source_can_be_reingested_alone(tmp_path):
    from tunesmith.data.ingest import ingest_source

    sources = [{"id": name, "path": str(tmp_path / f"{name}.jsonl"), "role": "sft"} for name in ("one", "two")]
    for name in ("one", "two"):
        (tmp_path / f"{name}.jsonl").write_text(jsonl(record(instruction=f"Q {name}", output="A")), encoding="utf-8")
        ingest_source(sources[0 if name == "one" else 1], str(tmp_path / f"{name}.parquet"))
    cached = (tmp_path / "one.parquet").read_bytes()
    (tmp_path / "one.jsonl").unlink()  # curation must not read the raw file again
    (tmp_path / "two.jsonl").write_text(jsonl(record(instruction="Q two", output="A"),
                                              record(instruction="Q new", output="B")), encoding="utf-8")
    ingest_source(sources[1], str(tmp_path / "two.parquet"))
    out = tmp_path / "out"
    card = curate(sources, "sft", str(tmp_path / "no-tasks.jsonl"), {**SETTINGS, "validation_fraction": 0},
                  str(out / "k.parquet"), str(out / "q.parquet"), str(out / "c.json"),
                  ingested=[str(tmp_path / "two.parquet"), str(tmp_path / "one.parquet")])
    assert [(row["source"], row["prompt"]) for row in pq.read_table(out / "k.parquet").to_pylist()] == [
        ("one", "Q one"), ("two", "Q two"), ("two", "Q new")]
    assert (tmp_path / "one.parquet").read_bytes() == cached
    assert (card["sources"]["one"]["rows_in"], card["sources"]["two"]["rows_in"]) == (1, 2)
    moved = [{**sources[0], "path": str(tmp_path / "elsewhere.jsonl")}, sources[1]]
    with pytest.raises(CurationError, match=r"source 'one' .*one\.parquet was ingested from .*ingest the source again"):
        curate(moved, "sft", str(tmp_path / "no-tasks.jsonl"), SETTINGS, str(out / "k.parquet"),
               str(out / "q.parquet"), str(out / "c.json"),
               ingested=[str(tmp_path / "one.parquet"), str(tmp_path / "two.parquet")])
    with pytest.raises(CurationError, match=r"source 'two' .*: no ingested file"):
        curate(sources, "sft", str(tmp_path / "no-tasks.jsonl"), SETTINGS, str(out / "k.parquet"),
               str(out / "q.parquet"), str(out / "c.json"), ingested=[str(tmp_path / "one.parquet")])


# ---- data that must never train (issue 19): each fixture is written here, small ---------------------

def test_an_unclosed_csv_quote_costs_its_line_and_the_lines_after_it_are_records(tmp_path):
    (tmp_path / "quotes.csv").write_bytes(
        b"instruction,output\n"
        b"First,one\n"                            # 2
        b'"Broken start,two\n'                    # 3: the quote is never closed ...
        b"Third,three\n"                          # 4: ... so the lenient reader swallowed this line
        b'"Fourth ""quoted"" text",four\n'        # 5: ... and this one, into one row of the right width
        b'"Multi\nline",six\n'                    # 6-7: a quoted line break is text
        b'"quoted"tail,eight\n'                   # 8: text after a closing quote
        b'"Last unclosed,nine\n'                  # 9: open at the end of the file
        b"Tenth,ten\n")                           # 10
    (tmp_path / "junk.csv").write_bytes(
        b"instruction,output\n"
        b'"Multi\nline"junk,x\n'                   # 2-3: a closing quote with text after it: one broken record
        b"Fourth,four\n")                         # 4
    card, kept, quarantined = run(tmp_path, [{"id": "csv", "path": str(tmp_path / "quotes.csv"), "format": "csv"},
                                             {"id": "junk", "path": str(tmp_path / "junk.csv"), "format": "csv"}])
    junk = {line: value for (file, line), value in outcomes(tmp_path, kept, quarantined).items() if file == "junk.csv"}
    assert junk == {2: ("malformed_csv", "',' expected after '\"' (line 3, in a field opened on line 2)"), 4: "kept"}
    assert raw_at(quarantined, "junk.csv", 2) == '"Multi\nline"junk,x'
    kept = [row for row in kept if row["source"] == "csv"]
    quarantined = [row for row in quarantined if row["source"] == "csv"]
    found = outcomes(tmp_path, kept, quarantined)
    assert {line: value if value == "kept" else value[0] for (_, line), value in found.items()} == {
        2: "kept", 3: "malformed_csv", 4: "kept", 5: "kept", 6: "kept", 8: "malformed_csv", 9: "malformed_csv",
        10: "kept"}
    assert found[("quotes.csv", 3)][1] == "',' expected after '\"'; lines 4-5 are read as records of their own"
    assert found[("quotes.csv", 9)][1] == "unexpected end of data; lines 10-10 are read as records of their own"
    assert [(row["prompt"], row["response"]) for row in kept] == [
        ("First", "one"), ("Third", "three"), ('Fourth "quoted" text', "four"), ("Multi\nline", "six"),
        ("Tenth", "ten")]
    assert raw_at(quarantined, "quotes.csv", 3) == '"Broken start,two'  # the line as written
    assert card["sources"]["csv"]["rows_in"] == 8  # the records a person counts: lines 2-10, 6-7 one


def test_a_parquet_source_streams_in_batches_and_bad_bytes_late_in_a_file_lose_no_row(tmp_path, monkeypatch):
    """Parquet rows are read a batch at a time (bounded memory), in file and row order; a string that is not
    UTF-8 after some batches were taken makes the rest of its file be read again as bytes: no row twice, none lost."""
    import tunesmith.data.ingest as ingest
    from tunesmith.data.records import Columns

    monkeypatch.setattr(Columns, "BATCH_ROWS", 300)
    rows = 30_000  # DuckDB's scan reads ~10k rows ahead of the batches it has handed over
    texts = [f"質問{i}".encode() for i in range(rows)]
    texts[25_000] = b"Q\xff bad"
    question = pa.Array.from_buffers(pa.string(), rows, pa.array(texts, pa.binary()).buffers())
    pq.write_table(pa.table({"question": question, "n": list(range(rows))}), tmp_path / "b.parquet", row_group_size=700)
    pq.write_table(pa.table({"question": ["最初のファイル"], "n": [-1]}), tmp_path / "a.parquet")
    ingest.ingest_source({"id": "p", "path": str(tmp_path / "[ab].parquet"), "format": "parquet", "role": "sft"},
                         str(tmp_path / "out.parquet"))
    got = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(Path(row["file"]).name, row["line"]) for row in got] == [("a.parquet", 1)] + [
        ("b.parquet", line) for line in range(1, rows + 1)]
    assert [json.loads(row["raw"])["n"] for row in got] == [-1] + list(range(rows))
    assert [(row["line"], row["read_reason"]) for row in got if row["read_reason"]] == [(25_001, "invalid_utf8")]
    assert json.loads(got[4_000]["raw"]) == {"question": "質問3999", "n": 3_999}


def test_parquet_columns_without_text_are_wrong_type_and_bad_utf8_costs_one_row(tmp_path):
    import uuid

    question = pa.Array.from_buffers(pa.string(), 3, pa.array([b"Q1", b"Q\xff2", b"Q3"], pa.binary()).buffers())
    pq.write_table(pa.table({"question": question, "answer": ["A1", "A2", "A3"],
                             "asked": pa.array([datetime.datetime(2024, 1, 1)] * 3)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"instruction": pa.array([datetime.date(2024, 1, 2)]), "output": ["O"]}),
                   tmp_path / "b.parquet")
    pq.write_table(pa.table({"instruction": pa.array([uuid.uuid4().bytes], pa.uuid()), "output": ["O"]}),
                   tmp_path / "c.parquet")
    card, kept, quarantined = run(tmp_path, [
        {"id": "text", "path": str(tmp_path / "a.parquet"), "format": "parquet",
         "columns": {"instruction": "question", "output": "answer"}},
        {"id": "dates", "path": str(tmp_path / "a.parquet"), "format": "parquet",
         "columns": {"instruction": "asked", "output": "answer"}},
        {"id": "plain", "path": str(tmp_path / "[bc].parquet"), "format": "parquet"},
    ])
    by_source = {(row["source"], Path(row["file"]).name, row["line"]): (row["reason"], row["detail"])
                 for row in quarantined}
    assert by_source == {
        ("text", "a.parquet", 2): ("invalid_utf8", "column(s) question: invalid UTF-8 bytes"),
        **{("dates", "a.parquet", line): ("wrong_type", "asked: timestamp") for line in (1, 3)},
        ("dates", "a.parquet", 2): ("invalid_utf8", "column(s) question: invalid UTF-8 bytes"),  # read first
        ("plain", "b.parquet", 1): ("wrong_type", "instruction: date"),
        ("plain", "c.parquet", 1): ("wrong_type", "instruction: uuid"),
    }
    assert [row["prompt"] for row in kept] == ["Q1", "Q3"]
    assert json.loads(raw_at(quarantined, "a.parquet", 1))["asked"] == "2024-01-01 00:00:00"


def test_control_and_replacement_characters_never_train(tmp_path):
    (tmp_path / "c.jsonl").write_text(jsonl(
        record(instruction="Tabs\tand\nlines stay", output="ok\r\nfine"),   # 1
        record(instruction="Ring", output="bell\x07"),                      # 2
        record(instruction="\x1b[31mred\x1b[0m", output="ansi"),            # 3
        record(instruction="abc\u202edcba", output="trojan"),               # 4
        record(instruction="decode damage", output="x\ufffdy\ufffd"),       # 5
        record(instruction="next line", output="c1\x85"),                   # 6
    ), encoding="utf-8")
    pq.write_table(pa.table({"instruction": ["nul\x00"], "output": ["O"]}), tmp_path / "n.parquet")
    (tmp_path / "chat.jsonl").write_text(jsonl(record(messages=[
        {"role": "user", "content": "hi\x00"}, {"role": "assistant", "content": "A"}])), encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "c", "path": str(tmp_path / "c.jsonl")},
        {"id": "n", "path": str(tmp_path / "n.parquet"), "format": "parquet"},
        {"id": "chat", "path": str(tmp_path / "chat.jsonl"), "style": "messages"},
    ])
    assert outcomes(tmp_path, kept, quarantined) == {
        ("c.jsonl", 1): "kept",
        ("c.jsonl", 2): ("control_characters", "output: U+0007 BEL at character 5, 1 in all"),
        ("c.jsonl", 3): ("control_characters",
                         "instruction: U+001B ESC (an ANSI escape sequence) at character 1, 2 in all"),
        ("c.jsonl", 4): ("control_characters",
                         "instruction: U+202E RLO, right-to-left override at character 4, 1 in all"),
        ("c.jsonl", 5): ("replacement_character", "output: U+FFFD at character 2, 2 in all"),
        ("c.jsonl", 6): ("control_characters", "output: U+0085 NEL at character 3, 1 in all"),
        ("n.parquet", 1): ("control_characters", "instruction: U+0000 NUL at character 4, 1 in all"),
        ("chat.jsonl", 1): ("control_characters", "messages[:1]: U+0000 NUL at character 3, 1 in all"),
    }
    assert [row["response"] for row in kept] == ["ok\nfine"]  # tab, line feed and CR are text


def test_a_record_that_repeats_a_key_is_quarantined_in_every_style(tmp_path):
    (tmp_path / "alpaca.jsonl").write_text(
        '{"instruction": "first", "instruction": "last", "output": "o", "output": "p"}\n'
        '{"instruction": "fine", "output": "o", "meta": {"a": 1, "a": 2}}\n'
        # A wide record (the check takes another road beyond 64 keys): a repeat among 80 keys, then none
        + json.dumps({"instruction": "wide", "output": "o", **{f"c{i}": i for i in range(78)}})[:-1] + ', "c5": 0}\n'
        + json.dumps({"instruction": "wide too", "output": "o", **{f"c{i}": i for i in range(78)}}) + "\n",
        encoding="utf-8")
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "A"}]}\n',
        encoding="utf-8")
    (tmp_path / "renamed.jsonl").write_text('{"q": "first", "q": "last", "a": "o"}\n', encoding="utf-8")
    (tmp_path / "array.json").write_text('[{"instruction": "first", "instruction": "last", "output": "o"}, '
                                         '{"instruction": "fine too", "output": "o"}]', encoding="utf-8")
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "P", "chosen": "c", "rejected": "r", "chosen": "r"}\n'
                                          '{"prompt": "P", "chosen": "c", "rejected": "r"}\n', encoding="utf-8")
    card, kept, quarantined = run(tmp_path, [
        {"id": "alpaca", "path": str(tmp_path / "alpaca.jsonl")},
        {"id": "chat", "path": str(tmp_path / "chat.jsonl"), "style": "messages"},
        {"id": "renamed", "path": str(tmp_path / "renamed.jsonl"), "columns": {"instruction": "q", "output": "a"}},
        {"id": "array", "path": str(tmp_path / "array.json"), "format": "json"},
    ])
    assert outcomes(tmp_path, kept, quarantined) == {
        ("alpaca.jsonl", 1): ("duplicate_key", "repeated: instruction, output"),
        ("alpaca.jsonl", 2): "kept",  # nothing reads `meta`
        ("alpaca.jsonl", 3): ("duplicate_key", "repeated: c5"), ("alpaca.jsonl", 4): "kept",
        ("chat.jsonl", 1): ("duplicate_key", "messages[0] repeats content"),
        ("renamed.jsonl", 1): ("duplicate_key", "repeated: q"),
        ("array.json", 1): ("duplicate_key", "repeated: instruction"), ("array.json", 2): "kept",
    }
    _, kept, quarantined = run(tmp_path, [{"id": "prefs", "path": str(tmp_path / "prefs.jsonl")}], role="preference")
    assert (len(kept), [(row["line"], row["reason"], row["detail"]) for row in quarantined]) == (
        1, [(1, "duplicate_key", "repeated: chosen")])



CSV_TEXT = st.text(alphabet=st.sampled_from(list(',"\n\r\t\\%ab é日\x00\x0b\u2028')), max_size=6)
CSV_HEADER = ["instruction", "input", "output"]


def as_the_csv_module_reads(text: str, delimiter: str) -> list[tuple] | None:
    """(line, raw, read_reason, read_detail) of each record `csv.reader` reads in `text` after its header (a line
    ends at LF, CRLF or a lone CR), as ingest writes it; None when the reader refuses the text."""
    reference = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    expected = []
    try:
        next(reference)
        while True:
            line = reference.line_num + 1  # the lines read so far: a record starts on the next
            fields = next(reference, None)
            if fields is None:
                return expected
            if not fields:
                expected.append((line, "", None, None))
            elif len(fields) == len(CSV_HEADER):
                expected.append((line, json.dumps(dict(zip(CSV_HEADER, fields)), ensure_ascii=False), None, None))
            else:
                expected.append((line, json.dumps(fields, ensure_ascii=False), "wrong_column_count",
                                 f"{len(fields)} fields, the header has {len(CSV_HEADER)}"))
    except csv.Error:
        return None


def ingested_csv(tmp_path, text: str, delimiter: str) -> list[tuple]:
    from tunesmith.data.ingest import ingest_source

    path = tmp_path / ("rows.tsv" if delimiter == "\t" else "rows.csv")
    path.write_text(text, encoding="utf-8", newline="")
    ingest_source({"id": "c", "path": str(path), "format": "csv", "role": "sft"}, str(tmp_path / "c.parquet"))
    table = pq.read_table(tmp_path / "c.parquet")
    return list(zip(*(table[name].to_pylist() for name in ("line", "raw", "read_reason", "read_detail"))))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(CSV_TEXT, max_size=4), max_size=12), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
       end=st.sampled_from(["\n", "\r\n", "\r"]), delimiter=st.sampled_from([",", "\t"]), block=st.integers(8, 300))
def test_csv_records_read_as_the_csv_module_reads_them_whichever_way_they_are_read(tmp_path, monkeypatch, rows, quoting,
                                                                                    end, delimiter, block):
    """Records are read three ways (a block of lines over Arrow arrays, a line without a quote alone, the csv
    module over lines for the rest and what the first two cannot read): every record gets what `csv.reader`
    gives over the same lines, from its starting line: an empty line an empty record, a row of another width kept
    apart as its JSON list."""
    from tunesmith.data import ingest_csv

    text = io.StringIO()
    csv.writer(text, quoting=quoting, lineterminator=end, delimiter=delimiter).writerows([CSV_HEADER, *rows])
    expected = as_the_csv_module_reads(text.getvalue(), delimiter)
    assume(expected is not None)  # a written field with a lone CR can end a line inside an unquoted field
    monkeypatch.setattr(ingest_csv, "CSV_BLOCK_BYTES", block)  # records across blocks
    assert ingested_csv(tmp_path, text.getvalue(), delimiter) == expected


@pytest.mark.parametrize("end", ["\n", "\r\n"])
@pytest.mark.parametrize("block", [2048, 1 << 20], ids=["many-blocks", "one-block"])
def test_csv_blocks_are_read_over_arrow_as_the_csv_module_reads_them(tmp_path, monkeypatch, end, block):
    """A file of many blocks, or of one (the header's, whose lines after the header are read as any block's):
    most records are read a block at a time (_block_records), and every record, plain, quoted, over several
    lines (a field holding LF or CRLF), empty, of another width, with controls, backslashes, tabs or percent
    signs, gets what `csv.reader` gives."""
    import random

    from tunesmith.data import ingest_csv

    rng, rows = random.Random(7), []
    pieces = ["質問", "answer", "a,b", 'say "hi"', "line\nbreak", "crlf\r\nbreak", "back\\slash", "tab\there", "%s %d",
              "bell\x07", "é", ""]
    for _ in range(3000):
        width = rng.choice([3] * 12 + [0, 1, 4])
        rows.append([rng.choice(pieces[:2] * 20 + pieces) + str(rng.randrange(100)) for _ in range(width)])
    text = io.StringIO()
    csv.writer(text, lineterminator=end).writerows([CSV_HEADER, *rows])
    expected = as_the_csv_module_reads(text.getvalue(), ",")
    read, block_records = [], ingest_csv._block_records  # lines read a block at a time

    def counted(file, out, lines, *rest):
        number = lines.number
        done = block_records(file, out, lines, *rest)
        read.append(lines.number - number)
        return done

    monkeypatch.setattr(ingest_csv, "_block_records", counted)
    monkeypatch.setattr(ingest_csv, "CSV_BLOCK_BYTES", block)
    assert expected is not None and ingested_csv(tmp_path, text.getvalue(), ",") == expected
    assert sum(read) > 0.8 * len(text.getvalue().splitlines())



@pytest.mark.parametrize("block", [4096, 1 << 20], ids=["cut-by-the-block", "within-it"])
def test_an_over_long_line_in_a_csv_files_first_block_keeps_every_line_numbered(tmp_path, monkeypatch, block):
    """The header's block holds its lines after the header for the block reader; a line over the limit that
    follows them, cut by the block's end or within it, is numbered after them, not before."""
    from tunesmith.data import ingest_csv
    from tunesmith.data.ingest import ingest_source

    monkeypatch.setattr(ingest_csv, "CSV_BLOCK_BYTES", block)
    (tmp_path / "rows.csv").write_text("instruction,output\nA,o\nB,o\n" + "x" * 6000 + ",o\nC,o\n", encoding="utf-8")
    ingest_source({"id": "c", "path": str(tmp_path / "rows.csv"), "format": "csv", "role": "sft"},
                  str(tmp_path / "c.parquet"), max_line_bytes=2048)
    table = pq.read_table(tmp_path / "c.parquet")
    assert list(zip(table["line"].to_pylist(), table["read_reason"].to_pylist())) == [
        (2, None), (3, None), (4, "too_long"), (5, None)]

def test_a_line_over_max_line_bytes_is_quarantined_unparsed(tmp_path, monkeypatch):
    from tunesmith.data import ingest, ingest_csv, records

    monkeypatch.setattr(ingest, "JSONL_CHUNK_BYTES", 1500)  # lines over the limit inside and across chunks
    monkeypatch.setattr(records, "SKIP_BYTES", 700)
    parsed = []  # the longest line handed to a splitter: over-long lines are skipped, not held whole
    split = ingest._add_jsonl_lines
    monkeypatch.setattr(ingest, "_add_jsonl_lines", lambda file, number, data, out, end=None: (
        parsed.append(max(map(len, bytes(data[:end]).split(b"\n")))), split(file, number, data, out, end))[1])
    monkeypatch.setattr(ingest_csv, "CSV_BLOCK_BYTES", 1500)
    split_csv, block_records = ingest_csv._CsvLines._split, ingest_csv._block_records
    monkeypatch.setattr(ingest_csv._CsvLines, "_split", lambda lines, data: (
        parsed.append(max(map(len, data.split(b"\n")))), split_csv(lines, data))[1])
    monkeypatch.setattr(ingest_csv, "_block_records", lambda file, out, lines, data, *rest: (
        parsed.append(max(map(len, data.split(b"\n")))), block_records(file, out, lines, data, *rest))[1])
    long = record(instruction="L" * 6000, output="o")
    (tmp_path / "a.jsonl").write_text(jsonl(record(instruction="I1", output="o"), long, long + "   ",
                                            record(instruction="I4", output="o"), long), encoding="utf-8")
    (tmp_path / "b.csv").write_text("instruction,output\nC2,o\n" + "x" * 6000 + ",o\nC4,o\n" + "y" * 3000 + "\n"
                                    '"Open\n' + "z" * 3000 + '\nclosed",o\nC9,o\n' + "w" * 2040 + ",o\n", encoding="utf-8")
    pq.write_table(pa.table({"instruction": ["P1", "p" * 3000], "output": ["o", "o"]}), tmp_path / "c.parquet")
    card, kept, quarantined = run(tmp_path, [
        {"id": "a", "path": str(tmp_path / "a.jsonl")},
        {"id": "b", "path": str(tmp_path / "b.csv"), "format": "csv"},
        {"id": "c", "path": str(tmp_path / "c.parquet"), "format": "parquet"},
    ], max_line_bytes=2048)
    found = outcomes(tmp_path, kept, quarantined)
    over = {key: value[1] for key, value in found.items() if value != "kept"}
    assert {key for key, value in found.items() if value == "kept"} == {
        ("a.jsonl", 1), ("a.jsonl", 4), ("b.csv", 2), ("b.csv", 4), ("b.csv", 9), ("c.parquet", 1)}
    size = len(long.encode())
    assert over == {
        ("a.jsonl", 2): f"{size} bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
        ("a.jsonl", 3): f"{size + 3} bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
        ("a.jsonl", 5): f"{size} bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
        ("b.csv", 3): "6002 bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
        ("b.csv", 5): "3000 bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
        # a quoted field around an over-long line still ends where it ends: lines 6-8 are one record
        ("b.csv", 6): "line 7: 3000 bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
        # a line within the limit whose record (its JSON text) is not
        ("b.csv", 10): f"{len(json.dumps({'instruction': 'w' * 2040, 'output': 'o'}))} bytes, over curate.max_line_bytes "
                       "2048 (not read; the first 1000 characters kept)",
        ("c.parquet", 2): f"{len(json.dumps({'instruction': 'p' * 3000, 'output': 'o'}, separators=(',', ':')))} "
                          "bytes, over curate.max_line_bytes 2048 (not read; the first 1000 characters kept)",
    }
    assert {row["reason"] for row in quarantined} == {"too_long"}
    assert max(parsed) <= 2048 + 1500  # at most the limit and a block, never a 6 kB line
    assert raw_at(quarantined, "a.jsonl", 2) == long[:1000] + " …"
    assert card["sources"]["a"]["rows_in"] == 5 and card["sources"]["b"]["rows_in"] == 7
