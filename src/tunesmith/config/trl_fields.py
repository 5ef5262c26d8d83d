"""The training sections (`continued_pretraining`, `sft`, `dpo`) as trl and peft name them.

A recipe key that is a trl or peft field carries that field's name (`sft.num_train_epochs` is SFTConfig's
`num_train_epochs`, `dpo.lora.lora_alpha` is LoraConfig's `lora_alpha`); the names tunesmith used before are
errors naming the new key (`RENAMED`). Any other field of the stage's trl config goes in the section's
`trainer:` mapping and reaches the config as written (`optim: paged_adamw_8bit`, `neftune_noise_alpha: 5`).
`trainer_problems` checks that mapping before any job against the installed trl's dataclass fields of the
config the stage builds (SFTConfig, or per `dpo.method` DPOConfig, ORPOConfig, CPOConfig or KTOConfig): an
unknown field is an error with the closest field's name, and a field tunesmith sets itself (`SET_BY_TUNESMITH`)
is an error naming the recipe key that sets it. trl is imported only for a non-empty `trainer:` mapping.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings

SECTIONS = ("continued_pretraining", "sft", "dpo")

# Old recipe keys -> trl's (or peft's) names. `*` is each training section.
_RENAMED_IN_EVERY_SECTION = {
    "batch_size": "per_device_train_batch_size", "epochs": "num_train_epochs", "lr_scheduler": "lr_scheduler_type",
    "lora.alpha": "lora.lora_alpha", "lora.dropout": "lora.lora_dropout",
}
RENAMED = {
    **{f"{section}.{old}": f"{section}.{new}"
       for section in SECTIONS for old, new in _RENAMED_IN_EVERY_SECTION.items()},
    **{f"{section}.eval_batch_size": f"{section}.per_device_eval_batch_size" for section in ("sft", "dpo")},
    "dpo.simpo.gamma": "dpo.simpo_gamma", "dpo.simpo.sft_weight": "dpo.cpo_alpha",
    "dpo.kto.desirable_weight": "dpo.desirable_weight", "dpo.kto.undesirable_weight": "dpo.undesirable_weight",
}
# Sections that are gone (their keys moved up into `dpo`).
REMOVED_SECTIONS = {"dpo.simpo": "dpo.simpo_gamma and dpo.cpo_alpha",
                    "dpo.kto": "dpo.desirable_weight and dpo.undesirable_weight"}

# Fields tunesmith's trainers set themselves (tunesmith.training.train, tunesmith.training.preference), with what sets them: a
# recipe key (`*` is the section) or, for a field no key sets, why it is tunesmith's. A test checks this
# against the arguments the trainers really pass.
_SECTION_KEYS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "max_length",
                 "logging_steps", "activation_checkpointing", "save_steps")
SET_BY_TUNESMITH = {
    **{name: f"*.{name}" for name in _SECTION_KEYS},
    "eval_strategy": "*.evaluations", "eval_steps": "*.evaluations",
    "save_strategy": "*.save_steps", "save_total_limit": "*.save_steps (two checkpoints are kept)",
    "seed": "seed", "data_seed": "seed",
    "report_to": "tracking.report_to", "run_name": "tracking.project", "project": "tracking.project",
    "output_dir": "none: the stage's folder is tunesmith's (results/<stage>/<key>)",
    "resume_from_checkpoint": "*.save_steps (a killed job resumes from its last checkpoint by itself)",
    "use_cpu": "none: chosen from the machine (CUDA or not)", "bf16": "none: chosen from the machine (CUDA or not)",
    "fp16": "none: tunesmith trains in bf16 where CUDA supports it, else in float32",
    "dataloader_num_workers": "none: tunesmith reads the rows in the training process",
    "disable_tqdm": "none: a log line per logging step replaces the progress bar",
    "deepspeed": "distributed.strategy", "fsdp": "distributed.strategy", "fsdp_config": "distributed.strategy",
    "push_to_hub": "publish", "hub_model_id": "publish", "hub_token": "publish",
    # SFTConfig
    "completion_only_loss": "template.kind (rows are rendered to prompt/completion: loss on answers only)",
    "packing": "sft.packing", "packing_strategy": "sft.packing_strategy",
    "dataset_text_field": "none: continued pretraining's text column is tunesmith's",
    # the preference configs
    "beta": "dpo.beta", "loss_type": "dpo.loss_type (dpo), dpo.method (simpo's loss)",
    "simpo_gamma": "dpo.simpo_gamma", "cpo_alpha": "dpo.cpo_alpha",
    "desirable_weight": "dpo.desirable_weight", "undesirable_weight": "dpo.undesirable_weight",
    "precompute_ref_log_probs": "none: the reference's log-probabilities are computed once before training",
    "precompute_ref_batch_size": "dpo.per_device_eval_batch_size",
}


def renamed_problems(recipe: dict) -> list[str]:
    """The recipe's keys (as written) that trl or peft names differently, each with the key to write instead."""
    problems = []
    for old, new in RENAMED.items():
        if _has(recipe, old):
            problems.append(f"{old}: renamed to {new} (trl's and peft's own name); write {new}")
    for old, new in REMOVED_SECTIONS.items():
        if _has(recipe, old) and not any(_has(recipe, key) for key in RENAMED if key.startswith(f"{old}.")):
            problems.append(f"{old}: this section is gone; its keys are {new}")
    return problems


def _has(recipe: dict, dotted: str) -> bool:
    node = recipe
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_class(section: str, method: str | None = None):
    """The trl config class the stage's trainer is built with (trl imported here, on demand)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        if section != "dpo":
            from trl import SFTConfig
            return SFTConfig
        if method == "dpo":
            from trl import DPOConfig
            return DPOConfig
        if method == "kto":
            from trl import KTOConfig
            return KTOConfig
        if method == "orpo":
            from trl.experimental.orpo import ORPOConfig
            return ORPOConfig
        from trl.experimental.cpo import CPOConfig
        return CPOConfig


def config_fields(config) -> set[str]:
    return {field.name for field in dataclasses.fields(config) if field.init}


def trainer_problems(recipe: dict) -> list[str]:
    """Each training section's `trainer:` fields checked against the installed trl config its stage builds."""
    problems = []
    for section in SECTIONS:
        passed = recipe[section]["trainer"]
        if not passed:
            continue
        config = config_class(section, recipe[section].get("method"))
        known = config_fields(config)
        for name in sorted(passed):
            where = f"{section}.trainer.{name}"
            if name in SET_BY_TUNESMITH:
                instead = _setter(SET_BY_TUNESMITH[name], recipe, section)
                problems.append(f"{where}: tunesmith sets trl's {name} itself; {instead}")
            elif name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                problems.append(f"{where}: not a field of trl's {config.__name__} (installed trl)"
                                + (f"; did you mean {close[0]!r}?" if close else ""))
    return problems


def _setter(setter: str, recipe: dict, section: str) -> str:
    """What to write instead of a `trainer:` field tunesmith sets: the recipe key, or why there is none."""
    if setter.startswith("none: "):
        return setter[len("none: "):]
    if setter.startswith("*.") and setter.split()[0][2:] not in recipe[section]:
        return f"{section} has no key for it (its stage does not use it)"
    return f"use {setter.replace('*', section)} instead"
