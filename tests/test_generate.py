"""Generation: batching and left padding change nothing, answers come back in task order, templates are checked,
stop strings end answers, and answers failing the guards are regenerated a bounded number of times."""

import json
from collections import Counter

import pytest
import torch

from conftest import REPO
from tiny_model import TASKS, sft_adapter, tiny  # noqa: F401  (fixtures)
from tiny_model import recipe as tiny_recipe
from tunesmith import generate as generate_module
from tunesmith.atomic import read_jsonl
from tunesmith.generate import (
    answer_with_guards,
    check_template,
    cut_at_stop_strings,
    generate_answers,
    generate_batched,
    output_problems,
    repeated_ngram_count,
)
from tunesmith.model import ModelError, load_model, load_tokenizer, write_metadata
from tunesmith.normalize import normalize_text
from tunesmith.template import PromptTemplate


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
    prompts = [template.render_prompt(normalize_text(record["input"]), tokenizer) for record in task_records()[::5]]
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
    count = generate_answers(tiny.base_dir, tiny.section("base_model"), [sft_adapter.path], tiny.section("template"),
                             settings, str(tasks_path), seed=0, out_path=str(tmp_path / "answers.jsonl"))

    rows = read_jsonl(tmp_path / "answers.jsonl")
    expected = sorted(records, key=lambda record: record["task_id"])
    assert count == len(rows) == len(expected)
    assert [row["task_id"] for row in rows] == [record["task_id"] for record in expected]
    assert [row["input"] for row in rows] == [record["input"] for record in expected]
    assert any("_x000D_" in row["input"] for row in rows)
    template = PromptTemplate(tiny.section("template"))
    tokenizer = load_tokenizer(tiny.base_dir, tiny.section("base_model"))
    assert seen_prompts == [template.render_prompt(normalize_text(record["input"]), tokenizer) for record in expected]
    assert [row["output"] for row in rows] == [f"答え{index}" for index in range(len(rows))]
    assert all(row["raw_output"].startswith("### 回答\n") for row in rows)
    assert all(row["regenerated"] == [] and row["problems"] == [] for row in rows)


def adapter_with_hash(folder, template_hash: str) -> str:
    folder.mkdir()
    write_metadata(folder, stage="sft", template_hash=template_hash)
    return str(folder)


def test_check_template_names_both_hashes_on_mismatch(tiny, tmp_path):
    template = PromptTemplate(tiny.section("template"))
    matching = adapter_with_hash(tmp_path / "matching", template.hash)
    other = adapter_with_hash(tmp_path / "other", "0123456789abcdef")
    check_template([matching], template)
    with pytest.raises(ModelError) as error:
        check_template([matching, other], template)
    assert "0123456789abcdef" in str(error.value) and template.hash in str(error.value)
    assert "other" in str(error.value)
    check_template([matching, other], template, allow_mismatch=True)


def test_generation_refuses_an_adapter_of_another_template_before_writing(tiny, sft_adapter, tmp_path):
    chat = {**tiny.section("template"), "kind": "chat"}
    out_path = tmp_path / "answers.jsonl"
    with pytest.raises(ModelError, match="template"):
        generate_answers(tiny.base_dir, tiny.section("base_model"), [sft_adapter.path], chat,
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
    prompts = [template.render_prompt(normalize_text(record["input"]), tokenizer) for record in task_records()[:8]]
    settings = {**tiny.section("generate"), "max_new_tokens": 16, "batch_size": 8}
    free = generate_batched(prompt_model, tokenizer, prompts, settings, seed=0)
    # The character found early in most answers; not one of the prompt's end, which could complete a
    # match before the answer starts, nor the replacement character of a half-decoded byte sequence.
    counts = Counter(character for text in free for character in set(text[1 : len(text) // 2])
                     if character not in prompts[0][-8:] + "\ufffd")
    stop = counts.most_common(1)[0][0]
    assert counts[stop] >= 2, "no character recurs in the answers; the test would prove nothing"

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
    (KANA + "の" * 9, []),  # 9 of 31 characters: 29 %
    (KANA + "の" * 10, ["degenerate_char"]),  # 10 of 32: 31 %
    ("くるまくるまくるまくるま", []),  # a right answer: too short to judge its character share
    ("東京は日本の首都です。" * 5, ["repeated_ngram"]),
    ("東京は日本の首都です。" * 4, []),
], ids=["pass", "empty", "blank", "too_long", "share_below", "share_above", "short_repeats", "ngram_5", "ngram_4"])
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


def test_default_guards_pass_every_shipped_reference_answer():
    failing = {line: output_problems(json.loads(line)["output"], GUARDS) for line in open(REFERENCES, encoding="utf-8")}
    assert not {line: reasons for line, reasons in failing.items() if reasons}


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

    assert [prompts for prompts, _, _ in model.calls] == [["a", "b", "c", "d"], ["b", "c", "d"], ["c", "d"]]
    assert [seed for _, _, seed in model.calls] == [42, 43, 44]
    first, retry = model.calls[0][1], model.calls[1][1]
    assert (first["do_sample"], first["repetition_penalty"]) == (False, 1.0)
    assert (retry["do_sample"], retry["repetition_penalty"], retry["temperature"]) == (True, 1.3, 0.7)
    assert [answer.output for answer in answers] == ["東京", "ソウル", "パリ", ""]
    assert [answer.raw for answer in answers] == ["東京", "ソウル", "パリ", "### 回答\n"]
    assert [answer.regenerated for answer in answers] == [
        [], [["empty"]], [["degenerate_char", "repeated_ngram"], ["empty"]], [["empty"], ["empty"]],
    ]
    assert [answer.problems for answer in answers] == [[], [], [], ["empty"]]


def test_regeneration_is_bounded_and_keeps_the_last_attempt():
    model = ScriptedModel({"a": ["東京"], "b": ["", "の" * 30, "はい"]})
    answers = answer_with_guards(model, ["a", "b"], guarded_settings(retries=1), 0, str.strip)
    assert [prompts for prompts, _, _ in model.calls] == [["a", "b"], ["b"]]
    assert answers[1].output == "の" * 30 and answers[1].regenerated == [["empty"]]
    assert answers[1].problems == ["degenerate_char", "repeated_ngram"]

    model = ScriptedModel({"a": ["東京"], "b": [""]})
    answers = answer_with_guards(model, ["a", "b"], guarded_settings(retries=0), 0, str.strip)
    assert len(model.calls) == 1
    assert [answer.regenerated for answer in answers] == [[], []] and answers[1].problems == ["empty"]


def test_generated_rows_record_regeneration_in_task_order(tiny, tmp_path, monkeypatch):
    records = [record for record in task_records() if record["task_id"] in {4, 9, 12, 22}]
    tasks_path = tmp_path / "tasks.jsonl"
    tasks_path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in reversed(records)))
    calls = []

    def scripted(model, tokenizer, prompts, settings, seed):
        calls.append(len(prompts))
        if len(calls) == 1:  # the second task (in id order) degenerates, then recovers
            return ["答え", "### 回答\n" + "の" * 40, "答え", "答え"]
        return ["回復"] * len(prompts)

    monkeypatch.setattr(generate_module, "generate_batched", scripted)
    generate_answers(tiny.base_dir, tiny.section("base_model"), [], tiny.section("template"), tiny.section("generate"),
                     str(tasks_path), seed=0, out_path=str(tmp_path / "answers.jsonl"))
    rows = read_jsonl(tmp_path / "answers.jsonl")
    assert calls == [4, 1]
    assert [row["task_id"] for row in rows] == [4, 9, 12, 22]
    assert [row["output"] for row in rows] == ["答え", "回復", "答え", "答え"]
    assert [row["regenerated"] for row in rows] == [[], [["degenerate_char", "repeated_ngram"]], [], []]
    assert all(row["problems"] == [] for row in rows) and rows[1]["raw_output"] == "回復"
