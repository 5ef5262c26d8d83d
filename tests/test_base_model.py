"""The embedded tiny model: tokenizer conventions, hub-style loading, determinism, and that pretraining learns."""

import pytest
import torch
from safetensors.torch import load_file

from tiny_model import BUILD, PRETRAIN_TEXT, SEED, tiny  # noqa: F401  (tiny is a fixture)
from tunesmith.model.base_model import pretrain_base, read_text_lines

TEXTS = ["ねこがすきです", "カタカナとひらがな", "東京都の首都機能", "Hello, world! 123", "「りんご」を2回 apple×2\n改行も",
         "𠮷野家で　全角スペース"]


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.base_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_japanese_and_ascii(tokenizer, text):
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_tokenizer_adds_exactly_one_bos_and_no_eos(tokenizer):
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1
        assert tokenizer.eos_token_id not in ids


def test_tokenizer_has_distinct_special_tokens_and_a_chat_template(tokenizer):
    special = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
    assert None not in special and len(special) == 3
    assert len(tokenizer) == BUILD["vocab_size"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "ねこ"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "### 指示\nねこ\n### 回答\n"


def test_base_loads_like_a_hub_checkpoint(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.base_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny.base_dir)
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads) == (
        BUILD["hidden_size"], BUILD["intermediate_size"], BUILD["num_hidden_layers"], BUILD["num_attention_heads"])
    assert config.vocab_size == len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**tokenizer(["ねこ"], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_same_seed_builds_identical_weights(tiny, tmp_path):
    pretrain_base(tiny.tokenizer_dir, [PRETRAIN_TEXT], tiny.recipe["base_model"]["build"], SEED, str(tmp_path / "again"))
    first, second = load_file(f"{tiny.base_dir}/model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _loss_on_fixed_batch(folder: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(read_text_lines([PRETRAIN_TEXT])[:16], return_tensors="pt", padding=True, truncation=True,
                      max_length=BUILD["max_length"])
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    with torch.no_grad():
        return model(**batch, labels=labels).loss.item()


def test_pretraining_lowers_the_loss(tiny, tmp_path):
    build = tiny.recipe["base_model"]["build"]
    untrained = pretrain_base(tiny.tokenizer_dir, [PRETRAIN_TEXT], {**build, "pretrain_steps": 0}, SEED,
                              str(tmp_path / "untrained"))
    trained = pretrain_base(tiny.tokenizer_dir, [PRETRAIN_TEXT], {**build, "pretrain_steps": 30}, SEED,
                            str(tmp_path / "trained"))
    assert untrained["train_loss"] is None and trained["train_loss"] is not None
    before, after = _loss_on_fixed_batch(str(tmp_path / "untrained")), _loss_on_fixed_batch(str(tmp_path / "trained"))
    assert after < before - 0.5, (before, after)
