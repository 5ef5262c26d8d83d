"""Curation: every reason code from a crafted line, exact line accounting, order, determinism, atomicity."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import tunesmith.curate as curate_module
from tunesmith.curate import REASONS, CurationError, curate
from tunesmith.normalize import match_key

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"max_prompt_chars": 40, "max_response_chars": 20, "dedup": True, "decontaminate": True}
TASKS = [{"task_id": 7, "input": "Name the capital of France."},
         {"task_id": 9, "input": "次の語を翻訳してください。_x000D_\nりんご"}]


def sft(instruction, output, **extra) -> bytes:
    return json.dumps({"instruction": instruction, **extra, "output": output}, ensure_ascii=False).encode()


def pair(prompt, chosen, rejected) -> bytes:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False).encode()


def run(tmp_path, files, role="sft", **settings):
    """Curate `files` ({source id: bytes}, recipe order) and return (card, kept rows, quarantined rows)."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(task, ensure_ascii=False) + "\n" for task in TASKS), encoding="utf-8")
    sources = []
    for source_id, data in files.items():
        (tmp_path / f"{source_id}.jsonl").write_bytes(data)
        sources.append({"id": source_id, "path": str(tmp_path / f"{source_id}.jsonl"), "format": "jsonl", "role": role})
    out = tmp_path / "out"
    card = curate(sources, role, str(tasks), {**SETTINGS, **settings},
                  str(out / "kept.parquet"), str(out / "quarantine.parquet"), str(out / "card.json"))
    assert json.loads((out / "card.json").read_text(encoding="utf-8")) == card
    return card, pq.read_table(out / "kept.parquet").to_pylist(), pq.read_table(out / "quarantine.parquet").to_pylist()


def by_line(rows):
    return {row["line"]: (row["reason"], row["detail"]) for row in rows}


def test_every_sft_reason_from_a_crafted_line(tmp_path):
    lines = [
        sft("Say hi", "Hi"),                                           # 1 kept
        b'{"instruction": "Say hi", "output": "Hi"',                   # 2 truncated
        b'["instruction", "output"]',                                  # 3
        b'"just a string"',                                            # 4
        b'{"output": "Hi"}',                                           # 5
        sft("Say hi", None),                                           # 6 null counts as missing
        sft(42, "Hi"),                                                 # 7
        sft("Say hi", ["Hi"]),                                         # 8
        sft("Say hi", "Hi", input=5),                                  # 9 optional, but not any type
        sft("Say hi", ""),                                             # 10
        sft("\u3000 \u200b", "Hi"),                                    # 11 blank once normalised
        b"  \t",                                                       # 12
        b"",                                                           # 13
        "\u3000".encode(),                                             # 14 ideographic space only
        b'{"instruction": "\xff\xfe", "output": "Hi"}',                # 15
        sft("x" * 41, "Hi"),                                           # 16
        sft("Short", "y" * 21),                                        # 17
        sft("Please: NAME the capital  of ｆｒａｎｃｅ.", "Paris"),    # 18 contains task 7 under match_key
        sft("次の語を翻訳してください。", "apple", input="りんご"),    # 19 task 9 split as in the task file
        sft("ＳＡＹ　ＨＩ ", "hi"),                                    # 20 full-width, case, whitespace
        b'{"instruction": "Say\x00hi", "output": "Hi"}',               # 21 raw NUL is a control character
        sft("Say hi", "Hi", input=None),                               # 22 null input is no input
    ]
    card, kept, quarantined = run(tmp_path, {"mixed": b"\n".join(lines) + b"\n"})
    assert [row["line"] for row in kept] == [1]
    assert by_line(quarantined) == {
        2: ("invalid_json", None), 3: ("not_object", "array"), 4: ("not_object", "varchar"),
        5: ("missing_field", "instruction"), 6: ("missing_field", "output=null"),
        7: ("wrong_type", "instruction: ubigint"), 8: ("wrong_type", "output: array"),
        9: ("wrong_type", "input: ubigint"), 10: ("empty_field", "output"), 11: ("empty_field", "instruction"),
        12: ("blank_line", None), 13: ("blank_line", None), 14: ("blank_line", None),
        15: ("invalid_utf8", "invalid start byte at byte 17"), 16: ("too_long", "prompt 41"),
        17: ("too_long", "output 21"), 18: ("contaminated", "task_id 7"), 19: ("contaminated", "task_id 9"),
        20: ("duplicate", "kept mixed:1"), 21: ("invalid_json", None), 22: ("duplicate", "kept mixed:1"),
    }
    assert quarantined[13]["raw"] == '{"instruction": "\ufffd\ufffd", "output": "Hi"}'  # line 15, replaced
    file = str(tmp_path / "mixed.jsonl")
    assert card["contamination"] == [{"source": "mixed", "file": file, "line": 18, "task_id": 7},
                                     {"source": "mixed", "file": file, "line": 19, "task_id": 9}]
    assert card["sources"]["mixed"]["rows_in"] == 22
    assert card["examples"]["blank_line"] == ["  \t", "", "\u3000"]
    assert set(card["totals"]["quarantined"]) == set(REASONS) - {
        "chosen_equals_rejected", "wrong_column_count", "bad_conversation", "judge_invalid", "judge_tie",
        "judge_disagree"}  # those come from CSV rows and record styles (tests/test_ingest.py)


def test_preference_reasons_compare_normalised_answers(tmp_path):
    lines = [pair("Q1", "good", "bad"), pair("Q2", "same", "same"), pair("Q3", "ＳＡＭＥ ", "SAME"),
             pair("Q4", "Same", "same"), b'{"prompt": "Q5", "chosen": "a"}', pair("Q1", "good", "bad"),
             pair("Name the capital of France.", "Paris", "Rome")]
    card, kept, quarantined = run(tmp_path, {"prefs": b"\n".join(lines)}, role="preference")
    assert [(row["line"], row["prompt"], row["chosen"], row["rejected"]) for row in kept] == [
        (1, "Q1", "good", "bad"), (4, "Q4", "Same", "same")]  # case differs: still a preference
    assert by_line(quarantined) == {2: ("chosen_equals_rejected", None), 3: ("chosen_equals_rejected", None),
                                    5: ("missing_field", "rejected"), 6: ("duplicate", "kept prefs:1"),
                                    7: ("contaminated", "task_id 7")}
    assert set(kept[0]) == {"id", "source", "file", "line", "prompt", "chosen", "rejected"}


def test_kept_text_is_normalised_and_id_is_the_dedup_key_hash(tmp_path):
    lines = [b'{"instruction": "Line one_x000D_\\r\\nline two", "input": " ctx\\u200b ", "output": "ok\\r\\n"}\r',
             sft("ｆｕｌｌ  width", "ＯＫ"), b'{"instruction": "nul\\u0000inside", "output": "kept"}']
    _, kept, _ = run(tmp_path, {"a": b"\n".join(lines)})
    assert [(row["prompt"], row["response"]) for row in kept] == [
        ("Line one\nline two\nctx", "ok"), ("full width", "OK"), ("nul\x00inside", "kept")]
    assert kept[0]["id"] == hashlib.sha256(f"{match_key(kept[0]['prompt'])}\n{match_key('ok')}".encode()).hexdigest()
    assert list(kept[0]) == ["id", "source", "file", "line", "prompt", "response"]


def test_line_accounting_bom_crlf_and_trailing_newline(tmp_path):
    data = b"\xef\xbb\xbf" + sft("A", "a") + b"\r\n" + sft("B", "b") + b"\r\n\r\n" + sft("C", "c")
    card, kept, quarantined = run(tmp_path, {"crlf": data})
    assert [(row["line"], row["prompt"]) for row in kept] == [(1, "A"), (2, "B"), (4, "C")]
    assert by_line(quarantined) == {3: ("blank_line", None)}
    assert card["sources"]["crlf"] == {"path": str(tmp_path / "crlf.jsonl"), "format": "jsonl", "style": "alpaca",
                                       "files": 1, "rows_in": 4, "kept": 3, "quarantined": {"blank_line": 1}}
    card, _, _ = run(tmp_path, {"crlf": data + b"\r\n"})  # a final newline ends line 4, it adds no line 5
    assert card["totals"]["rows_in"] == 4


def test_empty_file_gives_empty_outputs(tmp_path):
    card, kept, quarantined = run(tmp_path, {"empty": b""})
    assert (kept, quarantined) == ([], [])
    assert card["totals"] == {"rows_in": 0, "kept": 0, "quarantined": {}}
    assert pq.read_schema(tmp_path / "out" / "kept.parquet").names == ["id", "source", "file", "line", "prompt",
                                                                       "response"]


def test_dedup_keeps_the_first_by_recipe_order_and_counts_reconcile(tmp_path):
    files = {"zeta": sft("Shared", "x") + b"\n" + sft("Only zeta", "z") + b"\n{bad\n",
             "alpha": sft("Only alpha", "a") + b"\n" + sft("shared", "X") + b"\n"}
    card, kept, quarantined = run(tmp_path, files)
    assert [(row["source"], row["line"]) for row in kept] == [("zeta", 1), ("zeta", 2), ("alpha", 1)]
    assert [row["file"] for row in kept] == [str(tmp_path / "zeta.jsonl")] * 2 + [str(tmp_path / "alpha.jsonl")]
    assert by_line(quarantined) == {3: ("invalid_json", None), 2: ("duplicate", "kept zeta:1")}
    for entry in [*card["sources"].values(), card["totals"]]:
        assert entry["rows_in"] == entry["kept"] + sum(entry["quarantined"].values())
    assert card["totals"] == {"rows_in": 5, "kept": 3, "quarantined": {"invalid_json": 1, "duplicate": 1}}


def test_dedup_and_decontaminate_can_be_switched_off(tmp_path):
    data = b"\n".join([sft("Same", "x"), sft("same", "x"), sft("Name the capital of France.", "Paris")])
    card, kept, _ = run(tmp_path, {"a": data}, dedup=False, decontaminate=False)
    assert [row["line"] for row in kept] == [1, 2, 3]
    assert card["contamination"] == []


def test_two_runs_write_identical_bytes(tmp_path):
    data = b"\n".join([sft("B", "b"), b"[1]", sft("A", "a"), sft("b", "B"), b"", sft("C", "c")] * 50)
    outputs = []
    for _ in range(2):
        run(tmp_path, {"a": data})
        outputs.append([(tmp_path / "out" / name).read_bytes() for name in ("kept.parquet", "quarantine.parquet")])
    assert outputs[0] == outputs[1]


def test_missing_file_names_the_source_before_any_work(tmp_path):
    sources = [{"id": "ok", "path": str(tmp_path / "ok.jsonl"), "format": "jsonl", "role": "sft"},
               {"id": "gone", "path": str(tmp_path / "gone.jsonl"), "format": "jsonl", "role": "sft"}]
    (tmp_path / "ok.jsonl").write_bytes(sft("A", "a"))
    with pytest.raises(CurationError, match=r"source 'gone' \(.*gone\.jsonl\): file not found"):
        curate(sources, "sft", str(tmp_path / "no-tasks.jsonl"), SETTINGS, str(tmp_path / "k.parquet"),
               str(tmp_path / "q.parquet"), str(tmp_path / "c.json"))
    sources[1] = {"id": "odd", "path": str(tmp_path / "ok.jsonl"), "format": "text", "role": "sft"}
    with pytest.raises(CurationError, match="source 'odd'.*format 'text'"):
        curate(sources, "sft", str(tmp_path / "no-tasks.jsonl"), SETTINGS, str(tmp_path / "k.parquet"),
               str(tmp_path / "q.parquet"), str(tmp_path / "c.json"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ok.jsonl"]


def test_failed_run_leaves_previous_outputs_untouched(tmp_path, monkeypatch):
    card, _, _ = run(tmp_path, {"a": sft("A", "a") + b"\n\n"})
    out = tmp_path / "out"
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    # Lose the blank lines between the query and the file: reconciliation must catch it.
    monkeypatch.setattr(curate_module, "QUARANTINE_SQL",
                        curate_module.QUARANTINE_SQL.replace("WHERE", "WHERE outcome.reason <> 'blank_line' AND"))
    with pytest.raises(CurationError, match=r"source 'a' .*: 3 rows in, but 2 kept \+ 0 quarantined"):
        run(tmp_path, {"a": sft("A", "a") + b"\n\n" + sft("B", "b")})
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no partial files either


@pytest.mark.skipif(not (REPO / "data" / "raw" / "sft.jsonl").is_file(), reason="shipped data not generated yet")
@pytest.mark.parametrize("role, name, built_with", [
    ("sft", "sft.jsonl", {"invalid_json", "not_object", "missing_field", "wrong_type", "empty_field",
                          "contaminated", "duplicate"}),
    ("preference", "preference.jsonl", {"invalid_json", "not_object", "missing_field", "chosen_equals_rejected",
                                        "duplicate"}),
])
def test_shipped_data(tmp_path, role, name, built_with):
    """The committed sample data carries deliberate dirt (see tunesmith.sample_data); curation finds all of it."""
    path = REPO / "data" / "raw" / name
    card = curate([{"id": role, "path": str(path), "format": "jsonl", "role": role}], role,
                  str(REPO / "data" / "tasks.jsonl"), {**SETTINGS, "max_prompt_chars": 2048, "max_response_chars": 2048},
                  str(tmp_path / "kept.parquet"), str(tmp_path / "quarantine.parquet"), str(tmp_path / "card.json"))
    totals = card["totals"]
    assert totals["rows_in"] == len(path.read_bytes().splitlines()) > 0
    assert totals["rows_in"] == totals["kept"] + sum(totals["quarantined"].values())
    assert built_with <= set(totals["quarantined"]), totals
    assert pq.read_table(tmp_path / "kept.parquet").num_rows == totals["kept"] > 0
