"""One template for SFT, DPO and generation: rendering, BOS convention, hashing, output cleaning."""

import pytest

from tunesmith.config.recipe import validate_recipe
from tunesmith.model.template import PromptTemplate, TemplateError


def template(**section):
    recipe = {"template": section, "sources": [
        {"id": "s", "path": "s", "role": "sft"}, {"id": "t", "path": "t", "format": "text", "role": "pretrain"}],
        "dpo": {"enabled": False}}
    return PromptTemplate(validate_recipe(recipe)["template"])


def test_plain_template_is_the_course_form(tiny_tokenizer):
    plain = template()
    assert plain.render_prompt("3と5を足すと？", tiny_tokenizer) == "### 指示\n3と5を足すと？\n### 回答\n"
    assert plain.render_completion("3と5を足すと？", "8", tiny_tokenizer) == "8"


def test_user_text_with_braces_is_not_formatted(tiny_tokenizer):
    assert "{x} {input}" in template().render_prompt("{x} {input}", tiny_tokenizer)


def test_exactly_one_bos_when_the_prompt_is_encoded(tiny_tokenizer):
    """Training (trl: tok(prompt)) and generation (tok(prompt)) both get BOS from the tokenizer once."""
    for kind in ("plain", "chat"):
        prompt = template(kind=kind).render_prompt("ねこ", tiny_tokenizer)
        assert not prompt.startswith(tiny_tokenizer.bos_token)
        ids = tiny_tokenizer(prompt).input_ids
        assert ids[0] == tiny_tokenizer.bos_token_id and ids.count(tiny_tokenizer.bos_token_id) == 1


def test_chat_template_prompt_is_prefix_of_full_conversation(tiny_tokenizer):
    chat = template(kind="chat", system="あなたは親切です。")
    prompt = chat.render_prompt("ねこ", tiny_tokenizer)
    completion = chat.render_completion("ねこ", "いぬ", tiny_tokenizer)
    assert prompt.startswith("あなたは親切です。") and prompt.endswith("### 回答\n")
    assert completion.startswith("いぬ") and tiny_tokenizer.eos_token in completion


def test_chat_template_that_renders_prompt_differently_is_refused(tiny_tokenizer):
    broken = template(kind="chat", chat_template=(
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>{% endif %}"))
    with pytest.raises(TemplateError, match="differently"):
        broken.render_completion("a", "b", tiny_tokenizer)


def test_hash_changes_with_rendering_keys_only():
    assert template().hash == template(stop_markers=["###"], allow_mismatch=True).hash
    assert template().hash != template(prompt="Q: {input}\nA: ").hash


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("8", "8"),
        ("  8\n", "8"),
        ("8\n### 指示\n次の問題", "8"),
        ("### 回答\n8", "8"),
        ("### 回答\n### 回答 サクラ\n### 指示", "サクラ"),
        ("東京です。### 回答", "東京です。"),
        ("### 指示", ""),
        ("### 回答例\n東京", "### 回答例\n東京"),  # a heading that begins with a marker's text is the answer
        ("### 回答\n### 回答例です", "### 回答例です"),
        ("例は次の通り。\n### 回答例\nA", "例は次の通り。\n### 回答例\nA"),
        ("8\n### 回答 9", "8"),
    ],
)
def test_clean_output_strips_leaked_markers(raw, clean):
    assert template().clean_output(raw) == clean


def test_markers_come_from_the_plain_template_or_the_recipe():
    assert template().markers() == ["### 指示", "### 回答"]
    assert template(stop_markers=["<|end|>"]).markers() == ["<|end|>"]
    assert template(kind="chat").markers() == []
