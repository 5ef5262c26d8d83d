"""The rows training hands trl: the token-boundary and BOS check at training start (tunesmith.training.train_data), with
a tokenizer whose pieces span the prompt's end and the answer, and templates that write BOS themselves."""

import logging

import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from tunesmith.config.recipe import validate_recipe
from tunesmith.model.template import PromptTemplate
from tunesmith.training.train_data import BOS_NOT_ONCE, PROMPT_NOT_PREFIX, Renderer, check_boundaries, rendered

ALPHABET = list("QA:x\nabcdefgh0123456789 ")


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer that, like SentencePiece without a newline piece of its own, merges a newline with the
    letter after it: a prompt ending in "\\n" and an answer starting with "A" tokenize across the boundary."""
    vocab = {"<s>": 0, "</s>": 1, **{char: index + 2 for index, char in enumerate(ALPHABET)}}
    vocab["\nA"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "A")]))
    tokenizer.add_special_tokens(["<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def template(**section) -> PromptTemplate:
    recipe = {"template": section, "sources": [
        {"id": "s", "path": "s", "role": "sft"}, {"id": "t", "path": "t", "format": "text", "role": "pretrain"}],
        "dpo": {"enabled": False}}
    return PromptTemplate(validate_recipe(recipe)["template"])


def sft_rows(answers: list[str]) -> list[dict]:
    return [{"prompt": f"x{index}", "response": answer, "source": "sample", "line": index + 1}
            for index, answer in enumerate(answers)]


def render(tokenizer, prompt: str, answers: list[str]):
    renderer = Renderer(template(prompt=prompt), tokenizer, max_length=64, long_prompts="drop")
    return rendered(sft_rows(answers), renderer.sft)


def test_a_token_spanning_the_prompt_and_the_answer_is_shown_and_refused_above_the_share(caplog):
    tokenizer = merging_tokenizer()
    answers = ["Abc", "b1", "c2", "d3", "e4", "f5", "g6", "h7", "a8", "b9"]  # line 1 starts with the merging "A"
    _, lengths = render(tokenizer, "Q:{input}\n", answers)
    assert (lengths.mismatched, dict(lengths.mismatches)) == (1, {PROMPT_NOT_PREFIX: 1})
    with pytest.raises(ValueError) as error:
        check_boundaries(lengths, None, 0.05, "sft.parquet")
    message = str(error.value)
    assert "1 of 10 rows (10.0%)" in message and "sample line 1" in message and "template.max_boundary_mismatch" in message
    assert "\\nA" in message  # the piece that spans the boundary is shown
    with caplog.at_level(logging.WARNING, logger="tunesmith.training.train_data"):
        check_boundaries(lengths, None, 0.1, "sft.parquet")  # at the share: trains, and says so
    assert "sample line 1: prompt_not_a_token_prefix" in caplog.text


def test_a_prompt_ending_on_a_token_boundary_passes():
    # The same rows with a prompt whose last piece cannot merge with the answer: nothing to report.
    _, lengths = render(merging_tokenizer(), "Q:{input}\n:", ["Abc", "b1"])
    assert lengths.mismatched == 0
    check_boundaries(lengths, None, 0.0, "sft.parquet")


def test_bos_written_into_the_prompt_is_counted(tiny_tokenizer):
    """A template that writes BOS as text gives sequences of two BOS: every row offends, training refuses."""
    _, lengths = render(tiny_tokenizer, "<s>### 指示\n{input}\n### 回答\n", ["いぬ", "ねこ"])
    assert dict(lengths.mismatches) == {BOS_NOT_ONCE: 2}
    with pytest.raises(ValueError, match=r"(?s)2 of 2 rows .*2 BOS"):
        check_boundaries(lengths, None, 0.01, "sft.parquet")


BOS_CHAT_TEMPLATE = (  # the shape of instruct models' templates: BOS written by the template itself
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% else %}A: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)


def test_a_chat_template_that_writes_bos_renders_text_without_it_and_encodes_one_bos(tiny_tokenizer):
    """tunesmith.model.template strips the template's BOS: the tokenizer adds the one BOS when encoding, in trl and in
    generation alike. Without the stripping every sequence would start with two."""
    chat = template(kind="chat", chat_template=BOS_CHAT_TEMPLATE)
    bos = tiny_tokenizer.bos_token
    prompt = chat.render_prompt("ねこ", tiny_tokenizer)
    completion = chat.render_completion("ねこ", "いぬ", tiny_tokenizer)
    assert prompt == "Q: ねこ\nA: " and bos not in prompt + completion
    assert tiny_tokenizer(prompt + completion).input_ids.count(tiny_tokenizer.bos_token_id) == 1
    renderer = Renderer(chat, tiny_tokenizer, max_length=64, long_prompts="drop")
    _, lengths = rendered(sft_rows(["いぬ", "ねこ", "とり"]), renderer.sft)
    assert lengths.mismatched == 0
