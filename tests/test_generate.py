"""Generation: batching and left padding change nothing, answers come back in task order, templates are checked,
stop strings end answers, and answers failing the guards are regenerated a bounded number of times."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import REPO
from tiny_model import TASKS, dpo_adapter, dpo_run, sft_adapter, tiny  # noqa: F401  (fixtures)
from tiny_model import recipe as tiny_recipe
from tunesmith.generation import generate as generate_module
from tunesmith.jobs.atomic import read_jsonl
from tunesmith.generation.generate import (
    answer_with_guards,
    check_template,
    cut_at_stop_strings,
    generate_answers,
    generate_batched,
    vllm_sampling,
)
from tunesmith.data.normalize import clean_text, normalize_text
from tunesmith.generation.guards import output_problems, repeated_ngram_count
from tunesmith.model.model import ModelError, load_model, load_tokenizer, write_metadata
from tunesmith.model.template import PromptTemplate


CODE_TASK = "次のコードの誤りを直してください！（例①）\n```python\ndef f(x):\n    if x > 0：\n        return x\n```"


def task_records() -> list[dict]:
    """The shipped task file's records as written (some pretty-printed), decoded without tunesmith."""
    text, decoder, position, records = open(TASKS, encoding="utf-8").read(), json.JSONDecoder(), 0, []
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        record, position = decoder.raw_decode(text, position)
        records.append(record)
    return records


@pytest.fixture(scope="module")
def prompt_model(tiny):
    """The tiny model with seeded noise on its weights. The 5-step model answers EOS straight away, which
    would make any comparison of answers vacuous; the noisy one gives long answers that depend on the prompt."""
    model = load_model(tiny.base_dir, tiny.section("base_model"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def test_batches_and_left_padding_do_not_change_greedy_answers(tiny, prompt_model):
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    template = PromptTemplate(tiny.section("template"))
    prompts = [template.render_prompt(clean_text(record["input"]), tokenizer) for record in task_records()[::5]]
    assert len(prompts) == 20 and len({len(tokenizer(prompt).input_ids) for prompt in prompts}) > 10
    settings = {**tiny.section("generate"), "max_new_tokens": 12, "do_sample": False}

    batched = generate_batched(prompt_model, tokenizer, prompts, {**settings, "batch_size": 8}, seed=0)
    one_by_one = generate_batched(prompt_model, tokenizer, prompts, {**settings, "batch_size": 1}, seed=0)

    unpadded = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = prompt_model.generate(**encoded, max_new_tokens=12, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        unpadded.append(tokenizer.decode(output[0, encoded.input_ids.shape[1]:], skip_special_tokens=True))
    assert len(set(unpadded)) >= 10, "answers do not depend on the prompt; the comparison would prove nothing"
    assert batched == one_by_one == unpadded


def test_answers_are_in_task_order_with_verbatim_inputs_and_clean_outputs(tiny, sft_adapter, tmp_path, monkeypatch):
    records = [record for record in task_records() if record["task_id"] in {3, 8, 10, 24, 53, 63, 71, 90}]
    records.append({"task_id": 200, "input": CODE_TASK + "_x000D_\r\n"})  # prompted as written
    tasks_path = tmp_path / "tasks.jsonl"
    with open(tasks_path, "w", encoding="utf-8") as handle:  # out of id order, two layouts, escaped and not
        for index, record in enumerate(reversed(records)):
            handle.write(json.dumps(record, ensure_ascii=bool(index % 2), indent=2 if index % 3 == 0 else None) + "\n")

    seen_prompts = []

    def with_template_echo(model, tokenizer, prompts, settings, seed):
        """The real generation, then answers that echo the template's markers around them."""
        seen_prompts.extend(prompts)
        real = generate_batched(model, tokenizer, prompts, settings, seed)
        return [f"### 回答\n 答え{index}\n### 指示\n{text}" for index, text in enumerate(real)]

    monkeypatch.setattr(generate_module, "generate_batched", with_template_echo)
    settings = {**tiny.section("generate"), "max_new_tokens": 4}
    count = generate_answers(tiny.base_dir, tiny.section("base_model"), sft_adapter.path, tiny.section("template"),
                             settings, str(tasks_path), seed=0, out_path=str(tmp_path / "answers.jsonl"))

    rows = read_jsonl(tmp_path / "answers.jsonl")
    expected = sorted(records, key=lambda record: record["task_id"])
    assert count == len(rows) == len(expected)
    assert [row["task_id"] for row in rows] == [record["task_id"] for record in expected]
    assert [row["input"] for row in rows] == [record["input"] for record in expected]
    assert any("_x000D_" in row["input"] for row in rows)
    template = PromptTemplate(tiny.section("template"))
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    assert seen_prompts == [template.render_prompt(clean_text(record["input"]), tokenizer) for record in expected]
    assert seen_prompts[-1] == template.render_prompt(CODE_TASK, tokenizer)
    assert [row["output"] for row in rows] == [f"答え{index}" for index in range(len(rows))]
    assert all(row["raw_output"].startswith("### 回答\n") for row in rows)
    assert all(row["regenerated"] == [] and row["problems"] == [] for row in rows)
    # A recipe whose training text was normalised (curate.normalize_training_text) is prompted so too.
    seen_prompts.clear()
    generate_answers(tiny.base_dir, tiny.section("base_model"), sft_adapter.path, tiny.section("template"),
                     settings, str(tasks_path), seed=0, out_path=str(tmp_path / "answers.jsonl"), normalize_prompts=True)
    assert seen_prompts == [template.render_prompt(normalize_text(record["input"]), tokenizer) for record in expected]
    assert "    if" not in seen_prompts[-1] and "！" not in seen_prompts[-1]


def adapter_with_hash(folder, template_hash: str) -> str:
    folder.mkdir()
    write_metadata(folder, stage="sft", template_hash=template_hash)
    return str(folder)


def test_check_template_names_both_hashes_on_mismatch(tiny, tmp_path):
    template = PromptTemplate(tiny.section("template"))
    matching = adapter_with_hash(tmp_path / "matching", template.hash)
    other = adapter_with_hash(tmp_path / "other", "0123456789abcdef")
    check_template(matching, template)
    check_template(None, template)
    with pytest.raises(ModelError) as error:
        check_template(other, template)
    assert "0123456789abcdef" in str(error.value) and template.hash in str(error.value)
    assert "other" in str(error.value)
    check_template(other, template, allow_mismatch=True)


def test_the_cpt_adapter_has_no_template_to_check(tiny, tmp_path):
    template = PromptTemplate(tiny.section("template"))
    cpt = tmp_path / "cpt"
    cpt.mkdir()
    write_metadata(cpt, stage="cpt", base_model=tiny.base_dir)  # trained on raw text: no template hash
    check_template(str(cpt), template)
    with pytest.raises(ModelError, match="0123456789abcdef"):
        check_template(adapter_with_hash(tmp_path / "other", "0123456789abcdef"), template)


def test_generation_refuses_an_adapter_of_another_template_before_writing(tiny, sft_adapter, tmp_path):
    chat = {**tiny.section("template"), "kind": "chat"}
    out_path = tmp_path / "answers.jsonl"
    with pytest.raises(ModelError, match="template"):
        generate_answers(tiny.base_dir, tiny.section("base_model"), sft_adapter.path, chat,
                         tiny.section("generate"), TASKS, seed=0, out_path=str(out_path))
    assert not out_path.exists() and not list(tmp_path.iterdir())


# --- stop strings ---------------------------------------------------------------------------------

def test_cut_at_stop_strings_cuts_before_the_earliest_one():
    assert cut_at_stop_strings("東京です\n### 指示\n次", ["###", "\n"]) == "東京です"
    assert cut_at_stop_strings("東京", ["###"]) == "東京"
    assert cut_at_stop_strings("東京", []) == "東京"


def test_generation_stops_at_a_stop_string_and_the_answer_is_cut_before_it(tiny, prompt_model, monkeypatch):
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    template = PromptTemplate(tiny.section("template"))
    prompts = [template.render_prompt(clean_text(record["input"]), tokenizer) for record in task_records()[:8]]
    settings = {**tiny.section("generate"), "max_new_tokens": 16, "batch_size": 8}
    free = generate_batched(prompt_model, tokenizer, prompts, settings, seed=0)
    # The character found early in most answers; not one of the prompt's end, which could complete a
    # match before the answer starts, nor the replacement character of a half-decoded byte sequence.
    counts = Counter(character for text in free for character in set(text[1 : len(text) // 2])
                     if character not in prompts[0][-8:] + "\ufffd")
    assert counts, "no answer has a character in its first half; the test would prove nothing"
    stop = counts.most_common(1)[0][0]

    lengths = []
    real_generate = prompt_model.generate

    def measured(*args, **kwargs):
        output = real_generate(*args, **kwargs)
        lengths.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    monkeypatch.setattr(prompt_model, "generate", measured)
    stopped = generate_batched(prompt_model, tokenizer, prompts, {**settings, "stop_strings": [stop]}, seed=0)
    assert stopped == [text.split(stop)[0] for text in free]
    assert any(stop in text for text in free) and stopped != free
    early = [prompt for prompt, text in zip(prompts, free) if stop in text[: len(text) // 2]]
    generate_batched(prompt_model, tokenizer, early, {**settings, "stop_strings": [stop]}, seed=0)
    assert lengths[-1] < settings["max_new_tokens"], "generation ran on past the stop string"


# --- guards ---------------------------------------------------------------------------------------

REFERENCES = REPO / "data" / "references.jsonl"
GUARDS = tiny_recipe()["generate"]["guards"]
KANA = "あいうえおかきくけこさしすせそたちつてとなに"


@pytest.mark.parametrize("text,reasons", [
    ("東京", []),
    ("", ["empty"]),
    (" \n\t", ["empty"]),
    ("あ" * 2001, ["too_long", "degenerate_char", "repeated_ngram"]),
    (KANA + "の" * 9, []),  # 9 of 31 letters: 29 %
    (KANA + "の" * 10, ["degenerate_char"]),  # 10 of 32: 31 %
    ("くるまくるまくるまくるま", []),  # a right answer: too short to judge its character share
    ("東京は日本の首都です。" * 6, ["repeated_ngram"]),
    ("東京は日本の首都です。" * 4, []),
    ("1. 東京\n2. 東京\n3. 東京\n4. 東京", ["repeated_line"]),
    ("1. 東京\n2. 東京\n3. 東京", []),
    ("答えは\ufffdです", ["replacement_char"]),
    ("答えは\x00です\x1b", ["control_char"]),
    ("答え\tです\r\n次の行", []),
    ("」、春、、、、、、、、、、、、、、、、、、、、、、", ["degenerate_char"]),
], ids=["pass", "empty", "blank", "too_long", "share_below", "share_above", "short_repeats", "ngram_6", "ngram_4",
        "line_4", "line_3", "fffd", "control", "tab_cr_newline", "punctuation"])
def test_output_problems_reason_codes(text, reasons):
    assert output_problems(text, GUARDS) == reasons


def test_output_problems_thresholds_come_from_the_guards():
    assert output_problems("はい", {**GUARDS, "min_chars": 3}) == ["too_short"]
    assert output_problems("はいはい", {**GUARDS, "min_chars": 4}) == []
    assert output_problems("はいはい", {**GUARDS, "max_chars": 3}) == ["too_long"]
    half = {**GUARDS, "char_share_min_length": 10, "max_char_share": 0.5}
    assert output_problems("ababababab", half) == []
    assert output_problems("abababababa", half) == ["degenerate_char"]
    assert output_problems("a b a b a b", {**GUARDS, "char_share_min_length": 6, "max_char_share": 0.5}) == [], \
        "spaces are not characters of the answer"
    assert repeated_ngram_count("abcabcabc", 3) == 3
    assert output_problems("abcabcabc", {**GUARDS, "ngram_size": 3, "max_ngram_repeats": 2}) == ["repeated_ngram"]
    assert output_problems("abcabcabc", {**GUARDS, "ngram_size": 3, "max_ngram_repeats": 3}) == []
    assert output_problems("はい\nはい", {**GUARDS, "max_line_repeats": 1}) == ["repeated_line"]


def test_default_guards_pass_every_shipped_reference_answer():
    failing = {line: output_problems(json.loads(line)["output"], GUARDS) for line in open(REFERENCES, encoding="utf-8")}
    assert not {line: reasons for line, reasons in failing.items() if reasons}


# Good answers of the kinds the old defaults flagged (degenerate_char, repeated_ngram): written by us, as
# a strong model would answer. They must pass the default guards untouched.
GOOD_ANSWERS = {
    "numbers_1_to_10": "1、2、3、4、5、6、7、8、9、10",
    "numbers_with_text": "1から10まで数えると、1、2、3、4、5、6、7、8、9、10です。",
    "markdown_table": (
        "| 都市 | 人口 | 特徴 |\n|---|---|---|\n| 東京 | 約1400万人 | 日本の首都 |\n"
        "| 大阪 | 約880万人 | 食文化が豊か |\n| 名古屋 | 約230万人 | ものづくりの中心 |\n"
        "| 福岡 | 約160万人 | アジアの玄関口 |"
    ),
    "wide_table": (
        "| 曜日 | 月 | 火 | 水 | 木 | 金 | 土 | 日 |\n|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|\n"
        "| 天気 | 晴れ | 曇り | 雨 | 晴れ | 雪 | 曇り | 晴れ |\n| 気温 | 12 | 9 | 7 | 13 | 2 | 8 | 11 |"
    ),
    "five_can_do": (
        "AIアシスタントにできることは次の通りです。\n"
        "1. 英語で日常会話をすることができます。\n2. 簡単なプログラムを書くことができます。\n"
        "3. 料理のレシピを考えることができます。\n4. 旅行の計画を立てることができます。\n"
        "5. 長い文章を要約することができます。"
    ),
    "five_suru_koto_ga_dekimasu": (
        "1. 英語で会話することができます。\n2. 文章を要約することができます。\n3. 旅行を計画することができます。\n"
        "4. 料理を提案することができます。\n5. 数学を説明することができます。"
    ),
    "compact_table": "| 名前 | 年齢 |\n|---|---|\n| 太郎 | 20 |\n| 花子 | 22 |\n| 次郎 | 19 |",
    "bullet_enumeration": "・りんご\n・みかん\n・ぶどう\n・もも\n・なし\n・かき\n・いちご",
    "desu_list": (
        "日本の三大祭りは次の三つです。\n① 京都の祇園祭です。\n② 大阪の天神祭です。\n③ 東京の神田祭です。\n"
        "どれも夏に行われる歴史のあるお祭りです。"
    ),
    "steps": (
        "カレーの作り方\n手順1：玉ねぎ、にんじん、じゃがいもを切ります。\n手順2：肉と野菜を炒めます。\n"
        "手順3：水を加えて20分煮込みます。\n手順4：火を止めてルウを溶かします。\n手順5：弱火で10分煮込みます。"
    ),
    "explanation": (
        "光合成とは、植物が光のエネルギーを使って、水と二酸化炭素からでんぷんなどの養分を作り出す働きです。"
        "このとき酸素が放出されます。光合成は主に葉の葉緑体で行われ、地球上の多くの生き物の命を支えています。"
    ),
    "haiku": "古池や\n蛙飛び込む\n水の音",
    "repeat_task": "かぜかぜ",
    "letter": "拝啓\n新緑の候、皆様いかがお過ごしでしょうか。\n先日はお世話になり、ありがとうございました。\n敬具",
}


@pytest.mark.parametrize("name", GOOD_ANSWERS)
def test_default_guards_pass_ordinary_japanese_lists_tables_and_enumerations(name):
    assert output_problems(GOOD_ANSWERS[name], GUARDS) == []


# Right answers made mostly of digits, numerals, code or table cells (issue 17): digits and numerals
# are not one character dominating the answer, so these pass untouched; real degeneration still fails.
NUMERIC_CODE_TABLE_ANSWERS = {
    'trillion_yen': '1兆円は1,000,000,000,000円、1億円は100,000,000円です。つまり1兆円は1億円の10,000倍です。',
    'binary_number': '10進数の10を2進数で表すと1010です。2進数の1010は、1×8＋0×4＋1×2＋0×1＝10になります。',
    'binary_table': '0から7までの2進数は次の通りです。\n0: 000\n1: 001\n2: 010\n3: 011\n4: 100\n5: 101\n6: 110\n7: 111',
    'powers_of_ten': '10の累乗は、10¹＝10、10²＝100、10³＝1,000、10⁴＝10,000、10⁶＝1,000,000です。',
    'full_width_digits': '答えは１０００００円です。内訳は５００００円が２回で、合計１０００００円になります。',
    'kanji_numerals': '一億は一万の一万倍で、一兆は一億の一万倍です。',
    'phone_and_date': '2024年10月10日10時00分に、03-1111-0000へお電話ください。受付は10:00〜11:00です。',
    'decimal': '円周率は3.14159265358979323846…と続く無理数で、小数点以下は0.0001のように割り切れません。',
    'python_code': 'フィボナッチ数を返す関数です。\n```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\n`fib(10)` は55を返します。',
    'numbers_table': '| 年 | 売上（円） | 前年比 |\n|---:|---:|---:|\n| 2020 | 1,000,000 | 100% |\n| 2021 | 1,100,000 | 110% |\n| 2022 | 1,000,000 | 91% |\n| 2023 | 1,010,000 | 101% |',
    'multiplication': '7×8＝56、7×9＝63、7×10＝70です。7の段は7ずつ増えます。',
    'binary_1023': '2進数で書くと、1023は1111111111、1024は10000000000です。',
    'kanji_digits': '百万は一〇〇〇〇〇〇、一千万は一〇〇〇〇〇〇〇と書きます。',
}


@pytest.mark.parametrize("name", NUMERIC_CODE_TABLE_ANSWERS)
def test_default_guards_pass_numeric_code_and_table_answers(name):
    assert output_problems(NUMERIC_CODE_TABLE_ANSWERS[name], GUARDS) == []


@pytest.mark.parametrize("text", ["あ" * 30, "。" * 30, "答えは" + "の" * 25, "1" * 10 + "円" * 12,
                                  "〇" * 10 + "ね" * 12 + "。"])
def test_default_guards_still_flag_one_character_dominating_an_answer(text):
    assert "degenerate_char" in output_problems(text, GUARDS)


# --- regeneration ---------------------------------------------------------------------------------

class ScriptedModel:
    """Stands in for batched generation: answers each prompt from a script, one answer per attempt,
    and records which prompts each call received with which settings and seed."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def __call__(self, prompts, settings, seed):
        attempt = len(self.calls)
        self.calls.append((list(prompts), settings, seed))
        return [self.script[prompt][min(attempt, len(self.script[prompt]) - 1)] for prompt in prompts]


def guarded_settings(**guards) -> dict:
    settings = tiny_recipe()["generate"]
    settings["guards"].update(guards)
    return settings


def test_only_failing_answers_are_regenerated_with_the_retry_settings_and_recorded():
    script = {"a": ["東京"], "b": ["", "ソウル"], "c": ["の" * 30, "", "パリ"], "d": ["### 回答\n"]}
    model = ScriptedModel(script)
    clean = PromptTemplate(tiny_recipe()["template"]).clean_output  # markers go before the guards judge
    answers = answer_with_guards(model, ["a", "b", "c", "d"], guarded_settings(retries=2), 42, clean)

    # then "d", empty after every attempt, twice more with end-of-sequence blocked (its script has no text)
    assert [prompts for prompts, _, _ in model.calls] == [["a", "b", "c", "d"], ["b", "c", "d"], ["c", "d"], ["d"], ["d"]]
    assert [seed for _, _, seed in model.calls] == [42, 43, 44, 42, 42]
    assert [settings.get("min_new_tokens") for _, settings, _ in model.calls] == [None, None, None, 4, 16]
    first, retry = model.calls[0][1], model.calls[1][1]
    assert (first["do_sample"], first["repetition_penalty"]) == (False, 1.0)
    assert (retry["do_sample"], retry["repetition_penalty"], retry["temperature"]) == (True, 1.3, 0.7)
    assert [answer.output for answer in answers] == ["東京", "ソウル", "パリ", ""]
    assert [answer.raw for answer in answers] == ["東京", "ソウル", "パリ", "### 回答\n"]
    assert [answer.kept for answer in answers] == [0, 1, 2, 0]
    assert [[attempt.problems for attempt in answer.attempts] for answer in answers] == [
        [[]], [["empty"], []], [["degenerate_char", "repeated_ngram"], ["empty"], []], [["empty"]] * 5,
    ]
    assert [[attempt.seed for attempt in answer.attempts] for answer in answers][2] == [42, 43, 44]
    assert [answer.regenerated for answer in answers] == [
        [], [["empty"]], [["degenerate_char", "repeated_ngram"], ["empty"]], [["empty"]] * 4,
    ]
    assert [answer.problems for answer in answers] == [[], [], [], ["empty"]]


def test_a_retry_replaces_the_greedy_answer_only_with_strictly_fewer_problems():
    guards = {"retries": 2, "ngram_size": 8, "max_ngram_repeats": 1}  # misjudges the right greedy answer
    greedy = "1. 英語を話すことができます。\n2. 本を読むことができます。"
    model = ScriptedModel({"a": [greedy, "サンプル回答の例です。サンプル回答の例です。", "全然違う答え"],
                           "b": ["の" * 30, "ああああああああああああああああああああいいい", "よい答え"]})
    answers = answer_with_guards(model, ["a", "b"], guarded_settings(**guards), 0, str.strip)
    first = output_problems(greedy, guarded_settings(**guards)["guards"])
    assert first == ["repeated_ngram"]
    assert [attempt.problems for attempt in answers[0].attempts] == [first, ["repeated_ngram"], []]
    assert answers[0].kept == 2 and answers[0].output == "全然違う答え", "a retry with no problems wins"
    model = ScriptedModel({"a": [greedy, "サンプル回答の例です。サンプル回答の例です。"]})
    (answer,) = answer_with_guards(model, ["a"], guarded_settings(**guards), 0, str.strip)
    assert answer.kept == 0 and answer.output == greedy, "a retry that is no better never replaces the greedy answer"
    assert answer.regenerated == [["repeated_ngram"], ["repeated_ngram"]]
    assert answers[1].output == "よい答え"


def test_regeneration_is_bounded_and_keeps_the_best_attempt():
    model = ScriptedModel({"a": ["東京"], "b": ["の" * 30, "", "はい"]})
    answers = answer_with_guards(model, ["a", "b"], guarded_settings(retries=1), 0, str.strip)
    assert [prompts for prompts, _, _ in model.calls] == [["a", "b"], ["b"]]
    # "の"*30 has two problems, "" one (empty): but any text beats none, so the first answer stays.
    assert answers[1].output == "の" * 30 and answers[1].kept == 0
    assert answers[1].regenerated == [["empty"]]

    model = ScriptedModel({"a": ["東京"], "b": [""]})
    answers = answer_with_guards(model, ["a", "b"], guarded_settings(retries=0), 0, str.strip)
    assert len(model.calls) == 1 + 2  # no retry; the empty-answer fallback tried twice, found no text
    assert [answer.regenerated for answer in answers] == [[], [["empty"], ["empty"]]]
    assert answers[1].problems == ["empty"] and answers[1].fallback is None


def test_a_model_that_ends_every_answer_at_once_still_answers(tiny, prompt_model):
    """Issue 17: a DPO model emitted EOS first for a task, greedy and sampled alike, and "" was submitted.
    With a large bias on the EOS logit every attempt is empty; the fallback blocks EOS for the first
    tokens and the model's own text is kept, recorded as such."""
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    template = PromptTemplate(tiny.section("template"))
    prompts = [template.render_prompt(clean_text(record["input"]), tokenizer) for record in task_records()[:4]]
    settings = {**tiny.section("generate"), "max_new_tokens": 24}
    bias = torch.zeros(prompt_model.config.vocab_size)
    bias[tokenizer.eos_token_id] = 1e4
    handle = prompt_model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    try:
        assert generate_batched(prompt_model, tokenizer, prompts, settings, seed=0) == [""] * len(prompts)
        answers = answer_with_guards(lambda some, chosen, seed: generate_batched(prompt_model, tokenizer, some, chosen,
                                                                                  seed),
                                     prompts, settings, 0, template.clean_output)
    finally:
        handle.remove()
    retries = settings["guards"]["retries"]
    for answer in answers:
        assert answer.output.strip() and answer.fallback == "eos_blocked"
        assert [attempt.problems for attempt in answer.attempts[:retries + 1]] == [["empty"]] * (retries + 1)
        assert answer.chosen.min_new_tokens in (4, 16)


def test_the_empty_answer_fallback_blocks_eos_on_vllm_too():
    settings = tiny_recipe()["generate"]
    assert "min_tokens" not in vllm_sampling(settings, 0)
    assert vllm_sampling({**settings, "min_new_tokens": 4}, 0)["min_tokens"] == 4


def test_generated_rows_record_every_attempt_and_the_one_kept(tiny, tmp_path, monkeypatch):
    records = [record for record in task_records() if record["task_id"] in {4, 9, 12, 22}]
    tasks_path = tmp_path / "tasks.jsonl"
    tasks_path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in reversed(records)))
    calls = []

    def scripted(model, tokenizer, prompts, settings, seed):
        calls.append(len(prompts))
        if len(calls) == 1:  # the second task (in id order) degenerates, then recovers; the last is empty
            return ["答え", "### 回答\n" + "の" * 40, "答え", ""]
        if settings.get("min_new_tokens"):  # only with end-of-sequence blocked does the last one write
            return ["やっと"] * len(prompts)
        return ["回復", ""] if len(prompts) == 2 else [""] * len(prompts)

    monkeypatch.setattr(generate_module, "generate_batched", scripted)
    generate_answers(tiny.base_dir, tiny.section("base_model"), None, tiny.section("template"),
                     tiny.section("generate"), str(tasks_path), seed=0, out_path=str(tmp_path / "answers.jsonl"))
    rows = read_jsonl(tmp_path / "answers.jsonl")
    assert calls == [4, 2, 1, 1]  # the retries (two of them for the empty answer), then its fallback
    assert [row["task_id"] for row in rows] == [4, 9, 12, 22]
    assert [row["output"] for row in rows] == ["答え", "回復", "答え", "やっと"]
    assert [row["regenerated"] for row in rows] == [[], [["degenerate_char", "repeated_ngram"]], [],
                                                    [["empty"], ["empty"], ["empty"]]]
    assert all(row["problems"] == [] for row in rows) and rows[1]["raw_output"] == "回復"
    assert rows[1]["kept_attempt"] == 1 and [attempt["retry"] for attempt in rows[1]["attempts"]] == [False, True]
    assert rows[1]["attempts"][0] == {"output": "の" * 40, "raw_output": "### 回答\n" + "の" * 40,
                                      "problems": ["degenerate_char", "repeated_ngram"], "seed": 0, "retry": False,
                                      "min_new_tokens": 0}
    assert rows[0]["attempts"] == [{"output": "答え", "raw_output": "答え", "problems": [], "seed": 0, "retry": False,
                                    "min_new_tokens": 0}]
    assert [row["fallback"] for row in rows] == [None, None, None, "eos_blocked"]
    assert rows[3]["kept_attempt"] == 3 and rows[3]["attempts"][3]["min_new_tokens"] == 4


def test_generation_runs_on_a_4bit_base_on_cpu(tiny, sft_adapter, tmp_path):
    """Inference of an nf4 base with the stage's adapter needs no GPU (only training does)."""
    expected = write_tasks(tmp_path, {1, 2, 3})
    section = tiny.section("base_model") | {"quantization": "nf4", "compute_dtype": "float32"}
    settings = {**tiny.section("generate"), "max_new_tokens": 4}
    count = generate_answers(tiny.base_dir, section, sft_adapter.path, tiny.section("template"), settings,
                             str(tmp_path / "tasks.jsonl"), seed=0, out_path=str(tmp_path / "answers.jsonl"))
    assert count == len(expected) == 3


# --- vLLM backend ---------------------------------------------------------------------------------

def vllm_settings(tiny, **changes) -> dict:
    return {**tiny.section("generate"), "backend": "vllm", **changes}


def install_fake_vllm(monkeypatch, answer) -> dict:
    """A stand-in `vllm` package (the real one needs CUDA): its engine records how it was built and
    every generate call, and answers each prompt with `answer(prompt, sampling keywords)`."""
    import sys
    import types
    from pathlib import Path

    calls = {"engine": [], "generate": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            model = Path(kwargs["model"])
            calls["engine"].append({**kwargs, "files": sorted(path.name for path in model.iterdir())})

        def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
            calls["generate"].append((list(prompts), sampling_params.kwargs, lora_request))
            return [types.SimpleNamespace(prompt=prompt, outputs=[types.SimpleNamespace(
                text=answer(prompt, sampling_params.kwargs))]) for prompt in prompts]

    class LoRARequest:
        def __init__(self, lora_name, lora_int_id, lora_path):
            self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

    vllm, lora, request = (types.ModuleType(name) for name in ("vllm", "vllm.lora", "vllm.lora.request"))
    vllm.LLM, vllm.SamplingParams, request.LoRARequest = LLM, SamplingParams, LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    # Only generation's check sees a GPU: torch itself must stay on CPU.
    monkeypatch.setattr(generate_module, "cuda_available", lambda: True)
    return calls


def write_tasks(tmp_path, task_ids) -> list[dict]:
    records = [record for record in task_records() if record["task_id"] in task_ids]
    (tmp_path / "tasks.jsonl").write_text(
        "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in reversed(records)), encoding="utf-8")
    return sorted(records, key=lambda record: record["task_id"])


def test_vllm_maps_our_settings_serves_the_adapter_and_keeps_task_order(tiny, sft_adapter, tmp_path, monkeypatch):
    expected = write_tasks(tmp_path, {5, 11, 30, 42})
    template = PromptTemplate(tiny.section("template"))
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    prompts = [template.render_prompt(clean_text(record["input"]), tokenizer) for record in expected]

    def answer(prompt, sampling):
        index = prompts.index(prompt)
        if index == 2 and sampling["temperature"] == 0.0:
            return "の" * 40  # degenerate at first, so the guards regenerate it
        return f"答え{index}###続き"

    calls = install_fake_vllm(monkeypatch, answer)
    monkeypatch.setattr(generate_module, "load_model", lambda *args, **kwargs: pytest.fail("loaded transformers"))
    settings = vllm_settings(tiny, max_new_tokens=7, repetition_penalty=1.1, stop_strings=["###"])
    generate_answers(tiny.base_dir, tiny.section("base_model"), sft_adapter.path, tiny.section("template"),
                     settings, str(tmp_path / "tasks.jsonl"), seed=3, out_path=str(tmp_path / "answers.jsonl"))

    (engine,) = calls["engine"]
    assert {key: engine[key] for key in ("model", "tokenizer", "dtype", "quantization", "seed", "enable_lora",
                                         "max_lora_rank", "gpu_memory_utilization", "max_model_len")} == {
        "model": tiny.base_dir, "tokenizer": tiny.base_dir, "dtype": "float32", "quantization": None, "seed": 3,
        "enable_lora": True, "max_lora_rank": 8, "gpu_memory_utilization": 0.9, "max_model_len": None,
    }
    (first_prompts, greedy, lora), (retried, sampled, _) = calls["generate"]
    assert first_prompts == prompts, "the rendered prompts, in task order"
    assert lora.lora_path == sft_adapter.path
    assert greedy == {"max_tokens": 7, "repetition_penalty": 1.1, "stop": ["###"], "skip_special_tokens": True,
                      "temperature": 0.0, "top_p": 1.0}
    assert retried == [prompts[2]]
    assert sampled == {"max_tokens": 7, "repetition_penalty": 1.3, "stop": ["###"], "skip_special_tokens": True,
                       "temperature": 0.7, "top_p": 1.0, "seed": 4}
    rows = read_jsonl(tmp_path / "answers.jsonl")
    assert [row["task_id"] for row in rows] == [record["task_id"] for record in expected]
    assert [row["output"] for row in rows] == ["答え0", "答え1", "答え2", "答え3"]
    assert [row["regenerated"] for row in rows] == [[], [], [["degenerate_char", "repeated_ngram"]], []]


def test_vllm_serves_the_dpo_folder_as_one_lora_request_without_a_merged_copy(tiny, dpo_adapter, tmp_path,
                                                                             monkeypatch):
    expected = write_tasks(tmp_path, {1, 2})
    calls = install_fake_vllm(monkeypatch, lambda prompt, sampling: "答え")
    generate_answers(tiny.base_dir, tiny.section("base_model"), dpo_adapter, tiny.section("template"),
                     vllm_settings(tiny), str(tmp_path / "tasks.jsonl"), seed=0,
                     out_path=str(tmp_path / "out" / "answers.jsonl"))
    (engine,) = calls["engine"]
    assert engine["model"] == tiny.base_dir, "the base itself, not a merged copy"
    rank = json.loads((Path(dpo_adapter) / "adapter_config.json").read_text())["r"]
    assert rank == tiny.recipe["sft"]["lora"]["r"] + tiny.recipe["dpo"]["lora"]["r"]
    assert engine["enable_lora"] and engine["max_lora_rank"] >= rank
    assert calls["generate"][0][2].lora_path == dpo_adapter
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["answers.jsonl"]
    assert len(read_jsonl(tmp_path / "out" / "answers.jsonl")) == len(expected)


def test_vllm_answers_out_of_order_are_refused(tiny, tmp_path, monkeypatch):
    write_tasks(tmp_path, {1, 2, 3})
    calls = install_fake_vllm(monkeypatch, lambda prompt, sampling: "答え")
    import vllm

    real_generate = vllm.LLM.generate
    monkeypatch.setattr(vllm.LLM, "generate", lambda self, *args, **kwargs: real_generate(self, *args, **kwargs)[::-1])
    with pytest.raises(ModelError, match="order"):
        generate_answers(tiny.base_dir, tiny.section("base_model"), None, tiny.section("template"), vllm_settings(tiny),
                         str(tmp_path / "tasks.jsonl"), seed=0, out_path=str(tmp_path / "answers.jsonl"))
    assert calls["generate"] and not (tmp_path / "answers.jsonl").exists()


def test_vllm_without_the_package_or_cuda_stops_before_loading(tiny, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(generate_module, "load_model", lambda *args, **kwargs: pytest.fail("loaded a model"))
    monkeypatch.setattr(generate_module, "load_tokenizer", lambda *args, **kwargs: pytest.fail("loaded a tokenizer"))
    out_path = tmp_path / "answers.jsonl"
    arguments = (tiny.base_dir, tiny.section("base_model"), None, tiny.section("template"), vllm_settings(tiny), TASKS)
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vllm looks like to `import`
    with pytest.raises(ModelError, match=r"generate.backend is 'vllm'.*not installed.*generate.backend: transformers"):
        generate_answers(*arguments, seed=0, out_path=str(out_path))
    install_fake_vllm(monkeypatch, lambda prompt, sampling: "")
    monkeypatch.setattr(generate_module, "cuda_available", lambda: False)
    with pytest.raises(ModelError, match=r"generate.backend is 'vllm'.*CUDA"):
        generate_answers(*arguments, seed=0, out_path=str(out_path))
    assert not list(tmp_path.iterdir())


def test_vllm_refuses_an_int8_base(tiny, monkeypatch, tmp_path):
    install_fake_vllm(monkeypatch, lambda prompt, sampling: "")
    with pytest.raises(ModelError, match="base_model.quantization 'int8'"):
        generate_module.vllm_generator(tiny.base_dir, {**tiny.section("base_model"), "quantization": "int8"}, None,
                                       vllm_settings(tiny), 0)


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _vllm_installed(),
                    reason="needs a CUDA GPU and the vllm package (generate.backend: vllm)")
def test_vllm_generates_on_a_gpu(tiny, sft_adapter, tmp_path):
    expected = write_tasks(tmp_path, {1, 2, 3, 4})
    settings = vllm_settings(tiny, max_new_tokens=8, vllm={"gpu_memory_utilization": 0.3, "max_model_len": 256})
    count = generate_answers(tiny.base_dir, tiny.section("base_model"), sft_adapter.path, tiny.section("template"),
                             settings, str(tmp_path / "tasks.jsonl"), seed=0, out_path=str(tmp_path / "answers.jsonl"))
    rows = read_jsonl(tmp_path / "answers.jsonl")
    assert count == len(expected) and [row["task_id"] for row in rows] == [record["task_id"] for record in expected]
    assert all(isinstance(row["output"], str) for row in rows)
