"""LoRA SFT and DPO over the curated Parquet datasets, with trl.

Both stages render their data with the recipe's one template (`tunesmith.template`) into
prompt/completion text, so trl computes the loss on responses only and generation later sees the
same prompt text. Each saves a peft adapter folder plus `tunesmith.json` (template hash, stage,
base model, seed) and the training log as CSV.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil

import torch

from tunesmith.atomic import atomic_path
from tunesmith.model import load_model, load_tokenizer, write_metadata
from tunesmith.template import PromptTemplate

log = logging.getLogger(__name__)


def _lora_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )


def _common_args(section: dict, seed: int, output_dir: str) -> dict:
    """TrainingArguments shared by SFTConfig and DPOConfig, from a recipe's sft/dpo section."""
    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=section["batch_size"],
        gradient_accumulation_steps=section["gradient_accumulation_steps"],
        num_train_epochs=section["epochs"],
        max_steps=section["max_steps"],
        learning_rate=section["learning_rate"],
        lr_scheduler_type=section["lr_scheduler"],
        warmup_steps=section["warmup_steps"],
        max_length=section["max_length"],
        logging_steps=section["logging_steps"],
        activation_checkpointing=section["activation_checkpointing"],
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
    )


def _read_parquet(path: str):
    from datasets import Dataset

    return Dataset.from_parquet(path)


def _save(trainer, tmp: str, stage: str, template: PromptTemplate, base: str, seed: int, **extra) -> None:
    trainer.save_model(tmp)
    shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
    write_metadata(tmp, stage=stage, template_hash=template.hash, base_model=base, seed=seed, **extra)
    history = trainer.state.log_history
    fields = sorted({key for entry in history for key in entry})
    with open(os.path.join(tmp, "training_log.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def train_sft(
    base_path: str, base_section: dict, template_section: dict, sft: dict, dataset_path: str,
    seed: int, out_dir: str, threads: int = 1,
) -> dict:
    """LoRA SFT; returns the final training loss. Output: a folder PeftModel.from_pretrained loads."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    set_seed(seed)
    template = PromptTemplate(template_section)
    tokenizer = load_tokenizer(base_path, base_section)
    rows = _read_parquet(dataset_path)
    dataset = rows.map(
        lambda row: {
            "prompt": template.render_prompt(row["prompt"], tokenizer),
            "completion": template.render_completion(row["prompt"], row["response"], tokenizer),
        },
        remove_columns=rows.column_names,
    )
    model = load_model(base_path, base_section)
    with atomic_path(out_dir, directory=True) as tmp:
        args = SFTConfig(**_common_args(sft, seed, os.path.join(tmp, "trainer")), completion_only_loss=True)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            peft_config=_lora_config(sft["lora"]),
        )
        result = trainer.train()
        _save(trainer, tmp, "sft", template, base_path, seed, rows=len(dataset))
    log.info("sft: %d rows, final loss %.4f", len(dataset), result.training_loss)
    return {"train_loss": result.training_loss, "rows": len(dataset)}


def train_dpo(
    base_path: str, base_section: dict, template_section: dict, dpo: dict, dataset_path: str,
    sft_adapter: str, seed: int, out_dir: str, threads: int = 1,
) -> dict:
    """DPO with a new LoRA adapter on the merged SFT model; the reference is that model itself
    (trl disables the adapter to compute reference log-probabilities)."""
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(threads)
    set_seed(seed)
    template = PromptTemplate(template_section)
    tokenizer = load_tokenizer(base_path, base_section)
    rows = _read_parquet(dataset_path)
    dataset = rows.map(
        lambda row: {
            "prompt": template.render_prompt(row["prompt"], tokenizer),
            "chosen": template.render_completion(row["prompt"], row["chosen"], tokenizer),
            "rejected": template.render_completion(row["prompt"], row["rejected"], tokenizer),
        },
        remove_columns=rows.column_names,
    )
    model = load_model(base_path, base_section, adapters=[sft_adapter])
    with atomic_path(out_dir, directory=True) as tmp:
        args = DPOConfig(
            **_common_args(dpo, seed, os.path.join(tmp, "trainer")), beta=dpo["beta"], loss_type=[dpo["loss_type"]]
        )
        trainer = DPOTrainer(
            model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
            peft_config=_lora_config(dpo["lora"]),
        )
        result = trainer.train()
        _save(trainer, tmp, "dpo", template, base_path, seed, rows=len(dataset), on_top_of=sft_adapter)
    log.info("dpo: %d pairs, final loss %.4f", len(dataset), result.training_loss)
    return {"train_loss": result.training_loss, "rows": len(dataset)}
