# Validation of the recipe, and the input helpers the rules share. No rules here.
import copy
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tunesmith.ingest import source_files
from tunesmith.recipe import RecipeError, validate_recipe

if workflow.config_settings.configfiles:
    # A recipe is one complete run: a --configfile replaces the default recipe instead of being
    # merged onto it, so no key of recipes/default.yaml leaks into another recipe.
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))

try:
    recipe_files = workflow.config_settings.configfiles or ["recipes/default.yaml"]
    validate_recipe(config, origin=", ".join(map(str, recipe_files)))
except RecipeError as error:
    raise WorkflowError(str(error)) from None


def sources_of(role):
    """The recipe's source entries of one role."""
    return [source for source in config["sources"] if source["role"] == role]


def source_paths(role):
    """The files behind a role's sources (globs and folders expanded); a hub dataset id has none."""
    files = []
    for source in sources_of(role):
        if source["format"] == "hf" and not Path(source["path"]).exists():
            continue
        files += source_files(source["path"], source["format"])
    return files


def builds_base_model():
    return config["base_model"]["path"] is None


def base_model_input():
    """The built tiny model folder as a file dependency, or nothing for a hub id / own folder."""
    return rules.pretrain_base.output if builds_base_model() else []


def base_model_path():
    return rules.pretrain_base.output.model if builds_base_model() else config["base_model"]["path"]


def model_sections():
    """What every model-loading rule reads: a change to any of these reruns it."""
    return {"base_model": config["base_model"], "template": config["template"], "seed": config["seed"]}


def adapter_chain(wildcards):
    """Adapters merged, in order, to make the model of a stage."""
    sft, dpo = rules.train_sft.output.adapter, rules.train_dpo.output.adapter
    dpo_chain = [dpo] if config["dpo"]["start"] == "continue_sft" else [sft, dpo]
    return {"base": [], "sft": [sft], "dpo": dpo_chain}[wildcards.stage]


def stages():
    """Stages whose answers are generated and scored."""
    return ["base", "sft", "dpo"] if config["dpo"]["enabled"] else ["base", "sft"]


def submitted_stage():
    stage = config["submission"]["stage"]
    return "sft" if stage == "dpo" and not config["dpo"]["enabled"] else stage


EVAL_SCORES = "results/eval.json"


def evaluation_targets():
    return [EVAL_SCORES] if config["tasks"]["references"] else []


onsuccess:
    table = Path(rules.evaluate_stages.output.table)
    if table.is_file() and Path("submission.jsonl").is_file():
        print(f"\nsubmission.jsonl is ready. Scores on {config['tasks']['references']}:\n{table.read_text()}")
