"""Issue 11's real-data cases, each reproduced by a fixture written here (cases 1-5; case 6 is
tests/test_sources.py). Each failed on the code before the fix."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunesmith.data.curate import CurationError, curate
from tunesmith.data.normalize import normalize_text

SETTINGS = {"decontaminate": False, "validation_fraction": 0, "min_kept_share": 0}


def line(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False)


def run(tmp_path, sources: dict, role="sft", extra=None, **settings):
    """Curate {source id: list of JSONL lines} (recipe order); return card, kept rows, quarantine by (source, line)."""
    entries = []
    for source_id, lines in sources.items():
        path = tmp_path / f"{source_id}.jsonl"
        path.write_text("".join(text + "\n" for text in lines), encoding="utf-8")
        entries.append({"id": source_id, "path": str(path), "role": role, **(extra or {}).get(source_id, {})})
    out = tmp_path / "out"
    card = curate(entries, role, str(tmp_path / "no-tasks.jsonl"), {**SETTINGS, **settings},
                  str(out / "kept.parquet"), str(out / "quarantine.parquet"), str(out / "card.json"))
    quarantined = {(row["source"], row["line"]): (row["reason"], row["detail"])
                   for row in pq.read_table(out / "quarantine.parquet").to_pylist()}
    return card, pq.read_table(out / "kept.parquet").to_pylist(), quarantined


# ---- 1. near duplicates: the question and answer decide, not the shared passage; no chains ----------

PASSAGE = ("電気は私たちの生活に欠かせないエネルギーです。発電所では石炭や天然ガスを燃やしてタービンを回し、"
           "発電機で電気を作ります。近年は太陽光や風力などの再生可能エネルギーも増えています。作られた電気は"
           "送電線で変電所に送られ、電圧を下げてから家庭や工場に届けられます。電気を効率よく使うことは、"
           "地球温暖化を防ぐためにも大切だと考えられています。家庭では照明をLEDに替えたり、使わない家電の"
           "電源を切ったりすることで、消費電力を減らすことができます。")
QUESTIONS = [("発電所では何を燃やしてタービンを回しますか？", "石炭や天然ガスです。"),
             ("電気は家庭に届く前にどこに送られますか？", "送電線で変電所に送られ、電圧を下げてから届けられます。"),
             ("家庭で消費電力を減らす方法を二つ挙げてください。", "照明をLEDに替えることと、使わない家電の電源を切ることです。")]


def test_questions_about_one_long_passage_are_kept_and_true_copies_removed(tmp_path):
    rows = [line(instruction=question, input=PASSAGE, output=answer) for question, answer in QUESTIONS]
    # A true near copy of row 2: the same question, passage and answer, but the final 。
    rows.append(line(instruction=QUESTIONS[1][0], input=PASSAGE, output=QUESTIONS[1][1].removesuffix("。")))
    card, kept, quarantined = run(tmp_path, {"passages": rows}, max_prompt_chars=4096)
    assert [row["line"] for row in kept] == [1, 2, 3]
    [(where, (reason, detail))] = quarantined.items()
    assert where == ("passages", 4) and reason == "near_duplicate"
    assert detail.startswith("kept passages:2 (")
    # The old key (the whole prompt, passage included) is still there for corpora that want it.
    _, kept, quarantined = run(tmp_path, {"passages": rows}, max_prompt_chars=4096,
                               near_dedup={"key": "prompt_response", "threshold": 0.8})
    assert len(kept) < 3 and {reason for reason, _ in quarantined.values()} == {"near_duplicate"}


# Three answers in a chain: each of B, C within 2 edits of the one before, A and C 4 edits apart.
CHAIN_A = ("春の京都では桜が咲き、多くの観光客が哲学の道や円山公園を訪れます。夜には寺の庭園が照らされ、"
           "昼とは違う景色を楽しむことができます。")


def _edited(text: str, *positions: int) -> str:
    chars = list(text)
    for position in positions:
        chars[position] = "ぬ"
    return "".join(chars)


def _jaccard(a: str, b: str, n: int = 5) -> float:
    grams = [{text[i:i + n] for i in range(len(text) - n + 1)} for text in (a, b)]
    return len(grams[0] & grams[1]) / len(grams[0] | grams[1])


def test_a_row_is_removed_only_when_similar_to_the_row_that_is_kept(tmp_path):
    instruction = "京都の春について書いてください。"
    chain_b = _edited(CHAIN_A, 15)
    chain_c = _edited(chain_b, 45)
    keys = [f"{instruction}\n{text}" for text in (CHAIN_A, chain_b, chain_c)]  # what near-dup compares
    assert _jaccard(keys[0], keys[1]) > 0.8 and _jaccard(keys[1], keys[2]) > 0.8 > _jaccard(keys[0], keys[2])
    rows = [line(instruction=instruction, output=text) for text in (CHAIN_A, chain_b, chain_c)]
    card, kept, quarantined = run(tmp_path, {"chain": rows}, max_response_chars=500)
    # B is close to A (kept), so it goes; C is only close to B, which is not kept, so C stays.
    assert [row["line"] for row in kept] == [1, 3]
    [(where, (reason, detail))] = quarantined.items()
    assert (where, reason) == (("chain", 2), "near_duplicate")
    assert detail == f"kept chain:1 (cluster 1, Jaccard {round(_jaccard(keys[0], keys[1]), 2)})"
    [cluster] = card["near_duplicate_clusters"]["listed"]
    assert cluster["kept"]["line"] == 1 and [member["line"] for member in cluster["members"]] == [2]
    assert cluster["members"][0]["jaccard"] == round(_jaccard(keys[0], keys[1]), 4)


# ---- 2. repetition: lists and enumerations pass, degenerate answers do not ----------------------------

GOOD_LISTS = [
    ("次のビールをラガーとエールに分類してください。", "ラガー、エール、ラガー、エール、エール、ラガー、ラガー、エール、ラガー、エール"),
    ("次の地名はどの方角にありますか？", "'北'、'北'、'南'、'北'、'南'、'南'、'北'、'南'、'北'、'北'"),
    ("RAIDの種類を挙げてください。", "RAID 0、RAID 1、RAID 5、RAID 6、RAID 10、RAID 50、RAID 60"),
    ("1から10まで数えてください。", "1、2、3、4、5、6、7、8、9、10"),
    ("曜日を順に書いてください。", "月曜日、火曜日、水曜日、木曜日、金曜日、土曜日、日曜日"),
]


def test_lists_and_enumerations_pass_and_degenerate_answers_are_caught(tmp_path):
    rows = [line(instruction=question, output=answer) for question, answer in GOOD_LISTS]
    rows += [line(instruction="質問に答えてください。", output="はい" * 90),
             line(instruction="挨拶をしてください。", output="ありがとう" * 13)]
    _, kept, quarantined = run(tmp_path, {"lists": rows}, max_response_chars=500)
    assert [row["line"] for row in kept] == [1, 2, 3, 4, 5]
    assert quarantined == {
        ("lists", 6): ("repetitive", "output: 'はい' repeated 90 times in a row, covering 1.0"),
        ("lists", 7): ("repetitive", "output: 'ありがとう' repeated 13 times in a row, covering 1.0")}


# ---- 3. the Japanese share does not count a Latin-script name against a Japanese sentence ------------

def test_japanese_questions_about_latin_named_things_pass_the_script_filter(tmp_path):
    rows = [line(instruction="Fortranとは？", output="科学技術計算向けのプログラミング言語です。"),
            line(instruction="AWS ECSとは？", output="コンテナを動かすためのサービスです。"),
            line(instruction="Tell me about Tokyo, please.", output="東京は日本の首都です。")]
    _, kept, quarantined = run(tmp_path, {"mixed": rows}, japanese={"min_share": 0.3})
    assert [row["line"] for row in kept] == [1, 2]
    assert quarantined == {("mixed", 3): ("not_japanese", "prompt 0.0")}


# ---- 4. real pairwise judgment files, and a curation that keeps nothing fails -------------------------

def fastchat(question, g1, g2):
    return line(question_id=1, model_1="gpt-4", model_2="claude", question=question,
                answer_1=f"{question}への一つ目の答え", answer_2=f"{question}への二つ目の答え",
                g1_winner=g1, g2_winner=g2, judge=["gpt-4", "pair-v2"])


def test_fastchat_pairwise_judgments_are_understood_by_style_pairwise(tmp_path):
    rows = [fastchat("質問一", "model_1", "model_1"), fastchat("質問二", "model_2", "model_2"),
            fastchat("質問三", "model_1", "model_2"), fastchat("質問四", "tie", "model_1"),
            fastchat("質問五", "error", "model_2")]
    extra = {"judged": {"style": "pairwise"}}
    card, kept, quarantined = run(tmp_path, {"judged": rows}, role="preference", extra=extra)
    assert [(row["line"], row["chosen"], row["rejected"]) for row in kept] == [
        (1, "質問一への一つ目の答え", "質問一への二つ目の答え"), (2, "質問二への二つ目の答え", "質問二への一つ目の答え")]
    assert quarantined == {("judged", 3): ("judge_disagree", "g1_winner='model_1', g2_winner='model_2'"),
                           ("judged", 4): ("judge_tie", "g1_winner='tie', g2_winner='model_1'"),
                           ("judged", 5): ("judge_invalid", "g1_winner: 'error'")}
    # The positional convention (each judge names a position in the order it saw) is a setting.
    positional = {"judged": {"style": "pairwise", "winners": "positions"}}
    rows = [fastchat("質問一", "A", "B"), fastchat("質問二", "A", "A")]
    _, kept, quarantined = run(tmp_path, {"judged": rows}, role="preference", extra=positional)
    assert [row["line"] for row in kept] == [1] and quarantined[("judged", 2)][0] == "judge_disagree"


def test_a_role_that_keeps_nothing_fails_naming_the_source_and_its_top_reasons(tmp_path):
    rows = [fastchat(f"質問{index}", "model_a", "model_b") for index in range(4)] + ["{broken"]
    with pytest.raises(CurationError, match=r"source 'judged' .*kept 0 of 5 records.*"
                                            r"judge_invalid 4 \(e\.g\. line 1: g1_winner: 'model_a'\), invalid_json 1"):
        run(tmp_path, {"judged": rows}, role="preference", extra={"judged": {"style": "pairwise"}})
    assert not (tmp_path / "out" / "kept.parquet").exists()


def test_a_source_keeping_under_the_recipe_share_fails_and_mixing_does_not_count(tmp_path):
    good = [line(instruction=f"質問{index}です", output=f"答え{index}です") for index in range(20)]
    thin = ([line(instruction=f"別の質問{index}です", output="") for index in range(6)]
            + [line(instruction=f"他の質問{index}です", output="はい") for index in range(4)])
    with pytest.raises(CurationError, match=r"source 'thin' .*kept 4 of 10 records \(0\.4, below "
                                            r"curate\.min_kept_share 0\.5\).*empty_field 6"):
        run(tmp_path, {"fine": good, "thin": thin}, min_kept_share=0.5)
    # A source downsampled by its weight passes: mixing is the recipe's choice, not a loss.
    card, kept, _ = run(tmp_path, {"fine": good}, min_kept_share=0.5, extra={"fine": {"weight": 0.3}})
    assert 0 < card["sources"]["fine"]["kept"] < 20


# ---- 5. rows that were kept or crashed ----------------------------------------------------------------

def test_lenient_json_is_quarantined(tmp_path):
    rows = ['{"instruction": "東京", "output": "首都",}', '{"instruction": "大阪", "output": NaN}',
            '{"instruction": "京都", "output": "古都"}', '{"instruction": "a,}", "output": "ok"}']
    _, kept, quarantined = run(tmp_path, {"lenient": rows})
    assert [row["line"] for row in kept] == [3, 4]  # ",}" inside a string is fine
    assert {where: reason for where, (reason, _) in quarantined.items()} == {
        ("lenient", 1): "invalid_json", ("lenient", 2): "invalid_json"}
    assert "trailing comma" in quarantined[("lenient", 1)][1].lower()


def test_deeply_nested_json_in_a_mapped_style_is_quarantined_not_fatal(tmp_path):
    deep = '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"
    rows = [line(messages=[{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "どうも"}]), deep]
    _, kept, quarantined = run(tmp_path, {"chat": rows}, extra={"chat": {"style": "messages"}})
    assert [row["line"] for row in kept] == [1]
    assert quarantined[("chat", 2)][0] == "invalid_json" and "nested" in quarantined[("chat", 2)][1]


def _run_parquet(tmp_path, tables: dict, **source):
    for name, table in tables.items():
        pq.write_table(table, tmp_path / name)
    out = tmp_path / "out"
    card = curate([{"id": "pq", "path": str(tmp_path / "*.parquet"), "format": "parquet", "role": "sft", **source}],
                  "sft", str(tmp_path / "none"), SETTINGS, str(out / "k.parquet"), str(out / "q.parquet"),
                  str(out / "c.json"))
    quarantined = {(row["file"].rsplit("/", 1)[-1], row["line"]): row["reason"]
                   for row in pq.read_table(out / "q.parquet").to_pylist()}
    return card, pq.read_table(out / "k.parquet").to_pylist(), quarantined


def test_parquet_binary_columns_are_decoded_as_utf8_or_quarantined(tmp_path):
    table = pa.table({"instruction": pa.array(["説明して".encode(), b"\xff\xfe", "質問".encode()], pa.binary()),
                      "output": pa.array(["はい、説明します。".encode(), b"ok", "答え".encode()], pa.large_binary())})
    _, kept, quarantined = _run_parquet(tmp_path, {"a.parquet": table})
    assert [(row["prompt"], row["response"]) for row in kept] == [("説明して", "はい、説明します。"), ("質問", "答え")]
    assert quarantined == {("a.parquet", 2): "invalid_utf8"}


def test_parquet_shards_whose_column_types_differ_are_read(tmp_path):
    tables = {"a.parquet": pa.table({"instruction": ["一"], "output": ["答え"]}),
              "b.parquet": pa.table({"instruction": ["二"], "output": pa.array([7], pa.int64())}),
              "c.parquet": pa.table({"instruction": ["三"], "output": ["答え三"], "score": [1.5]})}
    card, kept, quarantined = _run_parquet(tmp_path, tables)
    assert [row["prompt"] for row in kept] == ["一", "三"]
    assert quarantined == {("b.parquet", 1): "wrong_type"}
    assert card["sources"]["pq"]["rows_in"] == 3


FAMILY = "\U0001F469\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466"  # 👩‍👩‍👧‍👦
HEART = "\u2764\ufe0f\u200d\U0001F525"  # ❤️‍🔥


def test_zero_width_joiner_is_kept_inside_emoji_sequences(tmp_path):
    assert normalize_text(f"家族 {FAMILY} です") == f"家族 {FAMILY} です"
    assert normalize_text(HEART) == HEART
    assert normalize_text("ゼロ\u200d幅\u200bの\u200d") == "ゼロ幅の"  # elsewhere it still goes
    _, kept, _ = run(tmp_path, {"emoji": [line(instruction=f"{FAMILY}は何人ですか", output=f"四人です{HEART}")]})
    assert (kept[0]["prompt"], kept[0]["response"]) == (f"{FAMILY}は何人ですか", f"四人です{HEART}")
