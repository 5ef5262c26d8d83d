"""LoRA continued pretraining, SFT and DPO, with trl.

Continued pretraining (optional) trains an adapter with causal-LM loss on the pretrain sources' raw
text; SFT and DPO train on the base with it merged in. SFT and DPO read the curated Parquet datasets
(rows whose `split` is `validation` give the eval loss) and render them with the recipe's one
template (`tunesmith.template`) into prompt/completion text, so trl computes the loss on responses
only and generation later sees the same prompt text. Each stage saves a peft adapter folder plus
`tunesmith.json` (stage, template hash, base model, adapters beneath, seed, processes) and the
training curves as CSV and PNG. With `distributed.processes` > 1 each stage re-launches itself on
that many processes (`tunesmith.distributed`); rank 0 writes the same outputs.

A run killed half-way resumes: with `save_steps` > 0, checkpoints go to `<adapter>.checkpoints/<key>`,
where the key hashes everything that shapes the run (settings, data, adapters beneath, base,
template, seed, process count), so a restart of the same job continues from its last checkpoint and
a changed job starts afresh.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil

import torch

from tunesmith.base_model import read_text_lines
from tunesmith.distributed import (
    is_main_process, launch, main_process_first, output_folder, processes, should_launch,
)
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


def checkpoint_dir(out_dir: str, stage_section: dict, inputs: list[str], shape: list, scratch: str = "") -> str:
    """Where a run keeps its resumable checkpoints: keyed by everything that shapes the run (the
    stage's settings, the content of its input files and adapters, and `shape`: base, template, seed,
    process count). Without `save_steps` nothing is resumable, and the trainer works in `scratch`
    (inside the temporary output, so a failure leaves nothing)."""
    if not stage_section["save_steps"] and scratch:
        return os.path.join(scratch, "trainer")
    key = section_hash([stage_section, [content_hash(path) for path in inputs], shape])
    return os.path.join(f"{out_dir}.checkpoints", key)


def _train(trainer, checkpoints: str):
    """Train, resuming from the newest checkpoint a killed run of the same job left behind."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
    if last:
        log.info("resuming from %s", last)
    return trainer.train(resume_from_checkpoint=last)


def _finish(out_dir: str) -> None:
    if is_main_process():
        shutil.rmtree(f"{out_dir}.checkpoints", ignore_errors=True)


def _common_args(section: dict, seed: int, output_dir: str) -> dict:
    """TrainingArguments shared by SFTConfig and DPOConfig, from a recipe's cpt/sft/dpo section."""
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


def _setup(seed: int, threads: int) -> None:
    from transformers import set_seed

    torch.set_num_threads(threads)
    set_seed(seed)


def _prepare(base_path: str, base_section: dict, template_section: dict, seed: int, threads: int):
    """What SFT and DPO set up before their data: threads, seeds, the template and the tokenizer."""
    _setup(seed, threads)
    return PromptTemplate(template_section), load_tokenizer(base_path, base_section)


def _read_parquet(path: str):
    from datasets import Dataset

    return Dataset.from_parquet(path)


SPLITS = ("train", "validation")


def split_rows(rows, dataset_path: str = "dataset"):
    """(train, eval) rows by the curated `split` column: `validation` rows give the eval loss, `train`
    rows are trained on. Curation assigns each row's side by its content hash, so it never moves
    between runs or when other rows are added. Data without the column trains on every row."""
    if "split" not in rows.column_names:
        return rows, None
    sides = rows["split"]
    unknown = sorted(set(sides) - set(SPLITS))
    if unknown:
        raise ValueError(f"{dataset_path}: split column holds {unknown}; expected only {list(SPLITS)}")
    train = rows.select([index for index, side in enumerate(sides) if side == "train"])
    held = [index for index, side in enumerate(sides) if side == "validation"]
    return train, (rows.select(held) if held else None)


def _eval_args(section: dict, eval_dataset) -> dict:
    return dict(eval_strategy="steps" if eval_dataset is not None else "no", eval_steps=section["logging_steps"])


def _save(trainer, tmp: str, title: str, **metadata) -> None:
    """The adapter, `tunesmith.json` and the curves. Every rank calls save_model (with FSDP or ZeRO-3
    it gathers the sharded weights); rank 0 alone writes."""
    trainer.save_model(tmp)
    if not is_main_process():
        return
    shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
    args = trainer.args
    # What actually ran, e.g. MULTI_GPU (ddp), FSDP, DEEPSPEED, MULTI_CPU, or NO for one process.
    write_metadata(tmp, **metadata, processes=args.world_size, parallelism=trainer.accelerator.distributed_type.value,
                   effective_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps
                   * args.world_size)
    history = trainer.state.log_history
    fields = sorted({key for entry in history for key in entry})
    with open(os.path.join(tmp, "training_log.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    plot_curves(history, os.path.join(tmp, "training_curves.png"), title=title)


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


def train_cpt(
    base_path: str, base_section: dict, cpt: dict, text_paths: list[str], seed: int, out_dir: str,
    threads: int = 1, distributed: dict | None = None,
) -> dict:
    """LoRA continued pretraining: causal-LM loss on every token of the pretrain sources' raw text
    (one document per line, packed into max_length blocks). SFT then trains on the base with this
    adapter merged in. Output: a folder PeftModel.from_pretrained loads."""
    if should_launch(distributed):
        return launch("train_cpt", dict(locals()), distributed)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _setup(seed, threads)
    tokenizer = load_tokenizer(base_path, base_section)
    documents = read_text_lines(text_paths)
    if not documents:
        raise ValueError(f"continued_pretraining is enabled, but the pretrain sources hold no text: {list(text_paths)}")
    with main_process_first():
        dataset = Dataset.from_dict({"text": documents})
    model = load_model(base_path, base_section)
    with output_folder(out_dir) as tmp:
        checkpoints = checkpoint_dir(out_dir, cpt, list(text_paths), [base_path, seed, processes(distributed)], tmp)
        args = SFTConfig(
            **_common_args(cpt, seed, checkpoints),
            dataset_text_field="text",
            packing=True,
            # Documents joined (each ends in EOS) and cut into max_length blocks: no padding, no
            # padding-free attention, so it is fast on CPU too.
            packing_strategy="wrapped",
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_lora_config(cpt["lora"]))
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"cpt ({base_path})", stage="cpt", base_model=base_path, seed=seed,
              documents=len(documents), sequences=len(trainer.train_dataset))
    _finish(out_dir)
    log.info("cpt: %d documents, final loss %.4f", len(documents), result.training_loss)
    return {"train_loss": result.training_loss, "documents": len(documents)}


def _rendered(dataset_path: str, render):
    """The curated rows rendered by `render`: the train split, and the validation split (or None)."""
    with main_process_first():
        rows = _read_parquet(dataset_path)
        train_rows, eval_rows = split_rows(rows, dataset_path)
        dataset = train_rows.map(render, remove_columns=rows.column_names)
        eval_dataset = eval_rows.map(render, remove_columns=rows.column_names) if eval_rows else None
    return dataset, eval_dataset


def train_sft(
    base_path: str, base_section: dict, template_section: dict, sft: dict, dataset_path: str,
    seed: int, out_dir: str, threads: int = 1, base_adapters: list[str] = (), distributed: dict | None = None,
) -> dict:
    """LoRA SFT on the base with `base_adapters` (the continued-pretraining adapter) merged in, in
    order; returns the final training loss. Output: a folder PeftModel.from_pretrained loads."""
    if should_launch(distributed):
        return launch("train_sft", dict(locals()), distributed)
    from trl import SFTConfig, SFTTrainer

    template, tokenizer = _prepare(base_path, base_section, template_section, seed, threads)
    render = lambda row: {  # noqa: E731
        "prompt": template.render_prompt(row["prompt"], tokenizer),
        "completion": template.render_completion(row["prompt"], row["response"], tokenizer),
    }
    dataset, eval_dataset = _rendered(dataset_path, render)
    model = load_model(base_path, base_section, adapters=list(base_adapters))
    with output_folder(out_dir) as tmp:
        shape = [base_path, template.hash, seed, processes(distributed)]
        checkpoints = checkpoint_dir(out_dir, sft, [dataset_path, *base_adapters], shape, tmp)
        args = SFTConfig(
            **_common_args(sft, seed, checkpoints),
            completion_only_loss=True,
            packing=sft["packing"],
            # Read only when packing: the strategy of no packing must not rekey SFT.
            **({"packing_strategy": sft["packing_strategy"]} if sft["packing"] else {}),
            **_eval_args(sft, eval_dataset),
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
            peft_config=_lora_config(sft["lora"]),
        )
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"sft ({base_path})", stage="sft", template_hash=template.hash, base_model=base_path,
              seed=seed, base_adapters=list(base_adapters), rows=len(dataset),
              eval_rows=len(eval_dataset) if eval_dataset else 0)
    _finish(out_dir)
    log.info("sft: %d rows, final loss %.4f", len(dataset), result.training_loss)
    return {"train_loss": result.training_loss, "rows": len(dataset)}


def train_dpo(
    base_path: str, base_section: dict, template_section: dict, dpo: dict, dataset_path: str,
    sft_adapter: str, seed: int, out_dir: str, threads: int = 1, base_adapters: list[str] = (),
    distributed: dict | None = None,
) -> dict:
    """DPO from the SFT result, as `dpo.start` chooses (`base_adapters`, the continued-pretraining
    adapter, are merged into the base first in both):
    - merged_sft: a new LoRA adapter on the merged SFT model; the reference is that model itself
      (trl disables the adapter to compute reference log-probabilities). Generation merges both.
    - continue_sft: the SFT adapter itself trains on; the reference is the base model (adapter
      disabled). The result replaces the SFT adapter, the usual QLoRA path on a 4-bit base."""
    if should_launch(distributed):
        return launch("train_dpo", dict(locals()), distributed)
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    template, tokenizer = _prepare(base_path, base_section, template_section, seed, threads)
    render = lambda row: {  # noqa: E731
        "prompt": template.render_prompt(row["prompt"], tokenizer),
        "chosen": template.render_completion(row["prompt"], row["chosen"], tokenizer),
        "rejected": template.render_completion(row["prompt"], row["rejected"], tokenizer),
    }
    dataset, eval_dataset = _rendered(dataset_path, render)
    beneath = list(base_adapters)
    if dpo["start"] == "continue_sft":
        model = PeftModel.from_pretrained(load_model(base_path, base_section, adapters=beneath), sft_adapter,
                                          is_trainable=True)
        peft_config, chain = None, {"continues": sft_adapter}
    else:
        model = load_model(base_path, base_section, adapters=[*beneath, sft_adapter])
        peft_config, chain = _lora_config(dpo["lora"]), {"on_top_of": sft_adapter}
    with output_folder(out_dir) as tmp:
        shape = [base_path, template.hash, seed, processes(distributed)]
        checkpoints = checkpoint_dir(out_dir, dpo, [dataset_path, *beneath, sft_adapter], shape, tmp)
        args = DPOConfig(**_common_args(dpo, seed, checkpoints), beta=dpo["beta"], loss_type=[dpo["loss_type"]],
                         **_eval_args(dpo, eval_dataset))
        trainer = DPOTrainer(
            model=model, ref_model=None, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
            processing_class=tokenizer, peft_config=peft_config,
        )
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"dpo ({base_path})", stage="dpo", template_hash=template.hash, base_model=base_path,
              seed=seed, base_adapters=beneath, rows=len(dataset),
              eval_rows=len(eval_dataset) if eval_dataset else 0, **chain)
    _finish(out_dir)
    log.info("dpo: %d pairs, final loss %.4f", len(dataset), result.training_loss)
    return {"train_loss": result.training_loss, "rows": len(dataset)}
