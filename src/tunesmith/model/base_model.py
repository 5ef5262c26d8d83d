"""The embedded default base model: a character tokenizer and a tiny Llama, built from shipped text.

It exists so the whole pipeline runs on a laptop with no GPU and no network. It is saved with
`save_pretrained`, so later stages load it exactly like a hub checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

from tunesmith.data.normalize import normalize_text
from tunesmith.jobs.atomic import atomic_path
from tunesmith.jobs.progress import training_lines

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# The chat template shipped with the tiny tokenizer: the course's plain form as Jinja, so a recipe
# with `template.kind: chat` also works on the tiny model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### 指示\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}### 回答\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### 回答\n{% endif %}"
)


def read_text_lines(paths: list[str]) -> list[str]:
    """Non-empty, normalised documents (one per line) of the pretrain sources."""
    lines = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines.extend(text for text in map(normalize_text, handle) if text)
    return lines


def train_tokenizer(text_paths: list[str], vocab_size: int, out_dir: str | os.PathLike) -> None:
    """Train a byte-level tokenizer with one token per character: BPE merges bytes only within a
    character, so the most frequent `vocab_size` characters (special tokens and the 256 bytes
    included) get a token of their own and any other text still encodes, as bytes. BOS is added by
    the post-processor on every encode.

    Characters rather than BPE words, because the tiny model learns the sample tasks (copy a word n
    times, hiragana to katakana, upper case) as per-character rules: a BPE vocabulary that spells
    "ねこ", "ねこねこ" and "サクラ" as unrelated tokens leaves it only memorising."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = read_text_lines(text_paths)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated"),  # every character alone, newlines too
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    wrapped.chat_template = CHAT_TEMPLATE
    with atomic_path(out_dir, directory=True) as tmp:
        wrapped.save_pretrained(tmp)
    log.info("tokenizer: %d tokens from %d documents", len(wrapped), len(lines))


def pretrain_base(
    tokenizer_dir: str, text_paths: list[str], build: dict, seed: int, out_dir: str, threads: int = 1
) -> dict:
    """Initialise a tiny Llama from a config and pretrain it briefly (causal LM, packed sequences)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=build["hidden_size"],
        intermediate_size=build["intermediate_size"],
        num_hidden_layers=build["num_hidden_layers"],
        num_attention_heads=build["num_attention_heads"],
        max_position_embeddings=build["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    log.info("tiny llama: %.2fM parameters", model.num_parameters() / 1e6)
    dataset = Dataset.from_dict({"text": read_text_lines(text_paths)})
    with atomic_path(out_dir, directory=True) as tmp:
        args = SFTConfig(
            output_dir=os.path.join(tmp, "trainer"),
            max_steps=build["pretrain_steps"],
            per_device_train_batch_size=build["batch_size"],
            learning_rate=build["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=max(1, build["pretrain_steps"] // 20),
            max_length=build["max_length"],
            packing=True,
            # Plain block concatenation: trl's default best-fit packing turns on padding-free
            # attention, which on CPU is several times slower than ordinary batches.
            packing_strategy="wrapped",
            logging_steps=max(1, build["pretrain_steps"] // 10),
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            activation_checkpointing=False,  # trl turns it on by default; a tiny model needs no memory saving
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        training_lines(trainer, "pretraining")
        result = trainer.train() if build["pretrain_steps"] > 0 else None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
    return {"parameters": model.num_parameters(), "train_loss": result.training_loss if result else None}
