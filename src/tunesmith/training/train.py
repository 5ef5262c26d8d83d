"""LoRA continued pretraining, SFT and the preference stage (DPO, ORPO, SimPO or KTO), with trl.

Each stage trains one new LoRA adapter on top of the frozen, unmerged adapter of the stage beneath
(continued pretraining under SFT, SFT under DPO): the same code for the tiny fp32 default and a
4-bit base, where merging would round the update away. Continued pretraining (optional) uses
causal-LM loss on the pretrain sources' raw text; SFT and the preference stage the curated rows
rendered with the recipe's template (`tunesmith.training.train_data`). The preference stage's method
(`tunesmith.training.preference`) chooses the trl trainer; DPO's and KTO's reference is the SFT model itself
(base + SFT adapter), whose log-probabilities are computed once before training. Each stage writes a
standalone adapter folder (`tunesmith.model.adapters`), `tunesmith.json` (stage, template hash, base, the
chain, rows trained, dropped and truncated, processes) and its training curves, and reports to the
recipe's tracking backends (`tunesmith.training.tracking`). A killed run resumes from its last complete
checkpoint (`tunesmith.training.checkpoints`). On several processes or nodes (`tunesmith.training.launcher`) rank 0
writes the same outputs.

Over 350 lines because the three stages share one path for stacking, resuming, counting and saving;
split apart, each module would reach into the same private helpers.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys

import torch

from tunesmith.model.adapters import TRAINED_FOLDER
from tunesmith.model.adapters import finish_stage_folder, read_config, trained_part
from tunesmith.model.base_model import read_text_lines
from tunesmith.training.checkpoints import checkpoint_dir, last_complete_checkpoint
from tunesmith.training.curves import plot_curves, write_log
from tunesmith.training.distributed import is_main_process, main_process_first, nodes, output_folder, world_size
from tunesmith.model.model import (
    activate_stack, check_eos, load_model, load_tokenizer, read_metadata, trainable_in_float32, trainable_model,
    write_metadata,
)
from tunesmith.jobs.progress import training_lines
from tunesmith.model.template import PromptTemplate
from tunesmith.training.preference import TRL_DROPS_LONG_PROMPTS, is_unpaired, needs_reference, trainer_class_and_config
from tunesmith.training.tracking import keep_events, track_trainer, tracked
from tunesmith.training.tracking import metadata as tracking_metadata
from tunesmith.training.train_data import Renderer, check_boundaries, rendered, split_rows

log = logging.getLogger(__name__)


def _lora_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"],
        target_modules=sorted(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )


def _keep_stack_active():
    """A callback that re-activates the frozen adapter beneath once training (or resuming) begins."""
    from transformers import TrainerCallback

    class KeepStackActive(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            activate_stack(model)

    return KeepStackActive()


def _continue_token_count(trainer):
    """A callback that, on a resumed run, starts trl's running `num_tokens` from the resumed state's last value
    (trl keeps the count on the trainer, not in the checkpoint, so the resumed log would restart it at 0)."""
    from transformers import TrainerCallback

    class ContinueTokenCount(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            counted = [entry["num_tokens"] for entry in state.log_history if "num_tokens" in entry]
            if counted and hasattr(trainer, "_total_train_tokens"):
                trainer._total_train_tokens = counted[-1]

    return ContinueTokenCount()


def _after_construction(trainer, base_section: dict) -> None:
    """What every stage's trainer needs once trl has built it: the trainable adapter back in float32 (trl casts it
    to bf16 on a quantised base) and the token count continued on resume."""
    cast = trainable_in_float32(trainer.model, base_section)
    if cast:
        log.info("%d trainable adapter tensors cast back to float32 (trl made them bf16 on the quantised base)", cast)
    trainer.add_callback(_continue_token_count(trainer))


def _seen(trainer, counts: dict) -> dict:
    """What training went through, against what it had: the epochs run (from the trainer's state, resumes included)
    and the distinct rows seen (all of them after one epoch; with max_steps, often fewer)."""
    epochs = float(trainer.state.epoch or 0.0)
    return {"epochs_seen": round(epochs, 4), "rows_seen": min(counts["rows"], round(epochs * counts["rows"]))}


def _train(trainer, checkpoints: str):
    """Train, resuming from the newest complete checkpoint a killed run of the same job left behind."""
    last = last_complete_checkpoint(checkpoints, remove_incomplete=is_main_process())
    if last:
        log.info("resuming from %s", last)
    training_lines(trainer, "training")  # a line per logging step: steps done and left, loss, rewards
    return trainer.train(resume_from_checkpoint=last)


def _finish(out_dir: str) -> None:
    if is_main_process():
        shutil.rmtree(f"{out_dir}.checkpoints", ignore_errors=True)


def _eval_steps(evaluations: int) -> float:
    """At most `evaluations` evaluations per run: a fraction of the total steps (transformers rounds
    it up and also evaluates at the last step). One evaluation is the last step's alone."""
    return 1 / evaluations if evaluations > 1 else sys.maxsize


def _common_args(section: dict, seed: int, output_dir: str, reporting: dict, evaluate: bool = False) -> dict:
    """TrainingArguments every stage's trl config shares, from a recipe's cpt/sft/dpo section (keys named as trl
    names the fields); `reporting` is what tunesmith.training.tracking.tracked yields (report_to, run name). The section's
    `trainer:` fields (tunesmith.config.trl_fields) are added where each stage builds its config."""
    on_gpu = torch.cuda.is_available()
    evaluations = section["evaluations"] if evaluate else 0
    # CPT has no validation split (and no such key); SFT and the preference stage default to their training batch.
    eval_batch_size = section["per_device_eval_batch_size"] if "per_device_eval_batch_size" in section else None
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=section["per_device_train_batch_size"],
        per_device_eval_batch_size=eval_batch_size or section["per_device_train_batch_size"],
        gradient_accumulation_steps=section["gradient_accumulation_steps"],
        num_train_epochs=section["num_train_epochs"],
        max_steps=section["max_steps"],
        learning_rate=section["learning_rate"],
        lr_scheduler_type=section["lr_scheduler_type"],
        warmup_steps=section["warmup_steps"],
        max_length=section["max_length"],
        logging_steps=section["logging_steps"],
        activation_checkpointing=section["activation_checkpointing"],
        eval_strategy="steps" if evaluations else "no",
        eval_steps=_eval_steps(evaluations) if evaluations else None,
        save_strategy="steps" if section["save_steps"] else "no",
        save_steps=section["save_steps"] or 500,
        save_total_limit=2,
        **reporting,
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
    return below + [{"stage": stage, "r": lora["r"], "lora_alpha": lora["lora_alpha"],
                     "target_modules": list(lora["target_modules"])}]


def _save(trainer, tmp: str, title: str, beneath: str | None, base_path: str, tracking: dict | None = None,
          **metadata) -> None:
    """The standalone adapter (and the trained part when adapters lie beneath), `tunesmith.json`, the
    curves and the TensorBoard events. Every rank calls save_model (with FSDP or ZeRO-3 it gathers the
    sharded weights); rank 0 alone writes."""
    trainer.save_model(os.path.join(tmp, TRAINED_FOLDER))
    if not is_main_process():
        return
    keep_events(trainer.args.output_dir, tmp, title)
    shutil.rmtree(os.path.join(tmp, "trainer"), ignore_errors=True)
    finish_stage_folder(tmp, beneath, base_path)
    args = trainer.args
    # What actually ran, e.g. MULTI_GPU (ddp), FSDP, DEEPSPEED, MULTI_CPU, or NO for one process.
    write_metadata(tmp, **metadata, **tracking_metadata(tracking), base_model=read_config(tmp)["base_model_name_or_path"],
                   beneath=beneath, processes=args.world_size, nodes=nodes(),
                   parallelism=trainer.accelerator.distributed_type.value,
                   effective_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps
                   * args.world_size)
    write_log(trainer.state.log_history, os.path.join(tmp, "training_log.csv"))
    plot_curves(trainer.state.log_history, os.path.join(tmp, "training_curves.png"), title=title)


def _beneath(base_adapters) -> str | None:
    """The adapter a stage trains on top of: the folder of the stage below, which holds its own chain."""
    base_adapters = list(base_adapters)
    return base_adapters[-1] if base_adapters else None


def cpt_arguments(cpt: dict, common: dict) -> dict:
    """Continued pretraining's SFTConfig arguments: `common` (`_common_args`), packed raw text, and the section's
    `trainer:` fields."""
    return dict(
        **common,
        dataset_text_field="text",
        packing=True,
        # Documents joined (each ends in EOS) and cut into max_length blocks: no padding, no
        # padding-free attention, so it is fast on CPU too.
        packing_strategy="wrapped",
        **cpt["trainer"],  # any other SFTConfig field (checked by tunesmith.config.trl_fields)
    )


def train_cpt(
    base_path: str, base_section: dict, cpt: dict, text_paths: list[str], seed: int, out_dir: str, threads: int = 1,
    tracking: dict | None = None,
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
        with tracked(tracking, checkpoints) as reporting:
            args = SFTConfig(**cpt_arguments(cpt, _common_args(cpt, seed, checkpoints, reporting)))
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
            _after_construction(trainer, base_section)
            track_trainer(trainer, tracking)
            result = _train(trainer, checkpoints)
        _save(trainer, tmp, f"cpt ({base_path})", None, base_path, tracking, stage="cpt", seed=seed,
              chain=_chain(None, "cpt", cpt["lora"]), documents=len(documents),
              sequences=len(trainer.train_dataset))
    _finish(out_dir)
    log.info("cpt: %d documents in %d sequences, final loss %.4f", len(documents), len(trainer.train_dataset),
             result.training_loss)
    return {"train_loss": result.training_loss, "documents": len(documents)}


def _datasets(dataset_path: str, render, prepare=None):
    """The curated rows (turned into other rows by `prepare`, if given) rendered for trl: (train, eval or None,
    their Lengths)."""
    from datasets import Dataset

    with main_process_first():
        rows = Dataset.from_parquet(dataset_path)
    if prepare is not None:
        rows = prepare(rows)
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


def sft_arguments(sft: dict, common: dict) -> dict:
    """SFTConfig's arguments: `common` (`_common_args`), SFT's own, and the section's `trainer:` fields."""
    packing = sft["packing_strategy"] if sft["packing"] else None
    return dict(
        **common,
        completion_only_loss=True,
        packing=sft["packing"],
        # Read only when packing: the strategy of no packing must not rekey SFT.
        **({"packing_strategy": packing} if packing else {}),
        **sft["trainer"],  # any other SFTConfig field (checked by tunesmith.config.trl_fields)
    )


def sft_trainer(
    base_path: str, base_section: dict, template_section: dict, sft: dict, dataset_path: str, seed: int,
    checkpoints: str, reporting: dict, base_adapters: list[str] = (),
):
    """The SFTTrainer `train_sft` trains, built but not trained: the tokenizer checked, the rows rendered and their
    token boundaries checked, the model stacked, the trainable adapter in float32. Returns (trainer, what `_save`
    records: the adapter beneath and the row counts)."""
    from trl import SFTConfig, SFTTrainer

    template, tokenizer = PromptTemplate(template_section), load_tokenizer(base_path, base_section)
    check_eos(tokenizer, base_path)
    packing = sft["packing_strategy"] if sft["packing"] else None
    renderer = Renderer(template, tokenizer, sft["max_length"], sft["long_prompts"], packing=packing)
    dataset, eval_dataset, train_lengths, eval_lengths = _datasets(dataset_path, renderer.sft)
    check_boundaries(train_lengths, eval_lengths, template_section["max_boundary_mismatch"], dataset_path)
    log.info("sft: %s (max_length %d)", train_lengths.describe(), sft["max_length"])
    beneath = _beneath(base_adapters)
    model = trainable_model(base_path, base_section, beneath, new_adapter=_lora_config(sft["lora"]))
    args = SFTConfig(**sft_arguments(sft, _common_args(sft, seed, checkpoints, reporting,
                                                       evaluate=eval_dataset is not None)))
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=[_keep_stack_active()])
    _after_construction(trainer, base_section)
    return trainer, {"beneath": beneath,
                     "counts": _row_counts(trainer, train_lengths, eval_lengths, packing=bool(packing))}


def train_sft(
    base_path: str, base_section: dict, template_section: dict, sft: dict, dataset_path: str,
    seed: int, out_dir: str, threads: int = 1, base_adapters: list[str] = (), tracking: dict | None = None,
) -> dict:
    """LoRA SFT on top of `base_adapters` (the continued-pretraining adapter, frozen), if any;
    returns the final training loss and the rows that trained."""
    _setup(seed, threads)
    template = PromptTemplate(template_section)
    with output_folder(out_dir) as tmp:
        shape = [base_path, template.hash, seed, world_size()]
        checkpoints = checkpoint_dir(out_dir, sft, [dataset_path, *base_adapters], shape, tmp)
        with tracked(tracking, checkpoints) as reporting:
            trainer, built = sft_trainer(base_path, base_section, template_section, sft, dataset_path, seed,
                                         checkpoints, reporting, base_adapters)
            track_trainer(trainer, tracking)
            result = _train(trainer, checkpoints)
        counts = {**built["counts"], **_seen(trainer, built["counts"])}
        _save(trainer, tmp, f"sft ({base_path})", built["beneath"], base_path, tracking, stage="sft",
              template_hash=template.hash, seed=seed, chain=_chain(built["beneath"], "sft", sft["lora"]),
              base_adapters=list(base_adapters), max_length=sft["max_length"], **counts)
    _finish(out_dir)
    log.info("sft: %d of %d rows seen (%.2f epochs), final loss %.4f", counts["rows_seen"], counts["rows"],
             counts["epochs_seen"], result.training_loss)
    return {"train_loss": result.training_loss, "rows": counts["rows"], "rows_seen": counts["rows_seen"]}


def _forget(trainer, reference) -> None:
    """Drop the trainer's hold on the reference model once its log-probabilities are in the datasets,
    so that its memory (a second copy of the base) is free for training."""
    trainer.ref_model = None
    models = getattr(trainer.accelerator, "_models", None)  # prepare_model keeps a reference of its own
    if models is not None:
        models[:] = [model for model in models if model is not reference]


def _shared_datasets(out_dir: str, *datasets):
    """`datasets` (None stays None) as every rank can share them. On one process, as they are. On several, saved
    by rank 0 to Arrow files in a folder beside the output (`.<name>.datasets.partial`, on the file system the
    output lives on, so every node sees it) and loaded by every rank: trl caches what it computes from a
    dataset (tokenised rows, the reference model's log-probabilities) next to the dataset's files, and rank 0's
    cache is what the others read. A dataset that lives only in memory has its cache in a temporary folder of
    each process's own, where the other ranks find nothing. Returns (datasets, folder or None)."""
    if world_size() == 1:
        return datasets, None
    from datasets import load_from_disk

    folder = os.path.join(os.path.dirname(os.path.abspath(out_dir)), f".{os.path.basename(out_dir)}.datasets.partial")
    with main_process_first():
        if is_main_process():
            shutil.rmtree(folder, ignore_errors=True)
            for index, dataset in enumerate(datasets):
                if dataset is not None:
                    dataset.save_to_disk(os.path.join(folder, str(index)))
    return tuple(None if dataset is None else load_from_disk(os.path.join(folder, str(index)))
                 for index, dataset in enumerate(datasets)), folder


UNPAIRED_COLUMNS, PAIR_COLUMNS = {"prompt", "completion", "label"}, {"prompt", "chosen", "rejected"}


def check_dataset_layout(dataset_path: str, method: str) -> None:
    """KTO trains on labelled answers (prompt, completion, label), every other method on pairs (prompt, chosen,
    rejected): a dataset of the other layout is an error naming the file, before any model loads."""
    import pyarrow.parquet as pq

    columns = set(pq.read_schema(dataset_path).names)
    wanted = UNPAIRED_COLUMNS if is_unpaired(method) else PAIR_COLUMNS
    if not wanted <= columns:
        made_by = ("the unpair_preferences rule makes it from the curated pairs" if is_unpaired(method)
                   else "curation of a preference source makes it")
        raise ValueError(f"{dataset_path}: dpo.method {method} trains on rows of {', '.join(sorted(wanted))}, but "
                         f"the file has columns {', '.join(sorted(columns))} ({made_by})")


def preference_trainer(
    base_path: str, base_section: dict, template_section: dict, dpo: dict, dataset_path: str, sft_adapter: str,
    seed: int, checkpoints: str, reporting: dict, out_dir: str, base_adapters: list[str] = (),
):
    """The trainer `train_dpo` trains (per `dpo.method`), built but not trained: rows rendered and checked, the
    model stacked, the reference's log-probabilities computed and the reference dropped, the trainable adapter in
    float32. Returns (trainer, what `_save` records: beneath, lora, chain, counts; and the shared datasets' folder
    to remove, or None)."""
    method = dpo["method"]
    template, tokenizer = PromptTemplate(template_section), load_tokenizer(base_path, base_section)
    check_eos(tokenizer, base_path)
    renderer = Renderer(template, tokenizer, dpo["max_length"], dpo["long_prompts"],
                        drop_here=method not in TRL_DROPS_LONG_PROMPTS)
    check_dataset_layout(dataset_path, method)
    render = renderer.unpaired if is_unpaired(method) else renderer.preference
    dataset, eval_dataset, train_lengths, eval_lengths = _datasets(dataset_path, render)
    check_boundaries(train_lengths, eval_lengths, template_section["max_boundary_mismatch"], dataset_path)
    log.info("%s: %s (max_length %d)", method, train_lengths.describe(), dpo["max_length"])
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
    reference = load_model(base_path, base_section, adapter=sft_adapter).get_base_model() \
        if needs_reference(method) else None
    trainer_class, args = trainer_class_and_config(
        dpo, _common_args(dpo, seed, checkpoints, reporting, evaluate=eval_dataset is not None))
    # After the arguments: making them starts the process group that the ranks wait on.
    (dataset, eval_dataset), shared = _shared_datasets(out_dir, dataset, eval_dataset)
    trainer = trainer_class(
        model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
        callbacks=[_keep_stack_active()], **({"ref_model": reference} if reference is not None else {}),
    )
    if reference is not None:
        _forget(trainer, reference)
        del reference
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _after_construction(trainer, base_section)
    built = {"beneath": beneath, "lora": lora, "chain": chain, "counts": _row_counts(trainer, train_lengths,
                                                                                     eval_lengths)}
    return trainer, built, shared


def train_dpo(
    base_path: str, base_section: dict, template_section: dict, dpo: dict, dataset_path: str,
    sft_adapter: str, seed: int, out_dir: str, threads: int = 1, base_adapters: list[str] = (),
    tracking: dict | None = None,
) -> dict:
    """The preference stage with `dpo.method` (DPO, ORPO, SimPO or KTO; tunesmith.training.preference) from the SFT model
    (base + SFT adapter, which holds the continued-pretraining adapter too), as `dpo.start` chooses:
    - new_adapter: a new LoRA adapter (dpo.lora) trains on top of the frozen SFT adapter;
    - continue_sft: the adapter SFT trained keeps training (on top of the frozen CPT adapter, if any).
    DPO's and KTO's reference is the SFT model, its log-probabilities computed once before training; ORPO and
    SimPO need none. KTO trains on labelled single answers, the curated dataset tunesmith.data.unpaired makes from
    the pairs."""
    method = dpo["method"]
    _setup(seed, threads)
    template = PromptTemplate(template_section)
    with output_folder(out_dir) as tmp:
        shape = [base_path, template.hash, seed, world_size()]
        checkpoints = checkpoint_dir(out_dir, dpo, [dataset_path, *base_adapters, sft_adapter], shape, tmp)
        with tracked(tracking, checkpoints) as reporting:
            trainer, built, shared = preference_trainer(
                base_path, base_section, template_section, dpo, dataset_path, sft_adapter, seed, checkpoints,
                reporting, out_dir, base_adapters)
            track_trainer(trainer, tracking)
            result = _train(trainer, checkpoints)
        counts = {**built["counts"], **_seen(trainer, built["counts"])}
        _save(trainer, tmp, f"dpo: {method} ({base_path})", built["beneath"], base_path, tracking, stage="dpo",
              method=method, template_hash=template.hash, seed=seed, chain=_chain(built["beneath"], "dpo", built["lora"]),
              base_adapters=list(base_adapters), max_length=dpo["max_length"], **built["chain"], **counts)
    if shared and is_main_process():
        shutil.rmtree(shared, ignore_errors=True)
    _finish(out_dir)
    log.info("dpo (%s): %d of %d %s seen (%.2f epochs), final loss %.4f", method, counts["rows_seen"], counts["rows"],
             "answers" if is_unpaired(method) else "pairs", counts["epochs_seen"], result.training_loss)
    return {"train_loss": result.training_loss, "rows": counts["rows"], "rows_seen": counts["rows_seen"]}
