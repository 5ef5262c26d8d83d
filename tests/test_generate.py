"""Generation: batching and left padding change nothing, answers come back in task order, templates are checked."""

import json

import pytest
import torch

from tiny_model import TASKS, sft_adapter, tiny  # noqa: F401  (fixtures)
from tunesmith import generate as generate_module
from tunesmith.atomic import read_jsonl
from tunesmith.generate import check_template, generate_answers, generate_batched
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
