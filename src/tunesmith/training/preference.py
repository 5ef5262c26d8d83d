"""The preference methods of the `dpo` stage (`dpo.method`): DPO, ORPO, SimPO and KTO, as trl trainers.

Every method trains the same way in `tunesmith.training.train.train_dpo`: a new adapter on top of the frozen SFT adapter
(or SFT's own adapter, `dpo.start: continue_sft`), rows rendered with the recipe's template, resumable
checkpoints, a standalone adapter folder, curves and tracking. What differs is here:

| method | trl 1.16                                     | reference                       | rows                        |
|--------|----------------------------------------------|---------------------------------|-----------------------------|
| dpo    | DPOTrainer, loss_type `dpo.loss_type`        | the SFT model, log-probs first  | pairs                       |
| orpo   | trl.experimental.orpo.ORPOTrainer (beta = λ) | none                            | pairs                       |
| simpo  | trl.experimental.cpo.CPOTrainer, loss simpo  | none                            | pairs                       |
| kto    | KTOTrainer                                   | the SFT model, log-probs first  | single answers with a label |

KTO's rows come from the curated pairs (`tunesmith.data.unpaired`). DPO and KTO drop a row whose prompt alone fills
`max_length`; ORPO's and CPO's trainers keep it with an empty answer (whose length-normalised SimPO reward is
0/0), so for them the same rows are dropped before trl sees them, and the counts mean the same for every method.
"""

from __future__ import annotations

import logging
import warnings
from importlib import metadata

log = logging.getLogger(__name__)

METHODS = ("dpo", "orpo", "simpo", "kto")
WITH_REFERENCE = ("dpo", "kto")
TRL_DROPS_LONG_PROMPTS = ("dpo", "kto")


def needs_reference(method: str) -> bool:
    return method in WITH_REFERENCE


def is_unpaired(method: str) -> bool:
    return method == "kto"


def _experimental():
    """trl 1.16 keeps ORPO and CPO under trl.experimental, whose import warns; the log says it once instead."""
    log.info("ORPO and SimPO train with trl.experimental's ORPOTrainer and CPOTrainer (trl %s)", _trl_version())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return CPOConfig, CPOTrainer, ORPOConfig, ORPOTrainer


def _trl_version() -> str:
    return metadata.version("trl")


def trainer_class_and_config(dpo: dict, common: dict):
    """(trl trainer class, its config) for the recipe's `dpo` section; `common` holds the TrainingArguments
    every stage shares (tunesmith.training.train). The reference's log-probabilities are computed in batches of the
    evaluation batch size (`dpo.per_device_eval_batch_size`; trl's default is the training batch for the training rows
    and 8 for the validation rows)."""
    method, passed = dpo["method"], dpo["trainer"]  # passed: any other field of the config (tunesmith.config.trl_fields)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig(**common, beta=dpo["beta"], loss_type=[dpo["loss_type"]],
                                     precompute_ref_log_probs=True,
                                     precompute_ref_batch_size=common["per_device_eval_batch_size"], **passed)
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig(**common, beta=dpo["beta"], desirable_weight=dpo["desirable_weight"],
                                     undesirable_weight=dpo["undesirable_weight"], precompute_ref_log_probs=True,
                                     precompute_ref_batch_size=common["per_device_eval_batch_size"], **passed)
    CPOConfig, CPOTrainer, ORPOConfig, ORPOTrainer = _experimental()
    if method == "orpo":
        return ORPOTrainer, ORPOConfig(**common, beta=dpo["beta"], **passed)
    if method == "simpo":
        return CPOTrainer, CPOConfig(**common, loss_type="simpo", beta=dpo["beta"], simpo_gamma=dpo["simpo_gamma"],
                                     cpo_alpha=dpo["cpo_alpha"], **passed)
    raise ValueError(f"dpo.method: unknown method {method!r}; expected one of {list(METHODS)}")


def preference_problems(recipe: dict) -> list[str]:
    """Rules between the `dpo` keys that the schema cannot say (for tunesmith.config.recipe's validator)."""
    dpo = recipe["dpo"]
    problems = []
    if dpo["method"] == "kto" and dpo["per_device_train_batch_size"] < 2:
        problems.append("dpo.per_device_train_batch_size: method kto needs at least 2 answers per batch (its KL "
                        "estimate pairs each answer with another row's prompt)")
    if dpo["method"] != "dpo" and dpo["loss_type"] != "sigmoid":
        problems.append(f"dpo.loss_type: '{dpo['loss_type']}' is a DPO loss; method '{dpo['method']}' has its own "
                        "(remove dpo.loss_type or set dpo.method: dpo)")
    return problems
