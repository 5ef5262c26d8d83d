"""Curation: every reason code from a crafted line, exact line accounting, order, determinism, atomicity."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tunesmith.data.curate as curate_module
import tunesmith.data.near_dup as near_dup
from tunesmith.data.card import render_markdown
from tunesmith.data.curate import REASONS, CurationError, curate
from tunesmith.data.normalize import match_key
from tunesmith.jobs.atomic import remove_stale_partials

REPO = Path(__file__).resolve().parents[1]
# validation_fraction 0 keeps the crafted rows' split predictable; the split has its own test.
SETTINGS = {"max_prompt_chars": 40, "max_response_chars": 20, "dedup": True, "decontaminate": True,
            "validation_fraction": 0, "min_kept_share": 0}
FILTER_REASONS = {"too_short", "too_few_tokens", "too_many_tokens", "not_japanese", "blocked", "repetitive",
                  "near_duplicate", "downsampled", "over_cap"}
TASKS = [{"task_id": 7, "input": "Name the capital of France."},
         {"task_id": 9, "input": "次の語を翻訳してください。_x000D_\nりんご"}]


def sft(instruction, output, **extra) -> bytes:
    return json.dumps({"instruction": instruction, **extra, "output": output}, ensure_ascii=False).encode()


def pair(prompt, chosen, rejected) -> bytes:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False).encode()


def run(tmp_path, files, role="sft", seed=0, extra=None, memory_limit=None, threads=1, **settings):
    """Curate `files` ({source id: bytes}, recipe order) and return (card, kept rows, quarantined rows)."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(task, ensure_ascii=False) + "\n" for task in TASKS), encoding="utf-8")
    sources = []
    for source_id, data in files.items():
        (tmp_path / f"{source_id}.jsonl").write_bytes(data)
        sources.append({"id": source_id, "path": str(tmp_path / f"{source_id}.jsonl"), "format": "jsonl", "role": role,
                        **(extra or {}).get(source_id, {})})
    out = tmp_path / "out"
    card = curate(sources, role, str(tasks), {**SETTINGS, **settings},
                  str(out / "kept.parquet"), str(out / "quarantine.parquet"), str(out / "card.json"), seed=seed,
                  memory_limit=memory_limit, threads=threads)
    for entry in [*card["sources"].values(), card["totals"]]:  # every record is kept or quarantined, once
        assert entry["rows_in"] == entry["kept"] + sum(entry["quarantined"].values())
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
        b' \t{"instruction": "Say hi", "output": "Hi"}',               # 23 JSON's white space before the object
        b'\t [1, 2]',                                                  # 24 ... or before another value
        sft("42", "true", input="null"),                               # 25 strings that read like JSON of other types
        sft(True, "Hi"),                                               # 26
        sft("Say hi", {"a": "b"}),                                     # 27
        sft("[1, 2]", '{"a": 1}', input="-0.5"),                       # 28
        b'{"instruction": "Say hi", "output": NaN}',                   # 29 Python's parser takes no NaN
    ]
    card, kept, quarantined = run(tmp_path, {"mixed": b"\n".join(lines) + b"\n"})
    assert [row["line"] for row in kept] == [1, 25, 28]
    assert [(row["prompt"], row["response"]) for row in kept[1:]] == [("42\nnull", "true"), ("[1, 2]\n-0.5", '{"a": 1}')]
    assert by_line(quarantined) == {
        2: ("invalid_json", None), 3: ("not_object", "array"), 4: ("not_object", "varchar"),
        5: ("missing_field", "instruction"), 6: ("missing_field", "output=null"),
        7: ("wrong_type", "instruction: ubigint"), 8: ("wrong_type", "output: array"),
        9: ("wrong_type", "input: ubigint"), 10: ("empty_field", "output"), 11: ("empty_field", "instruction"),
        12: ("blank_line", None), 13: ("blank_line", None), 14: ("blank_line", None),
        15: ("invalid_utf8", "invalid start byte at byte 17"), 16: ("too_long", "prompt 41"),
        17: ("too_long", "output 21"), 18: ("contaminated", "task_id 7 (overlap 1.0)"), 19: ("contaminated", "task_id 9 (overlap 1.0)"),
        20: ("duplicate", "kept mixed:1"), 21: ("invalid_json", None), 22: ("duplicate", "kept mixed:1"),
        23: ("duplicate", "kept mixed:1"), 24: ("not_object", "array"), 26: ("wrong_type", "instruction: boolean"),
        27: ("wrong_type", "output: object"), 29: ("invalid_json", "NaN is not JSON"),
    }
    assert quarantined[13]["raw"] == '{"instruction": "\ufffd\ufffd", "output": "Hi"}'  # line 15, replaced
    file = str(tmp_path / "mixed.jsonl")
    assert card["contamination"] == [{"source": "mixed", "file": file, "line": 18, "task_id": 7, "overlap": 1.0},
                                     {"source": "mixed", "file": file, "line": 19, "task_id": 9, "overlap": 1.0}]
    assert card["sources"]["mixed"]["rows_in"] == 29
    assert [example["raw"] for example in card["examples"]["blank_line"]] == ["  \t", "", "\u3000"]
    assert set(card["totals"]["quarantined"]) == set(REASONS) - {
        "chosen_equals_rejected", "wrong_column_count", "bad_conversation", "judge_invalid", "judge_tie",
        "judge_disagree", "malformed_csv", "duplicate_key", "control_characters", "replacement_character",
    } - FILTER_REASONS  # CSV rows, record styles and issue 19's characters and keys: tests/test_ingest.py


def test_preference_reasons_compare_normalised_answers(tmp_path):
    lines = [pair("Q1", "good", "bad"), pair("Q2", "same", "same"), pair("Q3", "ＳＡＭＥ ", "SAME"),
             pair("Q4", "Same", "same"), b'{"prompt": "Q5", "chosen": "a"}', pair("Q1", "good", "bad"),
             pair("Name the capital of France.", "Paris", "Rome")]
    card, kept, quarantined = run(tmp_path, {"prefs": b"\n".join(lines)}, role="preference")
    assert [(row["line"], row["prompt"], row["chosen"], row["rejected"]) for row in kept] == [
        (1, "Q1", "good", "bad"), (4, "Q4", "Same", "same")]  # case differs: still a preference
    assert by_line(quarantined) == {2: ("chosen_equals_rejected", None), 3: ("chosen_equals_rejected", None),
                                    5: ("missing_field", "rejected"), 6: ("duplicate", "kept prefs:1"),
                                    7: ("contaminated", "task_id 7 (overlap 1.0)")}
    assert set(kept[0]) == {"id", "source", "file", "line", "prompt", "chosen", "rejected", "split"}


def test_kept_text_is_cleaned_of_noise_only_and_id_is_the_dedup_key_hash(tmp_path):
    lines = [b'{"instruction": "Line one_x000D_\\r\\nline two", "input": " ctx\\u200b ", "output": "ok\\r\\n"}\r',
             sft("ｆｕｌｌ  width", "ＯＫ")]
    _, kept, _ = run(tmp_path, {"a": b"\n".join(lines)})
    assert [(row["prompt"], row["response"]) for row in kept] == [
        ("Line one\nline two\n ctx", "ok"), ("ｆｕｌｌ  width", "ＯＫ")]
    # The id hashes the match keys (normalised): the same as for the normalised text.
    assert kept[0]["id"] == hashlib.sha256(f"{match_key('Line one line two ctx')}\n{match_key('ok')}".encode()).hexdigest()
    assert list(kept[0]) == ["id", "source", "file", "line", "prompt", "response", "split"]
    # curate.normalize_training_text brings the normalised training text back; keys and ids do not move.
    _, normalised, _ = run(tmp_path, {"a": b"\n".join(lines)}, normalize_training_text=True)
    assert [(row["prompt"], row["response"]) for row in normalised] == [
        ("Line one\nline two\nctx", "ok"), ("full width", "OK")]
    assert [row["id"] for row in normalised] == [row["id"] for row in kept]


# A curated answer as a user writes it: indented code, full-width punctuation, a circled number,
# nested markdown. Every character of it must reach the training rows.
CODE_PROMPT = "次の関数を説明してください！（例①）\n```python\ndef f0(x):\n    if x > 0：\n        return x\n```"
CODE_ANSWER = ("この関数は次のように動きます：\n\n1. 引数を調べます？\n   - 正なら：\n     - そのまま返します\n"
               "```python\ndef f0(x):\n    if x > 0:\n        return x  # ①\n    return None\n```")


def test_code_full_width_circled_numbers_and_markdown_reach_the_training_rows_unchanged(tmp_path):
    lines = [sft(CODE_PROMPT + "_x000D_\r\n", "\n" + CODE_ANSWER + "\u200b\r\n"),
             # the same row but for width and spacing: an exact copy once normalised
             sft(CODE_PROMPT.replace("！（", "!(").replace("    ", " "), CODE_ANSWER.replace("：", ":")),
             # a near copy (an extra sentence) under the width variants: near dedup sees through them
             sft(CODE_PROMPT.replace("！", "!"), CODE_ANSWER.replace("？", "?") + "\n以上です。"),
             # a task input, full-width: decontamination compares normalised forms
             sft("Ｎａｍｅ　ｔｈｅ　ｃａｐｉｔａｌ　ｏｆ　Ｆｒａｎｃｅ．", "Paris")]
    card, kept, quarantined = run(tmp_path, {"code": b"\n".join(lines)}, max_prompt_chars=400, max_response_chars=400,
                               near_dedup={"threshold": 0.7})
    assert [(row["prompt"], row["response"]) for row in kept] == [(CODE_PROMPT, CODE_ANSWER)]
    reasons = {line: reason for line, (reason, _) in by_line(quarantined).items()}
    assert reasons == {2: "duplicate", 3: "near_duplicate", 4: "contaminated"}
    # The data card shows the kept row as it will be trained, in a fence longer than its own.
    assert [(row["prompt"], row["response"]) for row in card["kept_examples"]] == [(CODE_PROMPT, CODE_ANSWER)]
    markdown = render_markdown(card)
    for text in (CODE_PROMPT, CODE_ANSWER):
        assert "  ````text\n" + "\n".join(f"  {line}" if line else "" for line in text.split("\n")) + "\n  ````" in markdown


def test_line_accounting_bom_crlf_and_trailing_newline(tmp_path):
    data = b"\xef\xbb\xbf" + sft("A", "a") + b"\r\n" + sft("B", "b") + b"\r\n\r\n" + sft("C", "c")
    card, kept, quarantined = run(tmp_path, {"crlf": data})
    assert [(row["line"], row["prompt"]) for row in kept] == [(1, "A"), (2, "B"), (4, "C")]
    assert by_line(quarantined) == {3: ("blank_line", None)}
    assert card["sources"]["crlf"] == {"path": str(tmp_path / "crlf.jsonl"), "format": "jsonl", "style": "alpaca",
                                       "files": 1, "weight": 1, "max_rows": None, "rows_in": 4, "kept": 3,
                                       "written": {"train": 3, "validation": 0}, "quarantined": {"blank_line": 1}}
    card, _, _ = run(tmp_path, {"crlf": data + b"\r\n"})  # a final newline ends line 4, it adds no line 5
    assert card["totals"]["rows_in"] == 4


def test_empty_file_fails_since_the_role_would_keep_nothing(tmp_path):
    with pytest.raises(CurationError, match=r"curation of role 'sft' keeps no rows:\n  source 'empty' .*kept 0 of 0"):
        run(tmp_path, {"empty": b""})
    assert not (tmp_path / "out" / "kept.parquet").exists()


def test_dedup_keeps_the_first_by_recipe_order_and_counts_reconcile(tmp_path):
    files = {"zeta": sft("Shared", "x") + b"\n" + sft("Only zeta", "z") + b"\n{bad\n",
             "alpha": sft("Only alpha", "a") + b"\n" + sft("shared", "X") + b"\n"}
    card, kept, quarantined = run(tmp_path, files)
    assert [(row["source"], row["line"]) for row in kept] == [("zeta", 1), ("zeta", 2), ("alpha", 1)]
    assert [row["file"] for row in kept] == [str(tmp_path / "zeta.jsonl")] * 2 + [str(tmp_path / "alpha.jsonl")]
    assert by_line(quarantined) == {3: ("invalid_json", None), 2: ("duplicate", "kept zeta:1")}
    for entry in [*card["sources"].values(), card["totals"]]:
        assert entry["rows_in"] == entry["kept"] + sum(entry["quarantined"].values())
    assert card["totals"] == {"rows_in": 5, "kept": 3, "written": {"train": 3, "validation": 0},
                              "quarantined": {"invalid_json": 1, "duplicate": 1}}


def test_dedup_and_decontaminate_can_be_switched_off(tmp_path):
    data = b"\n".join([sft("Same", "x"), sft("same", "x"), sft("Name the capital of France.", "Paris")])
    card, kept, _ = run(tmp_path, {"a": data}, dedup=False, decontaminate=False, near_dedup={"enabled": False})
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
    """The committed sample data carries deliberate dirt (see tests/sample_data.py); curation finds all of it."""
    path = REPO / "data" / "raw" / name
    card = curate([{"id": role, "path": str(path), "format": "jsonl", "role": role}], role,
                  str(REPO / "data" / "tasks.jsonl"), {**SETTINGS, "max_prompt_chars": 2048, "max_response_chars": 2048},
                  str(tmp_path / "kept.parquet"), str(tmp_path / "quarantine.parquet"), str(tmp_path / "card.json"))
    totals = card["totals"]
    assert totals["rows_in"] == len(path.read_bytes().splitlines()) > 0
    assert totals["rows_in"] == totals["kept"] + sum(totals["quarantined"].values())
    assert built_with <= set(totals["quarantined"]), totals
    assert pq.read_table(tmp_path / "kept.parquet").num_rows == totals["kept"] > 0


# ---- content filters --------------------------------------------------------------------------------

def test_length_token_script_block_and_repetition_filters_name_field_and_measure(tmp_path):
    lines = [
        sft("東京について教えてください。", "東京は日本の首都です。"),                 # 1 kept
        sft("短い", "東京は日本の首都です。"),                                         # 2 prompt 2 chars < 3
        sft("東京について教えてください。", "はい"),                                   # 3 output 2 chars < 3
        sft("東京について教えて。" * 3, "東京は日本の首都です。"),                    # 4 27 + ceil(3 / 4) > 20
        sft("Tell me about Tokyo, please.", "東京は日本の首都です。"),                 # 5 no Japanese letters
        sft("1+2=?", "3です。"),                                                       # 6 no letters: not judged
        sft("東京について教えてください。", "あ" * 24),                                # 7 one character
        sft("東京について教えてください。", "東京です。" * 5),                         # 8 one 5-gram covers all
        sft("東京について教えてください。", "ああああ"),                               # 9 too short to judge
        sft("東京について教えてください。", "秘密のパスワードは1234です。"),           # 10 blocked
        sft("Explain　ＴＯＫＹＯ　ＴＯＷＥＲ please", "あ" * 30),                      # 11 first reason only
    ]
    card, kept, quarantined = run(tmp_path, {"f": b"\n".join(lines)}, max_prompt_chars=100, max_response_chars=100,
                                  min_prompt_chars=3, min_response_chars=3, tokens={"max_prompt": 20},
                                  japanese={"min_share": 0.5}, block_patterns=["パスワード"],
                                  repetition={"min_copies": 5, "min_share": 0.6, "max_unit_chars": 10,
                                              "min_chars": 10})
    assert [row["line"] for row in kept] == [1, 6, 9]
    assert by_line(quarantined) == {
        2: ("too_short", "prompt 2"), 3: ("too_short", "output 2"), 4: ("too_many_tokens", "prompt 28 tokens"),
        5: ("not_japanese", "prompt 0.0"), 7: ("repetitive", "output: 'あ' repeated 24 times in a row, covering 1.0"),
        8: ("repetitive", "output: '東京です。' repeated 5 times in a row, covering 1.0"),
        10: ("blocked", "output matches 'パスワード'"), 11: ("not_japanese", "prompt 0.0"),
    }


def test_japanese_share_judges_the_configured_fields_and_filters_judge_the_chosen_answer(tmp_path):
    lines = [pair("日本の首都はどこですか？", "東京です。", "It is Osaka, obviously."),    # 1 rejected: not judged
             pair("日本の首都はどこですか？", "Tokyo.", "大阪です。"),                    # 2 chosen judged
             pair("日本の首都は？", "東京です。", "ああああああああああああああああああああああ")]  # 3 kept
    _, kept, quarantined = run(tmp_path, {"p": b"\n".join(lines)}, role="preference", max_response_chars=100,
                               japanese={"min_share": 0.5, "fields": "response"}, repetition={"min_chars": 5})
    assert [row["line"] for row in kept] == [1, 3]
    assert by_line(quarantined) == {2: ("not_japanese", "chosen 0.0")}
    _, kept, _ = run(tmp_path, {"p": b"\n".join(lines)}, role="preference", max_response_chars=100,
                     japanese={"min_share": 0.5})
    assert [row["line"] for row in kept] == [1, 2, 3]  # prompts only (the default)


def test_token_estimate_counts_japanese_characters_and_a_quarter_of_the_rest(tmp_path):
    lines = [sft("東京", "abcd efgh i"), sft("東京都", "abcd")]  # output: 9 visible non-Japanese → 3 tokens
    _, kept, quarantined = run(tmp_path, {"t": b"\n".join(lines)}, tokens={"min_prompt": 3, "max_response": 2})
    assert by_line(quarantined) == {1: ("too_few_tokens", "prompt 2 tokens")}
    _, _, quarantined = run(tmp_path, {"t": b"\n".join(lines)}, tokens={"max_response": 2})
    assert by_line(quarantined) == {1: ("too_many_tokens", "output 3 tokens")}


def test_a_broken_block_pattern_names_the_setting(tmp_path):
    with pytest.raises(CurationError, match="curate.block_patterns"):
        run(tmp_path, {"a": sft("東京", "首都")}, block_patterns=["(unclosed"])


# ---- near duplicates --------------------------------------------------------------------------------

LONG = "東京は日本の首都で、たくさんの人が住んでいます。電車やバスがとても便利で、古いお寺や新しい建物もあります。"


def test_near_duplicates_cluster_and_keep_the_first_by_source_order(tmp_path):
    files = {
        "first": b"\n".join([sft("要約してください。", "全く別の話です。" + "ねこが好きです。" * 3),   # 1 unrelated
                             sft("要約してください。", LONG + "!")]),                            # 2 cluster member
        "second": b"\n".join([sft("要約してください。", LONG),                                    # 1 cluster member
                              sft("要約してください。", "「" + LONG + "」"),                      # 2 cluster member
                              sft("要約してください。", LONG[:30])]),                             # 3 too different
    }
    card, kept, quarantined = run(tmp_path, files, max_response_chars=200)
    assert [(row["source"], row["line"]) for row in kept] == [("first", 1), ("first", 2), ("second", 3)]
    details = {(row["source"], row["line"]): row["detail"] for row in quarantined}
    assert set(details) == {("second", 1), ("second", 2)}
    assert all(detail.startswith("kept first:2 (cluster 1, Jaccard 0.") for detail in details.values())
    [cluster] = card["near_duplicate_clusters"]["listed"]
    assert cluster["size"] == 3 and cluster["kept"] == {"source": "first", "file": str(tmp_path / "first.jsonl"),
                                                        "line": 2}
    assert [(member["source"], member["line"]) for member in cluster["members"]] == [("second", 1), ("second", 2)]
    assert all(0.8 <= member["jaccard"] <= 1 for member in cluster["members"])
    assert card["totals"]["quarantined"] == {"near_duplicate": 2}
    card, kept, _ = run(tmp_path, files, max_response_chars=200, near_dedup={"enabled": False})
    assert len(kept) == 5 and card["near_duplicate_clusters"]["count"] == 0


def test_near_duplicate_settings_are_checked(tmp_path):
    with pytest.raises(CurationError, match=r"curate\.near_dedup\.permutations: 100 is not a multiple of "
                                            r"curate\.near_dedup\.bands \(16\)"):
        run(tmp_path, {"a": sft("東京", "首都")}, near_dedup={"permutations": 100})


# ---- decontamination by n-gram overlap --------------------------------------------------------------

def test_decontamination_by_ngram_overlap_lists_every_matched_task(tmp_path):
    lines = [
        sft("Please: name the capital of France.", "Paris"),        # 1 holds every n-gram of task 7
        sft("Name the capital of France", "Paris"),                 # 2 misses 1 of 11 13-grams (0.91)
        sft("Name the capital of Spain.", "Madrid"),                 # 3 shares the phrasing only
        sft("Tell me", "りんご"),                                     # 4 task 5 is shorter than n: only equality
        sft("りんご", "apple"),                                       # 5 equals task 5
        sft("Name the capital of France. 次の語を翻訳してください。りんご", "x"),  # 6 two tasks
    ]
    global TASKS
    saved = TASKS
    TASKS = saved + [{"task_id": 5, "input": "りんご"}]
    try:
        card, kept, quarantined = run(tmp_path, {"c": b"\n".join(lines)}, max_prompt_chars=100,
                                      decontamination={"ngram": 13, "threshold": 0.9})
    finally:
        TASKS = saved
    assert [row["line"] for row in kept] == [3]
    assert by_line(quarantined) == {
        1: ("contaminated", "task_id 7 (overlap 1.0)"), 2: ("contaminated", "task_id 7 (overlap 0.91)"),
        4: ("contaminated", "task_id 5 (overlap 1.0)"), 5: ("contaminated", "task_id 5 (overlap 1.0)"),
        6: ("contaminated", "task_id 7 (overlap 1.0), task_id 9 (overlap 1.0)")}
    assert [(match["line"], match["task_id"]) for match in card["contamination"]] == [
        (1, 7), (2, 7), (4, 5), (5, 5), (6, 7), (6, 9)]


# ---- mixing and the split ---------------------------------------------------------------------------

def _rows(prefix, count):
    return b"\n".join(sft(f"{prefix}の質問{index}番", f"答え{index}") for index in range(count))


def test_weights_caps_and_split_are_deterministic_and_reconciled(tmp_path):
    files = {"small": _rows("小", 200), "big": _rows("大", 400), "double": _rows("倍", 100)}
    extra = {"small": {"weight": 0.5}, "big": {"max_rows": 150}, "double": {"weight": 2}}
    card, kept, quarantined = run(tmp_path, files, extra=extra, validation_fraction=0.2, near_dedup={"enabled": False})
    small, big, double = (card["sources"][name] for name in ("small", "big", "double"))
    assert 70 <= small["kept"] <= 130 and small["quarantined"] == {"downsampled": 200 - small["kept"]}
    assert big["kept"] == 150 and big["quarantined"] == {"over_cap": 250}
    assert double["kept"] == 100 and double["written"]["train"] == 2 * (100 - double["written"]["validation"])
    assert {row["detail"] for row in quarantined} == {"weight 0.5", "max_rows 150"}
    assert len(kept) == sum(sum(entry["written"].values()) for entry in card["sources"].values())
    shares = Counter(row["split"] for row in kept if row["source"] != "double")
    assert 0.1 < shares["validation"] / (shares["validation"] + shares["train"]) < 0.3
    # The same seed picks the same rows; another seed others.
    again, kept_again, _ = run(tmp_path, files, extra=extra, validation_fraction=0.2, near_dedup={"enabled": False})
    assert kept_again == kept
    _, kept_other, _ = run(tmp_path, files, extra=extra, seed=1, validation_fraction=0.2,
                           near_dedup={"enabled": False})
    assert {(row["source"], row["line"], row["split"]) for row in kept_other} != {
        (row["source"], row["line"], row["split"]) for row in kept}


@pytest.mark.parametrize("weight", [1.5, 2.5])
def test_a_weight_above_one_writes_train_rows_again_in_place_by_the_mixing_draw(tmp_path, weight):
    """Weight 1.5 (2.5): each train row once (twice), and once more where the mixing draw falls under 0.5, the very
    draw that keeps a row at weight 0.5; the copies side by side, in recipe order; validation rows once; the same
    file on two threads."""
    files = {"up": _rows("増", 200), "plain": _rows("並", 100)}
    common = {"validation_fraction": 0.2, "near_dedup": {"enabled": False}}
    card, kept, _ = run(tmp_path, files, extra={"up": {"weight": weight}, "plain": {"weight": 0.9}}, seed=4, **common)
    _, halved, _ = run(tmp_path, files, extra={"up": {"weight": 0.5}, "plain": {"weight": 0.9}}, seed=4, **common)
    _, threaded, _ = run(tmp_path, files, extra={"up": {"weight": weight}, "plain": {"weight": 0.9}}, seed=4,
                         threads=2, **common)
    assert threaded == kept
    runs = []  # (source, line, split, copies) as the file holds them, a run of equal rows at a time
    for row in kept:
        if runs and tuple(runs[-1][:3]) == (row["source"], row["line"], row["split"]):
            runs[-1][3] += 1
        else:
            runs.append([row["source"], row["line"], row["split"], 1])
    plain = [line for source, line, _, _ in runs if source == "plain"]  # weight 0.9: some downsampled
    assert [(source, line) for source, line, _, _ in runs] == (
        [("up", line) for line in range(1, 201)] + [("plain", line) for line in plain])  # each row one run
    assert plain == sorted(plain) and 60 < len(plain) < 100
    copies = {(source, line): (split, n) for source, line, split, n in runs}
    assert all(n == 1 for (source, _), (split, n) in copies.items() if source == "plain" or split == "validation")
    whole = int(weight)
    more = {line for (source, line), (split, n) in copies.items() if source == "up" and n == whole + 1}
    train = {line for (source, line), (split, _) in copies.items() if source == "up" and split == "train"}
    assert {n for (source, _), (split, n) in copies.items() if source == "up" and split == "train"} == {whole, whole + 1}
    assert 0.3 < len(more) / len(train) < 0.7
    assert more == {row["line"] for row in halved if row["source"] == "up" and row["split"] == "train"}
    assert card["sources"]["up"]["written"] == {"train": whole * len(train) + len(more), "validation": 200 - len(train)}


def test_a_rows_split_does_not_move_when_other_rows_come(tmp_path):
    _, before, _ = run(tmp_path, {"a": _rows("甲", 100)}, validation_fraction=0.3, near_dedup={"enabled": False})
    _, after, _ = run(tmp_path, {"a": _rows("甲", 100) + b"\n" + _rows("乙", 100)}, validation_fraction=0.3,
                      near_dedup={"enabled": False})
    split_of = {row["id"]: row["split"] for row in after}
    assert {row["id"]: row["split"] for row in before}.items() <= split_of.items()
    assert set(split_of.values()) == {"train", "validation"}


# ---- the card ---------------------------------------------------------------------------------------

def test_card_markdown_and_length_histograms(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"\n".join([sft("東京について", "首都です。"), b"{broken",
                                                   sft("東京について", "首都です。")]))
    out = tmp_path / "out"
    card = curate([{"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}], "sft", str(tmp_path / "none"),
                  {"decontaminate": False}, str(out / "k.parquet"), str(out / "q.parquet"), str(out / "c.json"),
                  seed=3, card_markdown_path=str(out / "c.md"), lengths_plot_path=str(out / "lengths.png"))
    markdown = (out / "c.md").read_text(encoding="utf-8")
    assert "| a | jsonl | alpaca | 1 | 1 |" in markdown and "![Length histograms](lengths.png)" in markdown
    assert "### Quarantined: invalid_json" in markdown and "### Quarantined: duplicate" in markdown
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert card["lengths"]["prompt"]["chars"] == {"count": 1, "min": 6, "p50": 6, "p90": 6, "p99": 6, "max": 6,
                                                  "mean": 6.0}
    assert card["kept_examples"] == [{"source": "a", "file": str(tmp_path / "a.jsonl"), "line": 1, "split": "train",
                                      "prompt": "東京について", "response": "首都です。"}]


@pytest.mark.skipif(not (REPO / "data" / "raw" / "sft.jsonl").is_file(), reason="shipped data not generated yet")
def test_default_recipe_cleans_the_planted_filter_rows(tmp_path):
    """The default recipe's card shows each content filter at work on the shipped data, and no
    more contamination than was planted (a row sharing only a task's template is not a copy)."""
    from tunesmith.config.recipe import load_recipe
    from sample_data import SFT_CONTAMINATION_ROWS, SFT_FILTER_ROWS

    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    card = curate(recipe["sources"], "sft", str(REPO / "data" / "tasks.jsonl"), recipe["curate"],
                  str(tmp_path / "k.parquet"), str(tmp_path / "q.parquet"), str(tmp_path / "c.json"), seed=recipe["seed"])
    quarantined = card["totals"]["quarantined"]
    assert quarantined["contaminated"] == SFT_CONTAMINATION_ROWS
    assert quarantined["not_japanese"] == len(SFT_FILTER_ROWS["english_prompt"])
    assert quarantined["repetitive"] == len(SFT_FILTER_ROWS["degenerate_output"])
    planted = {(cluster["kept"]["line"], len(cluster["members"])) for cluster in card["near_duplicate_clusters"]["listed"]}
    assert quarantined["near_duplicate"] >= 1 and planted
    assert 0 < card["totals"]["written"]["validation"] < card["totals"]["written"]["train"]


def test_card_shows_kept_and_dropped_lengths_and_the_max_length_cut(tmp_path):
    lines = [sft("東京について", "首都です。"), sft("大阪について教えてください", "大きな町です。" * 3),
             sft("Tell me", "東京です。"), b"{broken"]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    card = curate([{"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}], "sft", str(tmp_path / "none"),
                  {"decontaminate": False, "japanese": {"min_share": 0.5}, "min_kept_share": 0}, str(out / "k.parquet"),
                  str(out / "q.parquet"), str(out / "c.json"), max_length=20,
                  card_markdown_path=str(out / "c.md"), lengths_plot_path=str(out / "lengths.png"))
    # Estimated tokens (。 is not a Japanese character): 6 + 4 + 1 = 11; 13 + 18 + ceil(3 / 4) = 32 > 20.
    assert card["lengths"]["total"]["tokens"]["max"] == 32 and card["lengths"]["total"]["tokens"]["count"] == 2
    assert card["lengths_dropped"]["prompt"]["chars"]["count"] == 1  # the English prompt; the broken line has none
    assert card["tokens"] == {"counted_by": "estimate", "tokenizer": None, "why": None, "max_length": 20,
                              "kept_over_max_length": 1}
    assert "1 kept rows have more tokens" in (out / "c.md").read_text(encoding="utf-8")
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tokens_can_be_counted_by_the_base_models_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.model.base_model import train_tokenizer

    folder = tmp_path / "tokenizer"
    train_tokenizer([str(REPO / "data" / "raw" / "pretrain.txt")], vocab_size=600, out_dir=folder)
    encode = AutoTokenizer.from_pretrained(folder)
    prompt, response = "東京について教えてください。", "東京は日本の首都です。"
    (tmp_path / "a.jsonl").write_bytes(sft(prompt, response) + b"\n" + sft("短い", "x" * 30))
    counts = [len(encode(text, add_special_tokens=False)["input_ids"]) for text in (prompt, response, "x" * 30)]
    limit = counts[2] - 1  # the second row's response is one token too long, by the tokenizer
    card = curate([{"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}], "sft", str(tmp_path / "none"),
                  {"decontaminate": False, "min_kept_share": 0, "tokens": {"max_response": limit}},
                  str(tmp_path / "k.parquet"), str(tmp_path / "q.parquet"), str(tmp_path / "c.json"),
                  tokenizer=str(folder))
    assert card["tokens"]["counted_by"] == "tokenizer"
    assert card["lengths"]["prompt"]["tokens"]["max"] == counts[0]
    assert card["lengths"]["response"]["tokens"]["max"] == counts[1]
    assert card["totals"]["quarantined"] == {"too_many_tokens": 1}
    # Not available locally: the estimate, and the card says why.
    card = curate([{"id": "a", "path": str(tmp_path / "a.jsonl"), "role": "sft"}], "sft", str(tmp_path / "none"),
                  {"decontaminate": False, "min_kept_share": 0}, str(tmp_path / "k.parquet"),
                  str(tmp_path / "q.parquet"), str(tmp_path / "c.json"), tokenizer="nobody/no-such-model")
    assert card["tokens"]["counted_by"] == "estimate" and "not available locally" in card["tokens"]["why"]


def test_token_counts_are_the_tokenizers_for_each_text_with_or_without_its_batch_encoder(tmp_path):
    """Counted once per distinct text, by the fast tokenizer's batch encoder or, for a tokenizer without one, by
    calling it: the same counts as the tokenizer gives each text alone; nulls stay null."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from tunesmith.data.curate_checks import _token_counts
    from tunesmith.model.base_model import train_tokenizer

    folder = tmp_path / "tokenizer"
    train_tokenizer([str(REPO / "data" / "raw" / "pretrain.txt")], vocab_size=600, out_dir=folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["東京について教えてください。", None, "", "東京について教えてください。", "  indented\n\tcode ①", "x" * 30]
    expected = [None if text is None else len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    assert len(set(expected) - {None, 0}) >= 3  # texts of different lengths

    class Called:  # a tokenizer that can only be called (as a Python tokenizer is)
        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

    assert hasattr(tokenizer.backend_tokenizer, "encode_batch_fast")
    for counting in (tokenizer, Called()):
        assert _token_counts(counting, pa.array(texts, pa.string())).to_pylist() == expected
        assert _token_counts(counting, pa.chunked_array([pa.array(texts[:2]), pa.array(texts[2:])])).to_pylist() == expected
    assert _token_counts(tokenizer, pa.array([], pa.string())).to_pylist() == []
    unique = [f"行 {index}: def f():\n    return {index} ①" for index in range(10)] + [None]  # every text distinct
    assert _token_counts(tokenizer, pa.array(unique)).to_pylist() == [
        None if text is None else len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in unique]


def _corpus(rows: int) -> bytes:
    """Distinct Japanese rows with exact and normalised copies and a little dirt, deterministic."""
    lines = []
    for index in range(rows):
        if index % 10 == 3:
            lines.append(lines[index // 2])  # an exact copy of an earlier line
        elif index % 10 == 7:
            lines.append(sft(f"質問 {index // 3} について教えて。 ", f"答え{index // 3}です。".upper()))
        elif index % 97 == 0:
            lines.append(b"{broken")
        else:
            lines.append(sft(f"質問 {index} について教えて。", f"答え{index}です。" + "説明" * (index % 5)))
    return b"\n".join(lines) + b"\n"


def test_a_corpus_larger_than_the_memory_limit_spills_and_writes_what_an_unlimited_run_writes(tmp_path, monkeypatch):
    """curate.memory_limit below what the corpus needs: DuckDB spills (beside the outputs, not in TMPDIR),
    the near-duplicate pass signs a range of rows at a time, and the files are byte for byte those of a run
    with memory to spare; the spill folder is gone after."""
    data = _corpus(60_000)
    assert len(data) > 3 * 2**20
    spilled = {}
    classify = curate_module.classify

    def measured(con, *args):
        classify(con, *args)
        spilled[len(spilled)] = con.execute("SELECT coalesce(sum(size), 0), list(path) FROM duckdb_temporary_files()"
                                            ).fetchall()[0]
    monkeypatch.setattr(curate_module, "classify", measured)
    at_once, flagged_at_once = [], near_dup._hashed_and_flagged  # the near-duplicate pass's signing at once
    monkeypatch.setattr(near_dup, "_hashed_and_flagged", lambda *args: at_once.append(1) or flagged_at_once(*args))
    written = []
    # 24 MB spills 6-7 MB here (16 MB is too small); 36 MB spilled 0.6-2.6 MB once dedup stopped copying every row
    for limit in ("24MB", "4GB"):
        card, kept, quarantined = run(tmp_path, {"a": data}, memory_limit=limit,
                                      max_prompt_chars=2048, max_response_chars=2048)
        assert len(at_once) == (limit == "4GB")  # the near-duplicate pass signs a range at a time under 24 MB
        out = tmp_path / "out"
        assert sorted(path.name for path in out.iterdir()) == ["card.json", "kept.parquet", "quarantine.parquet"]
        written.append([(out / name).read_bytes() for name in ("kept.parquet", "quarantine.parquet", "card.json")])
    small, large = spilled[0], spilled[1]
    assert small[0] > 2**20 and all(path.startswith(str(tmp_path / "out" / ".kept.parquet.spill-")) for path in small[1])
    assert large[0] == 0
    assert written[0] == written[1]
    assert card["totals"]["kept"] > 20_000 and card["totals"]["quarantined"]["duplicate"] > 3_000, card["totals"]
    assert card["totals"]["quarantined"]["near_duplicate"] > 1_000, card["totals"]


def test_the_written_files_do_not_depend_on_the_number_of_threads(tmp_path, monkeypatch):
    """DuckDB's statements, the Parquet writes and the text batches run on `threads` threads: the files must
    be byte for byte those of one thread, over many row groups and batches (both made small here)."""
    import tunesmith.data.curate_checks as checks

    monkeypatch.setattr(curate_module, "ROW_GROUP_ROWS", 3000)  # not a multiple of DuckDB's 2048-row chunks
    monkeypatch.setattr(checks, "TEXT_BATCH_ROWS", 1500)
    data = _corpus(15_000)
    written = []
    for threads in (1, 2, 3):
        card, kept, quarantined = run(tmp_path, {"a": data}, near_dedup={"enabled": False}, threads=threads)
        out = tmp_path / "out"
        written.append([(out / name).read_bytes() for name in ("kept.parquet", "quarantine.parquet", "card.json")])
    layout = pq.ParquetFile(tmp_path / "out" / "kept.parquet").metadata
    assert layout.num_row_groups >= 5  # of exactly ROW_GROUP_ROWS rows, but the last
    assert {layout.row_group(index).num_rows for index in range(layout.num_row_groups - 1)} == {3000}
    assert written[1] == written[0] and written[2] == written[0]
    assert [row["line"] for row in kept] == sorted(row["line"] for row in kept)
    assert card["totals"]["kept"] > 8_000 and card["totals"]["quarantined"]["duplicate"] > 1_000, card["totals"]


def test_the_written_bytes_depend_on_the_rows_alone_not_on_the_batches_duckdb_hands_them_in(tmp_path, monkeypatch):
    """DuckDB hands a query's rows over in batches cut where its scan's parts end (short ones among them, as
    timing has it): the row groups are exactly ROW_GROUP_ROWS rows all the same, and the bytes are those of
    the same rows handed over in other batches (sorted: whole ones), pages of 1 MiB cut at the same rows."""
    import duckdb

    monkeypatch.setattr(curate_module, "ROW_GROUP_ROWS", 3000)
    rows = "SELECT pos, repeat(md5(pos::VARCHAR), 1 + pos % 40) AS text FROM t WHERE pos % 7 <> 0"
    written = []
    with duckdb.connect(config={"threads": 2}) as con:
        con.execute("CREATE TABLE t AS SELECT range AS pos FROM range(250000)")  # DuckDB's row groups: 122,880 rows
        for query in (rows, rows + " ORDER BY pos"):
            written.append({batch.num_rows for batch in con.sql(query).to_arrow_reader(3000)})
            curate_module._write_rows(con, query, tmp_path / "rows.parquet")
            written.append((tmp_path / "rows.parquet").read_bytes())
    assert written[0] - {3000} and written[0] != written[2]  # short batches, not the same ones
    assert written[1] == written[3]
    layout = pq.ParquetFile(tmp_path / "rows.parquet").metadata
    assert {layout.row_group(index).num_rows for index in range(layout.num_row_groups - 1)} == {3000}
    assert layout.row_group(0).column(1).total_uncompressed_size > 2**20  # more than one page
    assert pq.read_table(tmp_path / "rows.parquet")["pos"].to_pylist() == [pos for pos in range(250000) if pos % 7]


def test_the_kept_rows_keep_recipe_order_when_a_text_batch_comes_out_of_order(tmp_path, monkeypatch):
    """The kept file is one scan of `keyed`, in the order the text batches were written: each batch is put in
    pos order first (typed's joins with not_text may hand its rows out of order; here they come backwards),
    so the files are those of batches read in order."""
    import tunesmith.data.curate_checks as checks
    import tunesmith.data.curate_pipeline as pipeline

    monkeypatch.setattr(checks, "TEXT_BATCH_ROWS", 1500)
    data = _corpus(6_000)
    written, typed_sql = [], pipeline.typed_sql
    for backwards in (False, True):
        if backwards:
            monkeypatch.setattr(pipeline, "typed_sql", lambda *args: typed_sql(*args) + " ORDER BY pos DESC")
        card, kept, quarantined = run(tmp_path, {"a": data}, near_dedup={"enabled": False})
        out = tmp_path / "out"
        written.append([(out / name).read_bytes() for name in ("kept.parquet", "quarantine.parquet", "card.json")])
    assert written[1] == written[0]
    assert [row["line"] for row in kept] == sorted(row["line"] for row in kept) and len(kept) > 4_000


KILLED_CURATION = """
import os, signal, sys
import pyarrow as pa
import pyarrow as pa
import pyarrow.parquet as pq
import tunesmith.data.curate as curate_module
import tunesmith.data.near_dup as near_dup
from tunesmith.data.ingest import ingest_source
source = {"id": "a", "path": sys.argv[1], "format": "jsonl", "role": "sft"}
out = sys.argv[2]
ingest_source(source, sys.argv[3])  # the workflow's ingest job
write_table, calls = pq.ParquetWriter.write_table, []

def write_then_die(writer, *args, **kwargs):  # the kept file is written first: killed after its third row group
    write_table(writer, *args, **kwargs)
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

pq.ParquetWriter.write_table, curate_module.ROW_GROUP_ROWS = write_then_die, 2048
curate_module.curate([source], "sft", "none", {"decontaminate": False, "min_kept_share": 0}, f"{out}/kept.parquet",
                     f"{out}/quarantine.parquet", f"{out}/card.json", ingested=[sys.argv[3]], memory_limit="32MB")
"""


@pytest.mark.parametrize("failing", ["first", "last"])
def test_a_row_group_that_cannot_be_written_fails_the_curation_and_leaves_nothing(tmp_path, monkeypatch, failing):
    """Row groups are written on a second thread: a failure there (a full disk), at the first row group or
    the last, is the curation's error, and no output (nor their folder) is left."""
    write_table, calls = pq.ParquetWriter.write_table, []

    def write_or_fail(writer, table, *args, **kwargs):
        if "prompt" in table.column_names:  # the kept file's (ingest writes its cache file the same way)
            calls.append(table.num_rows)
            if (failing == "first" and len(calls) == 1) or (failing == "last" and table.num_rows < 2048):
                raise OSError(28, "No space left on device")
        return write_table(writer, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_or_fail)
    monkeypatch.setattr(curate_module, "ROW_GROUP_ROWS", 2048)
    with pytest.raises(OSError, match="No space left on device"):
        run(tmp_path, {"a": _corpus(5_000)}, near_dedup={"enabled": False})
    assert len(calls) >= (1 if failing == "first" else 2) and not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_curation_killed_while_it_writes_leaves_only_partials_its_rerun_removes(tmp_path):
    """Issue 19: DuckDB's own `tmp_*.partial` of a killed job stayed forever. A kill while the kept file is
    half written leaves only our temporaries beside the outputs (the spill folder too; nothing in TMPDIR),
    and the rerun's cleanup (`remove_stale_partials`, as `recorded` runs it) removes every one."""
    corpus, out, scratch = tmp_path / "a.jsonl", tmp_path / "out", tmp_path / "tmp"
    corpus.write_bytes(_corpus(20_000))
    scratch.mkdir()
    result = subprocess.run([sys.executable, "-c", KILLED_CURATION, str(corpus), str(out), str(tmp_path / "a.parquet")], capture_output=True,
                            timeout=300, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    left = sorted(path.name for path in out.iterdir())
    assert any(name.startswith(".kept.parquet.spill-") for name in left), left
    assert any(name.startswith(".kept.parquet.") and (out / name).is_file() and (out / name).stat().st_size > 2**14
               for name in left), left  # the half-written file
    assert all(name.startswith((".kept.parquet.", ".quarantine.parquet.")) and name.endswith(".partial")
               for name in left), left
    assert not list(scratch.iterdir())
    for name in ("kept.parquet", "quarantine.parquet", "card.json"):
        remove_stale_partials(out / name)
    assert not list(out.iterdir())


def test_memory_limit_is_a_size_or_a_share_of_available_memory_and_too_little_names_the_key(tmp_path):
    assert curate_module.duckdb_memory_limit("512 MiB") == "512MiB"
    share = curate_module.duckdb_memory_limit("10%")
    assert share.endswith("MB") and int(share[:-2]) >= 256
    with pytest.raises(CurationError, match=r"share must lie in \(0%, 100%\], got '150%'"):
        curate_module.duckdb_memory_limit("150%")
    with pytest.raises(CurationError, match=r"curate.memory_limit '4MB' \(4MB\) is too small .*raise it"):
        run(tmp_path, {"a": _corpus(2_000)}, memory_limit="4MB")


def test_texts_computed_once_per_distinct_text_give_what_each_row_computed_alone_gives(tmp_path, monkeypatch):
    """normalise_texts works on each distinct text of a batch and takes the results back to its rows: the
    files must be byte for byte those of computing every row by itself (nulls, absent and empty fields,
    repeated prompts, repetitive answers, width variants, emoji joiners, characters Python redoes)."""
    import tunesmith.data.curate_checks as checks

    rows = [sft("同じ質問です。", f"答え{index}です。") for index in range(6)]
    rows += [sft("同じ質問です。", "はい" * 30), sft("同じ質問です。", "はい" * 30, input=""),
             sft("ＡＢＣについて　教えて。", "ＡＢＣです。", input=None), sft("ABCについて 教えて。", "ABCです。"),
             sft("家族👩\u200d👩\u200d👧の写真", "いい写真\u200bです。", input="写真"), sft("家族👩\u200d👩\u200d👧の写真", "いい写真です。"),
             sft("未割り当て\U000E0080の文字", "答えです。"), sft("同じ質問です。", None), sft("", "空の質問"),
             json.dumps({"instruction": "出力なし"}, ensure_ascii=False).encode()]
    data = b"\n".join(rows * 3) + b"\n"
    distinct = checks._distinct
    taken = []

    def recorded(raw, *remembered):
        values, indices = distinct(raw, *remembered)
        taken.append(indices is not None)
        return values, indices
    monkeypatch.setattr(checks, "_distinct", recorded)
    written = []
    for share in (1.0, -1.0):  # every batch per distinct text, then every row by itself
        monkeypatch.setattr(checks, "DISTINCT_SHARE", share)
        taken.clear()
        card, kept, quarantined = run(tmp_path, {"a": data}, near_dedup={"enabled": False}, max_prompt_chars=2048,
                                      max_response_chars=2048)
        assert all(taken) if share > 0 else not any(taken)
        out = tmp_path / "out"
        written.append([(out / name).read_bytes() for name in ("kept.parquet", "quarantine.parquet", "card.json")])
    assert written[0] == written[1]
    reasons = Counter(row["reason"] for row in quarantined)
    assert reasons["repetitive"] == 2 * 3 and reasons["missing_field"] == 2 * 3, reasons
    assert reasons["duplicate"] >= 2 * len(kept), reasons


def test_a_field_found_mostly_distinct_is_taken_as_such_for_a_few_batches_then_measured_again():
    """Finding a batch's distinct texts is skipped for a field whose last batch measured was mostly distinct
    (the bench corpus's answers), for REMEASURE_AFTER batches; a field of repeated texts is measured every batch.
    What each row gets is the same either way (the test above)."""
    import tunesmith.data.curate_checks as checks

    shares, distinct, repeated = {}, pa.array([f"答え{index}" for index in range(100)]), pa.array(["同じ"] * 100)
    assert checks._distinct(distinct, shares, "output")[1] is None and shares["output"] == (1.0, 0)
    for _ in range(checks.REMEASURE_AFTER):  # not looked at: per row, though these repeat
        values, indices = checks._distinct(repeated, shares, "output")
        assert indices is None and len(values) == 100
    values, indices = checks._distinct(repeated, shares, "output")  # measured again
    assert values.to_pylist() == ["同じ"] and len(indices) == 100 and shares["output"] == (0.01, 0)
    for _ in range(2):
        assert len(checks._distinct(repeated, shares, "instruction")[0]) == 1


# Renamed columns, the turns of a two-turn conversation and TRL's conversational pairs are read in SQL, as they
# are (curate_fields.sql_readings); Python's conversion (the style's `convert`) gave the same.
RENAMED_CASES = {
    "sft": ({"style": "alpaca", "columns": {"instruction": "問題/~q", "input": "in.put", "output": "instruction"}}, [
        {"問題/~q": "日本の首都はどこですか？", "in.put": "地理", "instruction": "東京です。"},
        {"問題/~q": "改行\nと\tタブ", "instruction": "答え\u3042です。"},  # no input
        {"問題/~q": "null の入力", "in.put": None, "instruction": "答えです。"},
        {"問題/~q": "数の入力", "in.put": 5, "instruction": "答えです。"},
        {"問題/~q": ["リスト"], "instruction": "答えです。"},
        {"問題/~q": {"入れ子": "x"}, "instruction": "答えです。"},
        {"問題/~q": True, "instruction": 1.5},
        {"instruction": "答えだけ"},
        {"問題/~q": "", "instruction": "答えです。"},
        {"問題/~q": "絵文字😀とエスケープ", "instruction": "答えです。"},
        {"問題/~q": "別のキーもある", "output": "無視される", "instruction": "こちらが答えです。", "extra": [1, 2]},
    ]),
    "text_output": ({"style": "text_output", "columns": {"text": "本文"}}, [
        {"本文": "文章を要約してください。", "output": "要約です。", "input": "読まれない"},
        {"text": "名前が違う", "output": "答え"},
        {"本文": None, "output": "答え"},
    ]),
    "messages": ({"style": "messages", "columns": {"messages": "会話"}}, [
        {"会話": [{"role": "user", "content": "二つの発言"}, {"role": "assistant", "content": "答えです。"}]},
        {"会話": [{"role": "USER", "content": "大文字の役割"}, {"role": "Gpt", "content": "答えです。"}]},
        {"会話": [{"role": "human", "content": "余分なキー", "name": "x"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "丁寧に。"}, {"role": "user", "content": "三つの発言"},
                {"role": "assistant", "content": "はい。"}]},
        {"会話": [{"role": "user", "content": "答えで終わらない"}, {"role": "user", "content": "もう一度"}]},
        {"会話": [{"role": "user", "content": "三つめが"}, {"role": "assistant", "content": "答え"}, {"role": "user", "content": "ある"}]},
        {"会話": [{"from": "human", "value": "ShareGPTの形"}, {"from": "gpt", "value": "答えです。"}]},
        {"会話": [{"role": "user", "content": None}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "user", "content": 5}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "user"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "ASSİSTANT", "content": "ASCIIでない役割"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "user", "content": "ASCIIでない役割"}, {"role": "ASSİSTANT", "content": "答え"}]},
        {"会話": {"0": {"role": "user", "content": "配列でない"}, "1": {"role": "assistant", "content": "答え"}}},
        {"会話": ["文字列", {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "user", "content": ""}, {"role": "assistant", "content": "空の質問"}]},
        {"messages": [{"role": "user", "content": "列の名前が違う"}, {"role": "assistant", "content": "答え"}]},
        # Longer conversations and system turns: converted in SQL (curate_fields.sql_conversion) where Python
        # would take them, and in Python where it refuses them, with its reason
        {"会話": [{"role": "system", "content": "あなたは誠実です。"}, {"role": "system", "content": ""},
                {"role": "user", "content": "一つめ\n  字下げ"}, {"role": "assistant", "content": "答え一"},
                {"role": "Human", "content": "二つめ"}, {"role": "GPT", "content": "答え二", "weight": 1}]},
        {"会話": [{"role": "user", "content": "始め"}, {"role": "system", "content": "途中のシステム"},
                {"role": "assistant", "content": "前の答え"}, {"role": "user", "content": ""},
                {"role": "assistant", "content": "最後の答え"}]},
        {"会話": [{"role": "system", "content": "システムだけ"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "assistant", "content": "答えから"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "assistant", "content": "先に答え"}, {"role": "user", "content": "質問"},
                {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "引用\"と\\と\u0001"}, {"role": "user", "content": "絵文字😀"},
                {"role": "assistant", "content": ""}]},
        {"会話": [{"role": "user", "content": "役割が未知"}, {"role": "tool", "content": "x"},
                {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": None}, {"role": "user", "content": "null のシステム"},
                {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, 7, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, None, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, {"role": "user", "content": ["リスト"]},
                {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, {"role": "user", "content": "答えが数"},
                {"role": "assistant", "content": 3}]},
        {"会話": [{"role": "system", "content": "ShareGPT"}, {"from": "human", "value": "形が混ざる"},
                {"from": "gpt", "value": "答え"}]},
        {"会話": [{"from": "system", "value": "ShareGPTのシステム"}, {"from": "human", "value": "質問"},
                {"from": "gpt", "value": "答え"}, {"from": "human", "value": "続き"}, {"from": "gpt", "value": "答え二"}]},
        {"会話": [{"from": "human", "value": "値がない"}, {"from": "gpt"}]},
        {"会話": [{"role": "user", "value": "役割と値"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, {"role": "user", "from": "human", "value": "混ざった鍵"},
                {"role": "assistant", "content": "答え"}]},
        {"会話": [{"content": "内容だけ"}, {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, {"role": "usér", "content": "ASCIIでない"},
                {"role": "assistant", "content": "答え"}]},
        {"会話": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}, {"role": "ASSİSTANT", "content": "c"}]},
        {"会話": [{"role": "system", "content": ""}, {"role": "user", "content": ""}, {"role": "assistant", "content": "空"}]},
        {"会話": [{"role": "system", "content": "a"}]},
        {"会話": []},
        {"会話": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]},
    ]),
    "preference": ({"style": "preference", "columns": {"prompt": "question", "chosen": "good"}}, [
        {"question": "好きな色は？", "good": "青です。", "rejected": "分かりません。"},
        {"good": "青です。", "rejected": "分かりません。"},  # no prompt
        {"question": 3, "good": "青です。", "rejected": "分かりません。"},
        {"question": "同じ答え", "good": "はい", "rejected": "はい"},
        {"question": [{"role": "user", "content": "会話の形"}], "good": [{"role": "assistant", "content": "良い答え"}],
         "rejected": [{"role": "assistant", "content": "悪い答え"}]},
        {"good": [{"role": "user", "content": "暗黙の質問"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "暗黙の質問"}, {"role": "assistant", "content": "悪い"}]},
        {"question": "片方だけ会話", "good": "文字列", "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "Human", "content": "TRLの形"}], "good": [{"role": "gpt", "content": "良い"}],
         "rejected": [{"role": "ASSISTANT", "content": "悪い", "score": 1}]},
        {"question": [{"role": "user", "content": "空の答え"}], "good": [{"role": "assistant", "content": ""}],
         "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "system", "content": "システムだけ"}], "good": [{"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "長い"}, {"role": "assistant", "content": "前の答え"}, {"role": "user", "content": "続き"}],
         "good": [{"role": "assistant", "content": "良い"}], "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "答えが二つ"}], "good": [{"role": "assistant", "content": "一"},
         {"role": "assistant", "content": "二"}], "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "利用者の答え"}], "good": [{"role": "user", "content": "良い"}],
         "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "null"}], "good": [{"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "assistant", "content": None}]},
        {"question": "文字列の質問", "good": [{"role": "assistant", "content": "良い"}], "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "非ASCII"}], "good": [{"role": "assİstant", "content": "良い"}],
         "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "会話"}], "good": [{"role": "assistant", "content": "良い"}], "rejected": "文字列"},
        # Pairs given as whole conversations, system turns, longer prompts: converted in SQL (sql_conversion)
        {"good": [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "前の質問"},
                  {"role": "assistant", "content": "前の答え"}, {"role": "Human", "content": "次の質問"},
                  {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "前の質問"},
                      {"role": "assistant", "content": "前の答え"}, {"role": "Human", "content": "次の質問"},
                      {"role": "GPT", "content": "悪い"}]},
        {"good": [{"role": "user", "content": "違う前置き"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "別の前置き"}, {"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "system", "content": "システム"}, {"role": "user", "content": "質問"}],
         "good": "良い", "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": None, "good": [{"role": "user", "content": "null の質問"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "null の質問"}, {"role": "assistant", "content": "悪い"}]},
        {"question": 7, "good": [{"role": "assistant", "content": "良い"}], "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": "質問", "good": 7, "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": "質問", "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [], "good": [{"role": "user", "content": "空の質問の列"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "空の質問の列"}, {"role": "assistant", "content": "悪い"}]},
        {"question": [{"from": "human", "value": "ShareGPTの質問"}], "good": [{"from": "gpt", "value": "良い"}],
         "rejected": [{"from": "gpt", "value": "悪い"}]},
        {"question": "前置きだけ", "good": [{"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "assistant", "content": "悪い"}, {"role": "user", "content": "余り"}]},
        {"question": [{"role": "system", "content": "システムだけ"}], "good": [{"role": "user", "content": "答えの前の質問"},
         {"role": "assistant", "content": "良い"}], "rejected": [{"role": "user", "content": "答えの前の質問"},
         {"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "空の答え"}], "good": [], "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user", "content": "null の答え"}], "good": None, "rejected": [{"role": "assistant", "content": "悪い"}]},
        {"question": 7, "good": [{"role": "user", "content": "数の質問"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "数の質問"}, {"role": "assistant", "content": "悪い"}]},
        {"good": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "user", "content": "利用者で終わる"}]},
        {"question": [{"role": "user", "content": "前"}], "good": [{"role": "assistant", "content": "中"},
         {"role": "user", "content": "次"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "assistant", "content": "中"}, {"role": "user", "content": "次"}, {"role": "assistant", "content": "悪い"}]},
        {"good": [{"role": "user", "content": "空の良い答え"}, {"role": "assistant", "content": ""}],
         "rejected": [{"role": "user", "content": "空の良い答え"}, {"role": "assistant", "content": "悪い"}]},
        {"question": [{"role": "user"}], "good": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "良い"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "悪い"}]},
    ]),
}


@pytest.mark.parametrize("case", sorted(RENAMED_CASES))
def test_renamed_columns_read_in_sql_give_what_the_styles_conversion_gave(tmp_path, monkeypatch, case):
    import tunesmith.data.curate_fields as fields
    import tunesmith.data.curate_pipeline as pipeline

    converted, original = [], pipeline.canonical_function

    def counting(sources):  # the records converted in Python
        apply = original(sources)
        return lambda ranks, raws: (converted.extend(raws.to_pylist()), apply(ranks, raws))[1]

    monkeypatch.setattr(pipeline, "canonical_function", counting)

    extra, records = RENAMED_CASES[case]
    role = "preference" if case == "preference" else "sft"
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    data += b'{"\\u554f\\u984c/~q": "\\u30a8\\u30b9\\u30b1\\u30fc\\u30d7", "instruction": "\\u7b54\\u3048", "good": "x"}\n'
    data += b'{"question": "repeated", "question": "twice", "good": "a", "rejected": "b", "text": "t", "output": "o"}\n'
    data += b'{"question": "truncated", "good": \n'  # JSON functions on it would raise: only guarded SQL may read it
    data += ('{"question": [{"role": "user", "content": "鍵"}], "good": [{"role": "assistant", "role": "user", "content": "x"}], '
             '"rejected": [{"role": "assistant", "content": "y"}]}\n').encode()
    data += '{"会話": [{"role": "user", "role": "assistant", "content": "繰り返すキー"}, {"role": "assistant", "content": "答え"}]}\n'.encode()
    data += ('{"会話": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}, '
             '{"role": "assistant", "content": "c", "content": "繰り返すキー"}]}\n').encode()
    data += '{"会話": [{"role": "system", "content": "\\u30a8"}, {"r\\u006fle": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}\n'.encode()
    results = []
    for renamed in (True, False):  # False: every record through the style's conversion in Python, as before
        if not renamed:
            monkeypatch.setattr(fields, "sql_readings", lambda source: [])
            monkeypatch.setattr(fields, "sql_conversion", lambda source: None)
        (folder := tmp_path / str(renamed)).mkdir()
        card, kept, quarantined = run(folder, {"s": data}, role=role, extra={"s": extra})
        results.append(([{k: v for k, v in row.items() if k != "file"} for row in kept],
                        by_line(quarantined), card["totals"]))
        if renamed:  # SQL read or converted every record Python takes, not Python
            lines = data.decode().splitlines()
            assert not {json.dumps(json.loads(lines[row["line"] - 1])) for row in kept} & {
                json.dumps(json.loads(raw)) for raw in converted}
            assert converted or case not in ("messages", "preference")  # and Python what it refuses
    assert results[0] == results[1]
    assert results[0][0] and results[0][1]  # both kinds of outcome are compared


def test_a_mapped_record_is_converted_once_though_its_fields_are_read_a_batch_at_a_time(tmp_path, monkeypatch):
    """The typed fields are a view read one text batch at a time; a record's style conversion (Python, per
    record) must still run once, with batches that cross from one source into the next."""
    import tunesmith.data.curate_checks as checks
    import tunesmith.data.curate_pipeline as pipeline

    converted = Counter()
    original = pipeline.canonical_function

    def counting(sources):
        apply = original(sources)

        def counted(ranks, raws):
            converted.update(raws.to_pylist())
            return apply(ranks, raws)
        return counted

    import tunesmith.data.curate_fields as fields

    monkeypatch.setattr(pipeline, "canonical_function", counting)
    monkeypatch.setattr(fields, "sql_conversion", lambda source: None)  # every record ShareGPT's: Python's to convert
    monkeypatch.setattr(checks, "TEXT_BATCH_ROWS", 700)
    mapped = {"style": "messages"}
    files = {name: "".join(json.dumps({"messages": [
        {"from": "human", "value": f"{name}の質問{i}について教えてください。"},
        {"from": "gpt", "value": f"答えは{i}です。よろしくお願いします。"}]}, ensure_ascii=False) + "\n"
                           for i in range(1_000)).encode() for name in ("first", "second")}
    card, kept, _ = run(tmp_path, files, extra={"first": mapped, "second": mapped})
    assert len(converted) == 2_000 and set(converted.values()) == {1}
    assert len(kept) == 2_000
