"""Preference accuracy: answer log-probabilities as trl's DPO splits the text, batched like one at a time,
and the share of held-out pairs whose chosen answer wins."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tunesmith.evaluation.preference_accuracy import answer_log_probs, compare_pairs, held_out_pairs, pair_tokens
from tunesmith.model.template import PromptTemplate

TEMPLATE = PromptTemplate({"kind": "plain", "prompt": "### 指示\n{input}\n### 回答\n", "system": None,
                           "chat_template": None, "stop_markers": [], "allow_mismatch": False})
PAIRS = [
    {"prompt": "フランスの首都はどこですか？", "chosen": "パリ", "rejected": "パリです。"},
    {"prompt": "3+5はいくつですか？", "chosen": "8", "rejected": "9"},
    {"prompt": "「ねこ」を2回繰り返してください。", "chosen": "ねこねこ", "rejected": "ねこねこねこねこねこ"},
]


@pytest.fixture(scope="module")
def random_model(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=tiny_tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def one_at_a_time(model, tokenizer, prompt: str, answer: str) -> float:
    """The definition, unbatched: log p(answer tokens, then EOS | prompt)."""
    ids = tokenizer(prompt + answer + tokenizer.eos_token).input_ids
    start = len(tokenizer(prompt).input_ids)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
    return sum(log_probs[position - 1, ids[position]].item() for position in range(start, len(ids)))


def test_the_answer_starts_after_the_prompt_and_ends_with_eos(tiny_tokenizer):
    prompt = TEMPLATE.render_prompt(PAIRS[0]["prompt"], tiny_tokenizer)
    (chosen, start), (rejected, same_start) = pair_tokens(tiny_tokenizer, prompt, "パリ", "パリです。")
    assert start == same_start == len(tiny_tokenizer(prompt).input_ids)
    assert tiny_tokenizer.decode(chosen[start:]) == "パリ" + tiny_tokenizer.eos_token
    assert tiny_tokenizer.decode(rejected[start:]) == "パリです。" + tiny_tokenizer.eos_token
    assert chosen[0] == tiny_tokenizer.bos_token_id and chosen.count(tiny_tokenizer.bos_token_id) == 1


def test_batched_log_probs_equal_the_definition(random_model, tiny_tokenizer):
    prompts = [TEMPLATE.render_prompt(pair["prompt"], tiny_tokenizer) for pair in PAIRS]
    sequences = [tokens for prompt, pair in zip(prompts, PAIRS)
                 for tokens in pair_tokens(tiny_tokenizer, prompt, pair["chosen"], pair["rejected"])]
    # Batches of mixed lengths, so padding and masking are exercised.
    batched = answer_log_probs(random_model, sequences, tiny_tokenizer.pad_token_id, batch_size=4)
    expected = [one_at_a_time(random_model, tiny_tokenizer, prompt, pair[side])
                for prompt, pair in zip(prompts, PAIRS) for side in ("chosen", "rejected")]
    assert batched == pytest.approx(expected, abs=1e-4)


class Prefers(torch.nn.Module):
    """A stand-in model whose every next-token distribution puts most weight on one token."""

    def __init__(self, token_id: int, vocab: int):
        super().__init__()
        self.token_id, self.vocab = token_id, vocab
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros((*input_ids.shape, self.vocab))
        logits[..., self.token_id] = 5.0
        return type("Output", (), {"logits": logits})()


def test_accuracy_counts_the_pairs_whose_chosen_answer_is_more_likely(tiny_tokenizer):
    liked = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer("あ", add_special_tokens=False).input_ids)
    assert len(liked) == 1
    liked_id = tiny_tokenizer.convert_tokens_to_ids(liked[0])
    model = Prefers(liked_id, len(tiny_tokenizer))
    pairs = [{"prompt": "質問", "chosen": "あ", "rejected": "い", "source": "s", "line": 1},
             {"prompt": "質問", "chosen": "い", "rejected": "あ", "source": "s", "line": 2},
             {"prompt": "質問", "chosen": "ああ", "rejected": "いい", "source": "s", "line": 3}]
    result = compare_pairs(model, tiny_tokenizer, TEMPLATE, pairs)
    assert result["pairs"] == 3
    assert [pair["prefers_chosen"] for pair in result["per_pair"]] == [True, False, True]
    assert result["accuracy"] == pytest.approx(2 / 3)
    margins = [pair["chosen_log_prob"] - pair["rejected_log_prob"] for pair in result["per_pair"]]
    assert result["mean_margin"] == pytest.approx(sum(margins) / 3)
    assert margins[0] > 0 > margins[1]


def test_only_the_validation_split_is_measured(tmp_path):
    path = tmp_path / "preference.parquet"
    rows = [{"prompt": f"p{index}", "chosen": "a", "rejected": "b", "source": "s", "line": index,
             "split": "validation" if index % 3 == 0 else "train"} for index in range(9)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [row["line"] for row in held_out_pairs(path)] == [0, 3, 6]
    pq.write_table(pa.Table.from_pylist([{**row, "split": "train"} for row in rows]), path)
    with pytest.raises(ValueError, match="no preference pairs in the validation split"):
        held_out_pairs(path)
