"""LoRA SFT and DPO over the curated Parquet datasets, with trl.

Both stages render their data with the recipe's one template (`tunesmith.template`) into
prompt/completion text, so trl computes the loss on responses only and generation later sees the
same prompt text. Each saves a peft adapter folder plus `tunesmith.json` (template hash, stage,
base model, seed) and the training curves as CSV and PNG.

A run killed half-way resumes: with `save_steps` > 0, checkpoints go to `<adapter>.checkpoints/<key>`,
where the key hashes everything that shapes the run (settings, data, base, template, seed), so a
restart of the same job continues from its last checkpoint and a changed job starts afresh.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil

import torch

from tunesmith.atomic import atomic_path
from tunesmith.manifest import content_hash
from tunesmith.model import load_model, load_tokenizer, write_metadata
from tunesmith.recipe import section_hash
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


def checkpoint_dir(out_dir: str, stage_section: dict, dataset_path: str, base_path: str,
                   template: PromptTemplate, seed: int, extra: str = "", scratch: str = "") -> str:
    """Where a run keeps its resumable checkpoints: keyed by everything that shapes the run.
    Without `save_steps` nothing is resumable, and the trainer works in `scratch` (inside the
    temporary output, so a failure leaves nothing)."""
    if not stage_section["save_steps"] and scratch:
        return os.path.join(scratch, "trainer")
    key = section_hash([stage_section, content_hash(dataset_path), base_path, template.hash, seed, extra])
    return os.path.join(f"{out_dir}.checkpoints", key)


def _train(trainer, checkpoints: str):
    """Train, resuming from the newest checkpoint a killed run of the same job left behind."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
    if last:
        log.info("resuming from %s", last)
    return trainer.train(resume_from_checkpoint=last)


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
        save_strategy="steps" if section["save_steps"] else "no",
        save_steps=section["save_steps"] or 500,
        save_total_limit=2,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
    )


def _prepare(base_path: str, base_section: dict, template_section: dict, seed: int, threads: int):
    """What both stages set up before their data: threads, seeds, the template and the tokenizer."""
    from transformers import set_seed

    torch.set_num_threads(threads)
    set_seed(seed)
    return PromptTemplate(template_section), load_tokenizer(base_path, base_section)


def _read_parquet(path: str):
    from datasets import Dataset

    return Dataset.from_parquet(path)


def split_by_id(rows, fraction: float):
    """(train, eval) rows; a row's side depends on its content hash only, so it never moves between
    runs or when other rows are added."""
    if not fraction:
        return rows, None
    held_out = [int(row_id[:8], 16) / 2**32 < fraction for row_id in rows["id"]]
    train = rows.select([index for index, held in enumerate(held_out) if not held])
    evaluation = rows.select([index for index, held in enumerate(held_out) if held])
    return train, (evaluation if len(evaluation) else None)


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
    plot_curves(history, os.path.join(tmp, "training_curves.png"), title=f"{stage} ({base})")


def plot_curves(history: list[dict], path: str, title: str) -> None:
    """Loss (and eval loss) against step, learning rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        return [step for step, _ in points], [value for _, value in points]

    figure, loss_axis = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "eval_loss"):
        steps, values = series(key)
        if steps:
            loss_axis.plot(steps, values, marker="." if key == "eval_loss" else None, label=key)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    rate_axis = loss_axis.twinx()
    steps, values = series("learning_rate")
    rate_axis.plot(steps, values, color="grey", linestyle=":", label="learning rate")
    rate_axis.set_ylabel("learning rate")
    figure.legend(loc="upper right")
    loss_axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train_sft(
    base_path: str, base_section: dict, template_section: dict, sft: dict, dataset_path: str,
    seed: int, out_dir: str, threads: int = 1,
) -> dict:
    """LoRA SFT; returns the final training loss. Output: a folder PeftModel.from_pretrained loads."""
    from trl import SFTConfig, SFTTrainer

    template, tokenizer = _prepare(base_path, base_section, template_section, seed, threads)
    rows = _read_parquet(dataset_path)
    render = lambda row: {  # noqa: E731
        "prompt": template.render_prompt(row["prompt"], tokenizer),
        "completion": template.render_completion(row["prompt"], row["response"], tokenizer),
    }
    train_rows, eval_rows = split_by_id(rows, sft["eval_fraction"])
    dataset = train_rows.map(render, remove_columns=rows.column_names)
    eval_dataset = eval_rows.map(render, remove_columns=rows.column_names) if eval_rows else None
    model = load_model(base_path, base_section)
    with atomic_path(out_dir, directory=True) as tmp:
        checkpoints = checkpoint_dir(out_dir, sft, dataset_path, base_path, template, seed, scratch=tmp)
        args = SFTConfig(
            **_common_args(sft, seed, checkpoints),
            completion_only_loss=True,
            packing=sft["packing"],
            packing_strategy=sft["packing_strategy"],
            eval_strategy="steps" if eval_dataset else "no",
            eval_steps=sft["logging_steps"],
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
            peft_config=_lora_config(sft["lora"]),
        )
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, "sft", template, base_path, seed, rows=len(dataset),
              eval_rows=len(eval_dataset) if eval_dataset else 0)
    shutil.rmtree(f"{out_dir}.checkpoints", ignore_errors=True)
    log.info("sft: %d rows, final loss %.4f", len(dataset), result.training_loss)
    return {"train_loss": result.training_loss, "rows": len(dataset)}


def train_dpo(
    base_path: str, base_section: dict, template_section: dict, dpo: dict, dataset_path: str,
    sft_adapter: str, seed: int, out_dir: str, threads: int = 1,
) -> dict:
    """DPO from the SFT result, as `dpo.start` chooses:
    - merged_sft: a new LoRA adapter on the merged SFT model; the reference is that model itself
      (trl disables the adapter to compute reference log-probabilities). Generation merges both.
    - continue_sft: the SFT adapter itself trains on; the reference is the base model (adapter
      disabled). The result replaces the SFT adapter, the usual QLoRA path on a 4-bit base."""
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    template, tokenizer = _prepare(base_path, base_section, template_section, seed, threads)
    rows = _read_parquet(dataset_path)
    dataset = rows.map(
        lambda row: {
            "prompt": template.render_prompt(row["prompt"], tokenizer),
            "chosen": template.render_completion(row["prompt"], row["chosen"], tokenizer),
            "rejected": template.render_completion(row["prompt"], row["rejected"], tokenizer),
        },
        remove_columns=rows.column_names,
    )
    if dpo["start"] == "continue_sft":
        model = PeftModel.from_pretrained(load_model(base_path, base_section), sft_adapter, is_trainable=True)
        peft_config, chain = None, {"continues": sft_adapter}
    else:
        model = load_model(base_path, base_section, adapters=[sft_adapter])
        peft_config, chain = _lora_config(dpo["lora"]), {"on_top_of": sft_adapter}
    with atomic_path(out_dir, directory=True) as tmp:
        checkpoints = checkpoint_dir(out_dir, dpo, dataset_path, base_path, template, seed, sft_adapter, tmp)
        args = DPOConfig(**_common_args(dpo, seed, checkpoints), beta=dpo["beta"], loss_type=[dpo["loss_type"]])
        trainer = DPOTrainer(
            model=model, ref_model=None, args=args, train_dataset=dataset, processing_class=tokenizer,
            peft_config=peft_config,
        )
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, "dpo", template, base_path, seed, rows=len(dataset), **chain)
    shutil.rmtree(f"{out_dir}.checkpoints", ignore_errors=True)
    log.info("dpo: %d pairs, final loss %.4f", len(dataset), result.training_loss)
    return {"train_loss": result.training_loss, "rows": len(dataset)}
