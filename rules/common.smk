# Validation of the recipe, and the input helpers the rules share. No rules here.
#
# Stage artifacts live under content keys (tunesmith.plan): results/<stage>/<key>/... . A rule's
# wildcards carry the key, and every helper below looks up the recipe step that made that key, so
# recipes and sweep variants that agree upstream share those artifacts.
import copy
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tunesmith import plan
from tunesmith.recipe import RecipeError, validate_recipe

if workflow.config_settings.configfiles:
    # A recipe is one complete run: a --configfile replaces the default recipe instead of being
    # merged onto it, so no key of recipes/default.yaml leaks into another recipe.
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))

try:
    recipe_files = workflow.config_settings.configfiles or ["recipes/default.yaml"]
    origin = ", ".join(map(str, recipe_files))
    validate_recipe(config, origin=origin)
    VARIANTS = plan.variants(config, origin=origin)
except RecipeError as error:
    raise WorkflowError(str(error)) from None

# The recipe itself is variant "" (submission.jsonl, results/eval.json); a sweep adds named ones.
RECIPES = {"": config, **VARIANTS}
PLANS = {name: plan.steps(recipe) for name, recipe in RECIPES.items()}
STEPS = {step.key: step for steps in PLANS.values() for step in steps.values()}
VARIANT_OF = {step.key: name for name, steps in PLANS.items() for step in steps.values()}
KEY = "[0-9a-f]{12}"


def step(wildcards):
    try:
        return STEPS[wildcards.key]
    except KeyError:
        raise WorkflowError(f"no stage of this recipe is stored under key {wildcards.key}") from None


def setting(name):
    """A params function: the setting `name` of the step whose key is in the wildcards."""
    return lambda wildcards: step(wildcards).settings[name]


def keyed(pattern, key, **more):
    return expand(pattern, key=key, **more)[0]


def source_paths(sources):
    """The files behind sources (globs and folders expanded); a hub dataset id has none."""
    files = []
    for source in sources:
        if source["format"] == "hf" and not Path(source["path"]).exists():
            continue
        files += plan.source_files(source["path"], source["format"])
    return files


def step_sources(wildcards):
    return source_paths(step(wildcards).settings["sources"])


def ingested(wildcards):
    """The per-source Parquet files of a curation step, in the order of its sources."""
    upstream = step(wildcards).upstream
    return [keyed(rules.ingest_source.output.ingested, upstream[f"ingest_{source['id']}"])
            for source in step(wildcards).settings["sources"]]


def source_of_step(wildcards):
    return source_paths([step(wildcards).settings["source"]])


def curated(wildcards):
    key = step(wildcards).upstream["dataset"]
    return keyed(rules.curate_data.output.kept, key, role=STEPS[key].stage.removeprefix("curate_"))


def variant_name(wildcards):
    """The variant behind a job ("" for the recipe): the one that made its key, else the one it names."""
    return VARIANT_OF[wildcards.key] if "key" in wildcards.keys() else wildcards.get("variant", "")


def recipe_of(wildcards):
    return RECIPES[variant_name(wildcards)]


def model_files(variant, stage):
    """The built base model folder (none for a hub id or own folder) and a stage's adapters, in merge order."""
    steps = PLANS[variant]
    base = [keyed(rules.pretrain_base.output.model, steps["base_model"].key)] if "base_model" in steps else []
    adapters = [keyed(rules_of_adapters()[name].output.adapter, steps[name].key)
                for name in plan.adapter_stages(RECIPES[variant], stage)]
    return base, adapters


def rules_of_adapters():
    return {"cpt": rules.train_cpt, "sft": rules.train_sft, "dpo": rules.train_dpo}


def base_model_input(wildcards):
    return model_files(variant_name(wildcards), "base")[0]


def base_model_path(wildcards):
    built = base_model_input(wildcards)
    return built[0] if built else recipe_of(wildcards)["base_model"]["path"]


def adapter_chain(wildcards):
    return model_files(variant_name(wildcards), wildcards.stage)[1]


def base_adapters(wildcards):
    """The continued-pretraining adapter SFT and DPO train on top of, if the recipe has one."""
    key = step(wildcards).upstream.get("cpt")
    return [keyed(rules.train_cpt.output.adapter, key)] if key else []


def processes(wildcards):
    """GPUs a training job holds: one per process (`distributed.processes`)."""
    return step(wildcards).settings["distributed"]["processes"]


def sft_adapter(wildcards):
    return keyed(rules.train_sft.output.adapter, step(wildcards).upstream["sft"])


def tokenizer(wildcards):
    return keyed(rules.train_tokenizer.output.tokenizer, step(wildcards).upstream["tokenizer"])


def task_file(wildcards):
    return recipe_of(wildcards)["tasks"]["path"]


def generations(variant, stage_names):
    return [keyed(rules.generate_answers.output.generations, PLANS[variant][f"generate_{name}"].key, stage=name)
            for name in stage_names]


def preference_scores(variant):
    """Stage -> its preference-accuracy file, for the stages a recipe compares (none without DPO)."""
    steps = PLANS[variant]
    return {stage: keyed(rules.score_preferences.output.scores, steps[f"preference_{stage}"].key, stage=stage)
            for stage in plan.PREFERENCE_STAGES if f"preference_{stage}" in steps}


def stages(wildcards):
    return plan.model_stages(recipe_of(wildcards))


def references(wildcards):
    return recipe_of(wildcards)["tasks"]["references"] or []


def submission_inputs(wildcards):
    recipe = recipe_of(wildcards)
    return {"generations": generations(variant_name(wildcards), [plan.submitted_stage(recipe)]),
            "tasks": recipe["tasks"]["path"]}


def scores(wildcards):
    """Scored first, so building a submission also shows what each stage bought."""
    if not references(wildcards):
        return []
    name = wildcards.get("variant", "")
    return expand(rules.evaluate_variant.output.scores, variant=name) if name else rules.evaluate_stages.output.scores


def sweep_targets():
    return [rules.rank_variants.output.table] if VARIANTS else []


def evaluation_targets():
    return [rules.evaluate_stages.output.scores] if config["tasks"]["references"] else []


onsuccess:
    table = Path(rules.evaluate_stages.output.table)
    if table.is_file() and Path("submission.jsonl").is_file():
        print(f"\nsubmission.jsonl is ready. Scores on {config['tasks']['references']}:\n{table.read_text()}")
    board = Path(rules.rank_variants.output.table)
    if VARIANTS and board.is_file():
        print(f"Sweep leaderboard ({board}):\n{board.read_text()}")


def variant_overrides():
    return plan.combinations(config)


wildcard_constraints:
    variant="[^/]+",
