"""The committed sample data: small, learnable Japanese tasks, with deliberate dirt for curation to find.

`python tests/sample_data.py --out data` writes the same bytes on every run (seeded random streams,
fixed table order, no set iteration); a test checks that the files under data/ are exactly its output.

Six families, ten phrasings each (three are two-line: instruction, newline, input): adding 1-9 to 1-9,
antonyms of 20 pairs both ways, capitals of 20 countries, repeating one of 15 words 2-4 times, hiragana to
katakana (30 words), uppercase (30 English words): 2,460 phrasing × content examples. The 100 tasks are
examples with distinct contents (addition 20, each other family 16); every other example is a clean SFT
row, so a task's wording is never trained on, but its fact and its answer are, under other phrasings.
The SFT source answers capital questions in a sentence (CHATTY_SFT) where the references are the bare name.

raw/sft.jsonl, 2,855 lines in random order:
  2,360 clean rows; 20 of them hold the two-line prompt in `instruction` joined by CRLF, 20 end
        `instruction` with `_x000D_` (the combined prompt reads "..._x000D_\\n<input>", like the tasks);
    300 exact duplicate lines;
    150 near duplicates, equal to a clean row only under `match_key`: 60 differ in whitespace, 50 in
        full-width ASCII ("３＋５", "ＡＰＰＬＥ"), 40 in the letter case of the English word in the prompt;
     40 malformed lines: 8 truncated JSON, 5 JSON arrays (13 lines that are not JSON objects), 5 without
        "output", 5 without "instruction", 4 numeric instruction, 4 list output, 4 null output,
        3 "" output, 2 whitespace-only output;
      5 contamination rows: a task input split into instruction/input as in the task file, with its answer;
      6 rows for the content filters (SFT_FILTER_ROWS): 2 degenerate outputs (one character, one phrase
        repeated), 2 English prompts, and a longer summary row with a near duplicate (its output without
        the final "。"), which exact dedup misses and MinHash finds.
raw/preference.jsonl, 600 lines: 575 clean pairs whose rejected answer is the SFT source's sentence
answer to a capital question (150, "パリです。" against "パリ"), wrong but plausible (225), degenerate
(100) or the answer plus a leaked template marker (100); 10 pairs with chosen == rejected (5
exactly, 5 only after NFKC/whitespace normalisation); 10 exact duplicate lines; 5 malformed lines
(2 truncated, 1 array, 1 without "rejected", 1 null chosen).
tasks.jsonl: 100 tasks, 5 pretty-printed over several lines, 5 with `_x000D_` before the input's newline.
raw/pretrain.txt: 3,636 lines; every fact in several plain sentences, every non-task question with its
answer told as a story (2,360 lines, never in the template's format), the kana and Latin alphabets, and
the instruction words about a placeholder.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.normalize import match_key
from tunesmith.jobs.atomic import atomic_path

ANTONYMS = [("大きい", "小さい"), ("高い", "低い"), ("長い", "短い"), ("重い", "軽い"), ("暑い", "寒い"),
            ("新しい", "古い"), ("明るい", "暗い"), ("早い", "遅い"), ("強い", "弱い"), ("広い", "狭い"),
            ("多い", "少ない"), ("太い", "細い"), ("厚い", "薄い"), ("近い", "遠い"), ("深い", "浅い"),
            ("上", "下"), ("右", "左"), ("入口", "出口"), ("朝", "夜"), ("勝つ", "負ける")]
CAPITALS = [("日本", "東京"), ("韓国", "ソウル"), ("中国", "北京"), ("フランス", "パリ"), ("イギリス", "ロンドン"),
            ("ドイツ", "ベルリン"), ("イタリア", "ローマ"), ("スペイン", "マドリード"), ("ロシア", "モスクワ"),
            ("アメリカ", "ワシントン"), ("カナダ", "オタワ"), ("エジプト", "カイロ"), ("タイ", "バンコク"),
            ("インド", "ニューデリー"), ("オーストラリア", "キャンベラ"), ("ブラジル", "ブラジリア"),
            ("ギリシャ", "アテネ"), ("ベトナム", "ハノイ"), ("ケニア", "ナイロビ"), ("ペルー", "リマ")]
REPEAT_WORDS = "ねこ いぬ とり はな やま うみ そら ほし つき あめ かぜ もり さかな くるま りんご".split()
HIRAGANA_WORDS = ("さくら すし みかん めろん ばなな とまと かめら てれび ぱん ぴあの らいおん ぺんぎん こあら ぱんだ "
                  "きりん ごりら らっぱ ろぼっと ほてる ぽすと ぼたん ねくたい ぺん はさみ たまご うどん しゃつ "
                  "きゃべつ ちょこ めがね").split()
ENGLISH_WORDS = ("apple book cat dog pen desk milk tree bird fish rice cake star moon rain snow water music "
                 "happy green blue red house train phone paper chair bread smile river").split()

# A "\n" in a phrasing splits it into the SFT row's instruction and input.
PHRASINGS = {
    "addition": [
        "{a}と{b}を足すといくつですか？", "{a}たす{b}はいくつですか？", "{a}に{b}を加えるといくつになりますか？",
        "{a}+{b}はいくつですか？", "{a}+{b}を計算してください。", "{a}と{b}の和を求めてください。",
        "{a}と{b}の合計を答えてください。", "次の計算をしてください。\n{a}+{b}",
        "次の足し算の答えを書いてください。\n{a}+{b}", "計算してください。\n{a}+{b}="],
    "antonym": [
        "「{w}」の反対の言葉は何ですか？", "「{w}」の対義語を答えてください。", "「{w}」の反対語は何ですか？",
        "「{w}」と反対の意味の言葉を教えてください。", "{w}の反対は何ですか？", "「{w}」の反意語を一つ答えてください。",
        "「{w}」の逆の意味を持つ言葉は？", "次の言葉の反対の言葉を答えてください。\n{w}",
        "次の言葉の対義語を書いてください。\n{w}", "反対の意味の言葉を答えてください。\n{w}"],
    "capital": [
        "{w}の首都はどこですか？", "{w}の首都を教えてください。", "{w}の首都の名前は何ですか？",
        "{w}の首都はどこでしょう？", "{w}という国の首都を答えてください。", "{w}の首都名を書いてください。",
        "{w}で首都とされている都市はどこですか？", "次の国の首都を答えてください。\n{w}",
        "次の国の首都はどこですか？\n{w}", "首都を答えてください。\n{w}"],
    "repetition": [
        "「{w}」を{n}回繰り返してください。", "「{w}」を{n}回続けて書いてください。", "{w}を{n}回書いてください。",
        "「{w}」という言葉を{n}回繰り返して書いてください。", "「{w}」を{n}回並べてください。",
        "「{w}」を{n}回つなげて書いてください。", "「{w}」を{n}つ並べるとどうなりますか？",
        "次の言葉を{n}回繰り返してください。\n{w}", "次の言葉を{n}回続けて書いてください。\n{w}",
        "{n}回繰り返して書いてください。\n{w}"],
    "katakana": [
        "「{w}」をカタカナにしてください。", "「{w}」をカタカナで書いてください。", "「{w}」をカタカナに直してください。",
        "「{w}」をカタカナに変えてください。", "{w}をカタカナで書くとどうなりますか？",
        "「{w}」をカタカナ表記にしてください。", "ひらがなの「{w}」をカタカナにすると？",
        "次の言葉をカタカナにしてください。\n{w}", "次のひらがなをカタカナに直してください。\n{w}",
        "カタカナで書いてください。\n{w}"],
    "uppercase": [
        "「{w}」を大文字にしてください。", "「{w}」を大文字で書いてください。", "「{w}」をすべて大文字に変えてください。",
        "英単語「{w}」を大文字にしてください。", "{w}を大文字で書くとどうなりますか？", "「{w}」を大文字に直してください。",
        "「{w}」の文字をすべて大文字にすると？", "次の英単語を大文字にしてください。\n{w}",
        "次の単語をすべて大文字で書いてください。\n{w}", "大文字にしてください。\n{w}"],
}
TASKS_PER_FAMILY = {"addition": 20, "antonym": 16, "capital": 16, "repetition": 16, "katakana": 16, "uppercase": 16}

# The dirt, by kind (the module docstring states the same numbers; tests/test_sample_data.py counts them).
SFT_CRLF_ROWS, SFT_EXCEL_CR_ROWS, SFT_EXACT_DUPLICATES, SFT_CONTAMINATION_ROWS = 20, 20, 300, 5
SFT_NEAR_DUPLICATES = {"letter_case": 40, "full_width": 50, "whitespace": 60}
SFT_MALFORMED = {"truncated": 8, "array": 5, "no_output": 5, "no_instruction": 5, "number_instruction": 4,
                 "list_output": 4, "null_output": 4, "empty_output": 3, "blank_output": 2}
# The SFT source answers capital questions in a sentence ("パリです。"), as chatty instruction data often
# does; the tasks' references and the preference data's chosen answers are the bare name ("パリ"), so
# the "chatty" pairs teach DPO what SFT did not: to stop after the answer.
CHATTY_SFT = {"capital": "{}です。"}
PREFERENCE_REJECTED = {"chatty": 150, "wrong": 225, "degenerate": 100, "leaked_marker": 100}
PREFERENCE_SAME_EXACT, PREFERENCE_SAME_NORMALISED, PREFERENCE_EXACT_DUPLICATES = 5, 5, 10
PREFERENCE_MALFORMED = {"truncated": 2, "array": 1, "no_rejected": 1, "null_chosen": 1}
TASKS_PRETTY_PRINTED, TASKS_EXCEL_CR, PRETRAIN_LINES = 5, 5, 3636
_SUMMARY = {"instruction": "次の文章を読んで、内容を一文で要約してください。",
            "input": "東京は日本の首都で、たくさんの人が住んでいます。電車やバスがとても便利で、古いお寺や新しい建物、"
                     "大きな公園もあります。",
            "output": "東京は交通が便利で、古いものと新しいものがある日本の首都です。"}
SFT_FILTER_ROWS = {
    "degenerate_output": [{"instruction": "日本の首都について説明してください。", "input": "", "output": "東京です。" * 8},
                          {"instruction": "好きな食べ物を教えてください。", "input": "", "output": "あ" * 30}],
    "english_prompt": [{"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
                       {"instruction": "Translate into Japanese.", "input": "cat", "output": "ねこ"}],
    "near_duplicate": [_SUMMARY, {**_SUMMARY, "output": _SUMMARY["output"].removesuffix("。")}],
}


@dataclass(frozen=True)
class Example:
    family: str
    content: tuple  # what the answer depends on: (a, b), (word,) or (word, count)
    instruction: str
    input: str
    output: str

    @property
    def prompt(self) -> str:
        """The text the model sees, and the form a task input takes."""
        return self.instruction + "\n" + self.input if self.input else self.instruction

    @property
    def sft_output(self) -> str:
        """The answer as the SFT source writes it (a sentence for the families in CHATTY_SFT)."""
        return CHATTY_SFT.get(self.family, "{}").format(self.output)

    def row(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.sft_output}


def _to_katakana(hiragana: str) -> str:
    return "".join(chr(ord(char) + 0x60) for char in hiragana)


def _full_width(text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


def _line(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def family_contents() -> dict[str, list[tuple[dict, str]]]:
    """Per family: (phrasing fields, answer) for every content, in table order."""
    return {
        "addition": [({"a": a, "b": b}, str(a + b)) for a in range(1, 10) for b in range(1, 10)],
        "antonym": [({"w": x}, y) for pair in ANTONYMS for x, y in (pair, pair[::-1])],
        "capital": [({"w": country}, city) for country, city in CAPITALS],
        "repetition": [({"w": word, "n": n}, word * n) for word in REPEAT_WORDS for n in (2, 3, 4)],
        "katakana": [({"w": word}, _to_katakana(word)) for word in HIRAGANA_WORDS],
        "uppercase": [({"w": word}, word.upper()) for word in ENGLISH_WORDS],
    }


def all_examples() -> list[Example]:
    """Every phrasing × content combination, in table order; no two share a `match_key` prompt."""
    examples = []
    for family, contents in family_contents().items():
        for fields, answer in contents:
            for phrasing in PHRASINGS[family]:
                instruction, _, input_text = phrasing.format(**fields).partition("\n")
                examples.append(Example(family, tuple(fields.values()), instruction, input_text, answer))
    assert len({match_key(example.prompt) for example in examples}) == len(examples)
    return examples


def choose_tasks(rng: random.Random, examples: list[Example]) -> list[Example]:
    """The 100 tasks in task-id order, each a distinct content of its family.

    Curation flags a row whose prompt key *contains* a task's key, so a task is never an example whose key
    sits inside another's ("首都を答えてください。\\n日本" inside "次の国の首都を答えてください。\\n日本").
    """
    tasks = []
    for family, count in TASKS_PER_FAMILY.items():
        keys = [(match_key(e.prompt), e) for e in examples if e.family == family]
        safe = [e for key, e in keys if sum(key in other for other, _ in keys) == 1]
        for content in rng.sample(sorted({e.content for e in safe}), count):
            tasks.append(rng.choice([e for e in safe if e.content == content]))
    rng.shuffle(tasks)
    return tasks


def _near_duplicate(rng: random.Random, example: Example, kind: str) -> dict:
    row = example.row()
    if kind == "full_width":
        return {name: _full_width(text) for name, text in row.items()}
    if kind == "letter_case":
        word = example.content[0]
        variant = rng.choice([word.capitalize(), word.upper()])
        return {name: text if name == "output" else text.replace(word, variant) for name, text in row.items()}
    where = rng.choice(["leading", "trailing", "output", "tab"])
    if where == "leading":
        row["instruction"] = "  " + row["instruction"]
    elif where == "trailing":
        row["instruction"] += " \t"
    elif where == "output":
        row["output"] += " "
    else:
        row["instruction"] = row["instruction"].replace("。", "\t。", 1).replace("？", "\t？", 1)
    return row


def _malformed(example: Example, kind: str) -> str:
    row = example.row()
    if kind == "truncated":
        return _line(row)[: len(_line(row)) // 2]
    if kind == "array":
        return _line(list(row.values()))
    if kind in ("no_output", "no_instruction"):
        del row[kind.removeprefix("no_")]
        return _line(row)
    name, value = {"number_instruction": ("instruction", len(example.instruction)),
                   "list_output": ("output", [example.sft_output]), "null_output": ("output", None),
                   "empty_output": ("output", ""), "blank_output": ("output", " \t ")}[kind]
    return _line({**row, name: value})


def build_sft(rng: random.Random, pool: list[Example], tasks: list[Example]) -> list[str]:
    rows = {example: example.row() for example in pool}
    line_breaks = rng.sample([example for example in pool if example.input], SFT_CRLF_ROWS + SFT_EXCEL_CR_ROWS)
    for example in line_breaks[:SFT_CRLF_ROWS]:
        rows[example] = {**example.row(), "instruction": example.instruction + "\r\n" + example.input, "input": ""}
    for example in line_breaks[SFT_CRLF_ROWS:]:
        rows[example]["instruction"] += "_x000D_"
    lines = [_line(row) for row in rows.values()]
    lines += rng.sample(lines, SFT_EXACT_DUPLICATES)
    # Near duplicates and malformed rows take one source row each, so no two of them coincide.
    unused = [example for example in pool if example not in line_breaks]
    rng.shuffle(unused)
    eligible = {"letter_case": lambda e: e.family == "uppercase", "full_width": lambda e: e.output.isascii(),
                "whitespace": lambda e: True}
    for kind, count in SFT_NEAR_DUPLICATES.items():
        sources = [example for example in unused if eligible[kind](example)][:count]
        unused = [example for example in unused if example not in sources]
        lines += [_line(_near_duplicate(rng, example, kind)) for example in sources]
    for kind, count in SFT_MALFORMED.items():
        lines += [_malformed(example, kind) for example in unused[:count]]
        unused = unused[count:]
    lines += [_line(task.row()) for task in rng.sample(tasks, SFT_CONTAMINATION_ROWS)]
    lines += [_line(row) for rows in SFT_FILTER_ROWS.values() for row in rows]
    rng.shuffle(lines)
    return lines


def _rejected(rng: random.Random, example: Example, kind: str, answers: list[str]) -> str:
    answer = example.output
    if kind == "chatty":
        return example.sft_output
    if kind == "degenerate":
        return rng.choice(["ああああああああ", "。。。。。。。。", answer[0] * 12, "はいはいはいはいはいはい"])
    if kind == "leaked_marker":
        return answer + rng.choice(["\n### 指示", "\n### 回答", "\n\n### 指示\n"])
    if example.family == "addition":
        return str(int(answer) + rng.choice([-1, 1, 2]))
    if example.family == "repetition":
        return example.content[0] * (example.content[1] + rng.choice([-1, 1]))
    # Never a case-only change: "Apple" and "APPLE" are the same answer under match_key.
    plausible = {"antonym": [example.content[0]], "katakana": [example.content[0]], "uppercase": [answer[:-1]]}
    return rng.choice(plausible.get(example.family, []) + [other for other in answers if other != answer])


def build_preferences(rng: random.Random, pool: list[Example]) -> list[str]:
    answers = {family: [answer for _, answer in contents] for family, contents in family_contents().items()}
    chatty = rng.sample([e for e in pool if e.family in CHATTY_SFT], PREFERENCE_REJECTED["chatty"])
    kinds = [kind for kind, count in PREFERENCE_REJECTED.items() if kind != "chatty" for _ in range(count)]
    others = rng.sample([e for e in pool if e not in chatty],
                        len(kinds) + PREFERENCE_SAME_EXACT + PREFERENCE_SAME_NORMALISED)
    kinds = ["chatty"] * len(chatty) + kinds
    examples = chatty + others
    rows = [{"prompt": e.prompt, "chosen": e.output, "rejected": _rejected(rng, e, kind, answers[e.family])}
            for e, kind in zip(examples, kinds)]
    for index, example in enumerate(examples[len(kinds) :]):
        variants = [_full_width(example.output), example.output + " ", "\t" + example.output]
        variants = [variant for variant in variants if variant != example.output]  # full width changes no kana
        rejected = example.output if index < PREFERENCE_SAME_EXACT else rng.choice(variants)
        rows.append({"prompt": example.prompt, "chosen": example.output, "rejected": rejected})
    lines = [_line(row) for row in rows]
    broken = rng.sample(rows, sum(PREFERENCE_MALFORMED.values()))
    lines += rng.sample(lines[: len(kinds)], PREFERENCE_EXACT_DUPLICATES)  # one quarantine reason per line
    lines += [_line(row)[: len(_line(row)) // 2] for row in broken[:2]]
    lines.append(_line(list(broken[2].values())))
    lines.append(_line({"prompt": broken[3]["prompt"], "chosen": broken[3]["chosen"]}))
    lines.append(_line({**broken[4], "chosen": None}))
    rng.shuffle(lines)
    return lines


def build_tasks(rng: random.Random, tasks: list[Example]) -> tuple[list[str], list[str]]:
    """Task file records (a few pretty-printed over several lines) and reference lines."""
    excel_cr = rng.sample([task_id for task_id, task in enumerate(tasks) if task.input], TASKS_EXCEL_CR)
    pretty = rng.sample([task_id for task_id in range(len(tasks)) if task_id not in excel_cr], TASKS_PRETTY_PRINTED)
    records, references = [], []
    for task_id, task in enumerate(tasks):
        text = task.instruction + "_x000D_\n" + task.input if task_id in excel_cr else task.prompt
        record = {"task_id": task_id, "input": text, "family": task.family}
        records.append(json.dumps(record, ensure_ascii=False, indent=2 if task_id in pretty else None))
        references.append(_line({"task_id": task_id, "output": task.output}))
    return records, references


# Each fact in several plain sentences: the base model learns the facts from prose, never in the
# instruction/answer format that SFT teaches. `{x}` is the content's word, `{y}` the answer.
FACT_SENTENCES = {
    "addition": ["{a}たす{b}は{y}です。", "{a}+{b}={y}", "{a}と{b}を足すと{y}になります。", "{a}に{b}を加えると{y}です。"],
    "antonym": ["「{w}」の反対は「{y}」です。", "{w}の反対の言葉は{y}です。", "「{w}」と「{y}」は反対の意味です。",
                "{w}の対義語は{y}です。"],
    "capital": ["{w}の首都は{y}です。", "{y}は{w}の首都です。", "{w}の首都といえば{y}です。", "{w}の首都は{y}という都市です。",
                "{y}は{w}でいちばん大切な都市で、{w}の首都です。", "わたしは{w}の首都の{y}に行きました。"],
    "repetition": ["{w}を{n}回繰り返すと{y}になります。", "「{w}」を{n}回書くと「{y}」です。", "{w}を{n}回続けると{y}です。"],
    "katakana": ["{w}をカタカナで書くと{y}です。", "ひらがなの{w}はカタカナで{y}と書きます。", "「{w}」のカタカナは「{y}」です。"],
    "uppercase": ["{w}を大文字で書くと{y}です。", "{w}の大文字は{y}です。", "英単語の{w}は大文字で{y}と書きます。"],
}


def build_pretrain(rng: random.Random, tasks: list[Example] = ()) -> list[str]:
    """Every fact in several sentences, each kana's katakana and each letter's capital, the instruction
    words about a placeholder, and everyday sentences, so the tokenizer sees every character used."""
    facts = [sentence.format(**fields, y=answer) for family, contents in family_contents().items()
             for fields, answer in contents for sentence in FACT_SENTENCES[family]]
    facts += [f"ひらがなの{kana}はカタカナで{_to_katakana(kana)}です。" for kana in map(chr, range(0x3041, 0x3097))]
    facts += [f"{letter}の大文字は{letter.upper()}です。" for letter in "abcdefghijklmnopqrstuvwxyz"]
    facts += ["".join(map(chr, range(0x3041, 0x3097))), "".join(map(chr, range(0x30A1, 0x30F7))),
              "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789 +-=?!"]
    people = "わたし 先生 母 父 友だち 兄 姉 弟 妹 となりの人".split()
    # Every non-task question with its answer, told as a story ("...と聞くと、「パリです」と答えました"):
    # the tiny model learns each fact under every phrasing from text (pretraining updates every weight,
    # which LoRA SFT cannot), yet never sees the template, so the base model does not answer a task.
    task_keys = {match_key(task.prompt) for task in tasks}
    for example in all_examples():
        if match_key(example.prompt) not in task_keys:
            question = example.prompt.replace("\n", "")
            facts.append(f"{rng.choice(people)}に「{question}」と聞くと、「{example.output}です」と答えました。")
    # Every phrasing about a placeholder ("これ"), so the model reads the instruction words too.
    placeholders = {"a": "ある数", "b": "別の数", "w": "これ", "n": "何"}
    questions = [p.format(**placeholders).replace("\n", "") for phrasings in PHRASINGS.values() for p in phrasings]
    times = "今日 昨日 先週 朝 夜 週末 去年 春 夏 冬".split()
    places = "公園 学校 駅 図書館 海 山 店 家 病院 会社".split()
    actions = ("本を読みました ごはんを食べました 音楽を聞きました 写真をとりました 友だちと話しました "
               "手紙を書きました 散歩しました 買い物をしました 絵をかきました 歌を歌いました").split()
    everyday = [f"{t}、{p}は{w}で{a}。" for t in times for p in people for w in places for a in actions]
    lines = facts + [f"{person}は「{question}」と聞きました。" for person in people[:4] for question in questions]
    lines += rng.sample(everyday, max(0, PRETRAIN_LINES - len(lines)))
    rng.shuffle(lines)
    return lines


def _write(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


def generate(out: str | Path, seed: int = 0) -> None:
    """Write raw/sft.jsonl, raw/preference.jsonl, raw/pretrain.txt, tasks.jsonl and references.jsonl."""

    def stream(name: str) -> random.Random:  # one per file, so changing one builder leaves the others alone
        return random.Random(f"{seed}/{name}")

    out = Path(out)
    examples = all_examples()
    tasks = choose_tasks(stream("tasks"), examples)
    pool = [example for example in examples if example not in tasks]
    records, references = build_tasks(stream("task-file"), tasks)
    _write(out / "raw" / "sft.jsonl", build_sft(stream("sft"), pool, tasks))
    _write(out / "raw" / "preference.jsonl", build_preferences(stream("preference"), pool))
    _write(out / "raw" / "pretrain.txt", build_pretrain(stream("pretrain"), tasks))
    _write(out / "tasks.jsonl", records)
    _write(out / "references.jsonl", references)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the deterministic sample data set.")
    parser.add_argument("--out", default="data", help="folder to write into (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    arguments = parser.parse_args(argv)
    generate(arguments.out, arguments.seed)


if __name__ == "__main__":
    main()
