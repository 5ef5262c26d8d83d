"""LoRA continued pretraining, SFT and DPO, with trl.

Each stage trains one new LoRA adapter on top of the frozen, unmerged adapter of the stage beneath
(continued pretraining under SFT, SFT under DPO): the same code for the tiny fp32 default and a
4-bit base, where merging would round the update away. Continued pretraining (optional) uses
causal-LM loss on the pretrain sources' raw text; SFT and DPO the curated rows rendered with the
recipe's template (`tunesmith.train_data`). DPO's reference is the SFT model itself (base + SFT
adapter), whose log-probabilities are computed once before training. Each stage writes a standalone
adapter folder (`tunesmith.adapters`), `tunesmith.json` (stage, template hash, base, the chain,
rows trained, dropped and truncated, processes) and its training curves. A killed run resumes from
its last complete checkpoint (`tunesmith.checkpoints`). On several processes
(`tunesmith.launcher`) rank 0 writes the same outputs.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys

import torch

from tunesmith.adapters import TRAINED as TRAINED_FOLDER
from tunesmith.adapters import finish_stage_folder, read_config, trained_part
from tunesmith.base_model import read_text_lines
from tunesmith.checkpoints import checkpoint_dir, last_complete_checkpoint
from tunesmith.curves import plot_curves, write_log
from tunesmith.distributed import is_main_process, main_process_first, output_folder, world_size
from tunesmith.model import (
    activate_stack, check_eos, load_model, load_tokenizer, read_metadata, trainable_model, write_metadata,
)
from tunesmith.template import PromptTemplate
from tunesmith.train_data import Renderer, rendered, split_rows

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


def _keep_stack_active():
    """A callback that re-activates the frozen adapter beneath once training (or resuming) begins."""
    from transformers import TrainerCallback

    class KeepStackActive(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            activate_stack(model)

    return KeepStackActive()


def _train(trainer, checkpoints: str):
    """Train, resuming from the newest complete checkpoint a killed run of the same job left behind."""
    last = last_complete_checkpoint(checkpoints, remove_incomplete=is_main_process())
    if last:
        log.info("resuming from %s", last)
    return trainer.train(resume_from_checkpoint=last)


def _finish(out_dir: str) -> None:
    if is_main_process():
        shutil.rmtree(f"{out_dir}.checkpoints", ignore_errors=True)


def _eval_steps(evaluations: int) -> float:
    """At most `evaluations` evaluations per run: a fraction of the total steps (transformers rounds
    it up and also evaluates at the last step). One evaluation is the last step's alone."""
    return 1 / evaluations if evaluations > 1 else sys.maxsize


def _common_args(section: dict, seed: int, output_dir: str, evaluate: bool = False) -> dict:
    """TrainingArguments shared by SFTConfig and DPOConfig, from a recipe's cpt/sft/dpo section."""
    on_gpu = torch.cuda.is_available()
    evaluations = section["evaluations"] if evaluate else 0
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
        eval_strategy="steps" if evaluations else "no",
        eval_steps=_eval_steps(evaluations) if evaluations else None,
        save_strategy="steps" if section["save_steps"] else "no",
        save_steps=section["save_steps"] or 500,
        save_total_limit=2,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        # One line per logging step in the job's log instead of a carriage-return progress bar.
        disable_tqdm=True,
    )


def _setup(seed: int, threads: int) -> None:
    from transformers import set_seed

    torch.set_num_threads(threads)
    set_seed(seed)


def _chain(beneath: str | None, stage: str, lora: dict) -> list[dict]:
    """The stages an adapter folder holds, beneath first."""
    below = read_metadata(beneath).get("chain", []) if beneath else []
    return below + [{"stage": stage, "r": lora["r"], "alpha": lora["alpha"],
                     "target_modules": list(lora["target_modules"])}]


def _save(trainer, tmp: str, title: str, beneath: str | None, base_path: str, **metadata) -> None:
    """The standalone adapter (and the trained part when adapters lie beneath), `tunesmith.json` and
    the curves. Every rank calls save_model (with FSDP or ZeRO-3 it gathers the sharded weights);
    rank 0 alone writes."""
    trainer.save_model(os.path.join(tmp, TRAINED_FOLDER))
    if not is_main_process():
        return
    shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
    finish_stage_folder(tmp, beneath, base_path)
    args = trainer.args
    # What actually ran, e.g. MULTI_GPU (ddp), FSDP, DEEPSPEED, MULTI_CPU, or NO for one process.
    write_metadata(tmp, **metadata, base_model=read_config(tmp)["base_model_name_or_path"], beneath=beneath,
                   processes=args.world_size, parallelism=trainer.accelerator.distributed_type.value,
                   effective_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps
                   * args.world_size)
    write_log(trainer.state.log_history, os.path.join(tmp, "training_log.csv"))
    plot_curves(trainer.state.log_history, os.path.join(tmp, "training_curves.png"), title=title)


def _beneath(base_adapters) -> str | None:
    """The adapter a stage trains on top of: the folder of the stage below, which holds its own chain."""
    base_adapters = list(base_adapters)
    return base_adapters[-1] if base_adapters else None


def train_cpt(
    base_path: str, base_section: dict, cpt: dict, text_paths: list[str], seed: int, out_dir: str, threads: int = 1,
) -> dict:
    """LoRA continued pretraining: causal-LM loss on every token of the pretrain sources' raw text
    (one document per line, packed into max_length blocks). SFT then trains on top of this adapter."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _setup(seed, threads)
    tokenizer = load_tokenizer(base_path, base_section)
    check_eos(tokenizer, base_path)
    documents = read_text_lines(text_paths)
    if not documents:
        raise ValueError(f"continued_pretraining is enabled, but the pretrain sources hold no text: {list(text_paths)}")
    with main_process_first():
        dataset = Dataset.from_dict({"text": documents})
    model = trainable_model(base_path, base_section, beneath=None, new_adapter=_lora_config(cpt["lora"]))
    with output_folder(out_dir) as tmp:
        checkpoints = checkpoint_dir(out_dir, cpt, list(text_paths), [base_path, seed, world_size()], tmp)
        args = SFTConfig(
            **_common_args(cpt, seed, checkpoints),
            dataset_text_field="text",
            packing=True,
            # Documents joined (each ends in EOS) and cut into max_length blocks: no padding, no
            # padding-free attention, so it is fast on CPU too.
            packing_strategy="wrapped",
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"cpt ({base_path})", None, base_path, stage="cpt", seed=seed,
              chain=_chain(None, "cpt", cpt["lora"]), documents=len(documents),
              sequences=len(trainer.train_dataset))
    _finish(out_dir)
    log.info("cpt: %d documents in %d sequences, final loss %.4f", len(documents), len(trainer.train_dataset),
             result.training_loss)
    return {"train_loss": result.training_loss, "documents": len(documents)}


def _datasets(dataset_path: str, renderer: Renderer, render):
    """The curated rows rendered for trl: (train, eval or None, their Lengths)."""
    from datasets import Dataset

    with main_process_first():
        rows = Dataset.from_parquet(dataset_path)
    train_rows, eval_rows = split_rows(rows, dataset_path)
    train, train_lengths = rendered(train_rows, render)
    held, eval_lengths = rendered(eval_rows, render) if eval_rows else ([], None)
    return Dataset.from_list(train), (Dataset.from_list(held) if held else None), train_lengths, eval_lengths


def _row_counts(trainer, train_lengths, eval_lengths, packing: bool = False) -> dict:
    """What trained, by trl's own dataset after its drops (a packed dataset holds sequences, not rows)."""
    trained = None if packing else len(trainer.train_dataset)
    counts = train_lengths.as_metadata("", trained=trained)
    if eval_lengths is not None:
        evaluated = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
        counts.update(eval_lengths.as_metadata("eval_", trained=None if packing else evaluated))
    else:
        counts.update(eval_rows=0)
    if packing:
        counts["sequences"] = len(trainer.train_dataset)
    if trained is not None and trained != train_lengths.kept():
        log.warning("trl kept %d rows where %d were expected; %d is what trained", trained, train_lengths.kept(),
                    trained)
    return counts


def train_sft(
    base_path: str, base_section: dict, template_section: dict, sft: dict, dataset_path: str,
    seed: int, out_dir: str, threads: int = 1, base_adapters: list[str] = (),
) -> dict:
    """LoRA SFT on top of `base_adapters` (the continued-pretraining adapter, frozen), if any;
    returns the final training loss and the rows that trained."""
    from trl import SFTConfig, SFTTrainer

    _setup(seed, threads)
    template, tokenizer = PromptTemplate(template_section), load_tokenizer(base_path, base_section)
    check_eos(tokenizer, base_path)
    packing = sft["packing_strategy"] if sft["packing"] else None
    renderer = Renderer(template, tokenizer, sft["max_length"], sft["long_prompts"], packing=packing)
    dataset, eval_dataset, train_lengths, eval_lengths = _datasets(dataset_path, renderer, renderer.sft)
    log.info("sft: %s (max_length %d)", train_lengths.describe(), sft["max_length"])
    beneath = _beneath(base_adapters)
    model = trainable_model(base_path, base_section, beneath, new_adapter=_lora_config(sft["lora"]))
    with output_folder(out_dir) as tmp:
        shape = [base_path, template.hash, seed, world_size()]
        checkpoints = checkpoint_dir(out_dir, sft, [dataset_path, *base_adapters], shape, tmp)
        args = SFTConfig(
            **_common_args(sft, seed, checkpoints, evaluate=eval_dataset is not None),
            completion_only_loss=True,
            packing=sft["packing"],
            # Read only when packing: the strategy of no packing must not rekey SFT.
            **({"packing_strategy": packing} if packing else {}),
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                             processing_class=tokenizer, callbacks=[_keep_stack_active()])
        counts = _row_counts(trainer, train_lengths, eval_lengths, packing=bool(packing))
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"sft ({base_path})", beneath, base_path, stage="sft", template_hash=template.hash,
              seed=seed, chain=_chain(beneath, "sft", sft["lora"]), base_adapters=list(base_adapters),
              max_length=sft["max_length"], **counts)
    _finish(out_dir)
    log.info("sft: %d rows trained, final loss %.4f", counts["rows"], result.training_loss)
    return {"train_loss": result.training_loss, "rows": counts["rows"]}


def _forget(trainer, reference) -> None:
    """Drop the trainer's hold on the reference model once its log-probabilities are in the datasets,
    so that its memory (a second copy of the base) is free for training."""
    trainer.ref_model = None
    models = getattr(trainer.accelerator, "_models", None)  # prepare_model keeps a reference of its own
    if models is not None:
        models[:] = [model for model in models if model is not reference]


def train_dpo(
    base_path: str, base_section: dict, template_section: dict, dpo: dict, dataset_path: str,
    sft_adapter: str, seed: int, out_dir: str, threads: int = 1, base_adapters: list[str] = (),
) -> dict:
    """DPO from the SFT model (base + SFT adapter, which holds the continued-pretraining adapter too),
    which is also the reference, as `dpo.start` chooses:
    - new_adapter: a new LoRA adapter (dpo.lora) trains on top of the frozen SFT adapter;
    - continue_sft: the adapter SFT trained keeps training (on top of the frozen CPT adapter, if any).
    The reference log-probabilities are those of the SFT model, computed once before training."""
    from trl import DPOConfig, DPOTrainer

    _setup(seed, threads)
    template, tokenizer = PromptTemplate(template_section), load_tokenizer(base_path, base_section)
    check_eos(tokenizer, base_path)
    renderer = Renderer(template, tokenizer, dpo["max_length"], dpo["long_prompts"])
    dataset, eval_dataset, train_lengths, eval_lengths = _datasets(dataset_path, renderer, renderer.preference)
    log.info("dpo: %s (max_length %d)", train_lengths.describe(), dpo["max_length"])
    if dpo["start"] == "continue_sft":
        beneath = _beneath(base_adapters)
        model = trainable_model(base_path, base_section, beneath, continue_adapter=trained_part(sft_adapter))
        lora = read_metadata(sft_adapter)["chain"][-1]
        chain = {"continues": sft_adapter}
    else:
        beneath = sft_adapter
        model = trainable_model(base_path, base_section, beneath, new_adapter=_lora_config(dpo["lora"]))
        lora, chain = dpo["lora"], {"on_top_of": sft_adapter}
    # The LoRA layers live inside the transformers model: trl wants that model, not peft's wrapper.
    reference = load_model(base_path, base_section, adapter=sft_adapter).get_base_model()
    with output_folder(out_dir) as tmp:
        shape = [base_path, template.hash, seed, world_size()]
        checkpoints = checkpoint_dir(out_dir, dpo, [dataset_path, *base_adapters, sft_adapter], shape, tmp)
        args = DPOConfig(**_common_args(dpo, seed, checkpoints, evaluate=eval_dataset is not None), beta=dpo["beta"],
                         loss_type=[dpo["loss_type"]], precompute_ref_log_probs=True)
        trainer = DPOTrainer(
            model=model, ref_model=reference, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
            processing_class=tokenizer, callbacks=[_keep_stack_active()],
        )
        _forget(trainer, reference)
        del reference
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        counts = _row_counts(trainer, train_lengths, eval_lengths)
        result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"dpo ({base_path})", beneath, base_path, stage="dpo", template_hash=template.hash,
              seed=seed, chain=_chain(beneath, "dpo", lora), base_adapters=list(base_adapters),
              max_length=dpo["max_length"], **chain, **counts)
    _finish(out_dir)
    log.info("dpo: %d pairs trained, final loss %.4f", counts["rows"], result.training_loss)
    return {"train_loss": result.training_loss, "rows": counts["rows"]}
