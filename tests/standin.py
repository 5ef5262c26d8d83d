"""A stand-in for llm-jp/llm-jp-3-13b that runs on CPU: its architecture and config shape (LlamaForCausalLM,
its vocabulary and special-token ids) scaled down, randomly initialised, saved with llm-jp-3's real tokenizer.

The tokenizer comes from `../shared/llm-jp-3-tokenizer/` (the SentencePiece model of llm-jp/llm-jp-tokenizer,
Apache-2.0, and the Hugging Face configuration of the same vocabulary; its README lists the checked facts).
Only the `.model` is there, so the `tokenizers` fast tokenizer is built from it here, as that README says:
a Unigram model of the pieces with byte fallback, a normalizer that prepends `▁` and turns every space into
`▁` (the model's normalizer is `identity`, no NFKC, and keeps runs of spaces), BOS prepended by the
post-processor, and a decoder that undoes it. tests/test_standin.py checks it against `sentencepiece` itself.
A user's clone has no `../shared`: callers skip with `SKIP_REASON` when `TOKENIZER_DIR` is absent.

    python tests/standin.py OUT_DIR   # writes the stand-in model folder (tokenizer included)

bench/gpu_smoke.py imports `llm_jp_tokenizer` and `LLM_JP_3_13B` from here (its `--size 13b` mode builds
the full-size config on a GPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO.parent / "shared" / "llm-jp-3-tokenizer"
SPM_FILE = "llm-jp-tokenizer-100k.ver3.0b1.model"
SKIP_REASON = (f"no llm-jp-3 tokenizer at {TOKENIZER_DIR} (../shared is laid beside the project for developers "
               "and CI, not in a user's clone)")

# The special tokens of the Hugging Face configuration (tokenizer_config.json): the control pieces 3-6 of the
# SentencePiece model (<MASK> <PAD> <CLS> <SEP>) carry these names there, so pad is <PAD|LLM-jp>, id 4.
HF_NAMES = {3: "<MASK|LLM-jp>", 4: "<PAD|LLM-jp>", 5: "<CLS|LLM-jp>", 6: "<SEP|LLM-jp>"}
BOS_ID, EOS_ID, PAD_ID = 1, 2, 4
TOKENIZER_PIECES = 99_574

# llm-jp/llm-jp-3-13b's config.json (Llama architecture, multi-head attention, untied LM head). Its
# vocab_size is the tokenizer's 99,574 pieces padded to a multiple of 64: ids 99,574-99,583 are rows of the
# embedding that no text encodes to. Written from the public config, which no test here can download.
LLM_JP_3_13B = dict(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
    max_position_embeddings=4096, vocab_size=99584, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
    tie_word_embeddings=False, attention_bias=False, mlp_bias=False, initializer_range=0.02,
    bos_token_id=BOS_ID, eos_token_id=EOS_ID,
)
# CPU size: the same vocabulary (the embedding and LM head are then most of the 13M parameters), two layers,
# head size 16 and the 13B's intermediate/hidden ratio (2.7).
CPU_SCALE = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4)


class StandinError(RuntimeError):
    """The shared tokenizer is not the model this builder was checked against."""


def _model_proto(folder: Path):
    from transformers.convert_slow_tokenizer import import_protobuf  # protobuf alone parses a .model file

    proto = import_protobuf().ModelProto()
    proto.ParseFromString((folder / SPM_FILE).read_bytes())
    return proto


def llm_jp_tokenizer(folder: Path = TOKENIZER_DIR):
    """llm-jp-3's tokenizer as a transformers fast tokenizer, built from the SentencePiece model and the
    Hugging Face configuration in `folder`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    proto = _model_proto(folder)
    spec, normalizer = proto.trainer_spec, proto.normalizer_spec
    # The construction below is equivalent only for this kind of model: say so rather than build another.
    facts = {"model type": (spec.model_type, 1), "byte_fallback": (spec.byte_fallback, True),
             "split_by_whitespace": (spec.split_by_whitespace, False), "normalizer": (normalizer.name, "identity"),
             "add_dummy_prefix": (normalizer.add_dummy_prefix, True),
             "remove_extra_whitespaces": (normalizer.remove_extra_whitespaces, False),
             "pieces": (len(proto.pieces), TOKENIZER_PIECES)}
    wrong = {name: found for name, (found, wanted) in facts.items() if found != wanted}
    if wrong:
        raise StandinError(f"{folder / SPM_FILE}: not the llm-jp-3 SentencePiece model this builder knows ({wrong})")
    pieces = [(HF_NAMES.get(index, piece.piece), piece.score) for index, piece in enumerate(proto.pieces)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=spec.unk_id, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bos = pieces[BOS_ID][0]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, BOS_ID)])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    named = {key: config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token", "cls_token",
                                          "sep_token", "mask_token")}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **named)
    ids = {name: tokenizer.convert_tokens_to_ids(config[f"{name}_token"]) for name in ("bos", "eos", "pad")}
    if ids != {"bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID}:
        raise StandinError(f"{folder / 'tokenizer_config.json'}: special tokens map to {ids}, "
                           f"not BOS {BOS_ID}, EOS {EOS_ID}, PAD {PAD_ID}")
    return tokenizer


def build_standin(out_dir: str | Path, scale: dict | None = None, seed: int = 0) -> Path:
    """A from_pretrained folder: llm-jp-3-13b's config at `scale` (CPU_SCALE by default), random weights in
    float32, and llm-jp-3's tokenizer. No chat template: the 13B recipe's template is `kind: plain`, and
    llm-jp-3-13b (the base model) ships none."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = llm_jp_tokenizer()
    config = LlamaConfig(**{**LLM_JP_3_13B, **(scale if scale is not None else CPU_SCALE)})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID)  # no pad id, as the 13B's
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build_standin(sys.argv[1]))
