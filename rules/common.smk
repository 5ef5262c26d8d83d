# Validation of the recipe, and the input helpers the rules share. No rules here.
#
# Stage artifacts live under content keys (tunesmith.plan): results/<stage>/<key>/... . A rule's
# wildcards carry the key, and every helper below looks up the recipe step that made that key, so
# recipes and sweep variants that agree upstream share those artifacts.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tunesmith import plan
from tunesmith import summary
from tunesmith.launcher import job_resources
from tunesmith.logs import explain_stale_locks, stop_workflow, when_nothing_to_do
from tunesmith.on_policy import pairs_source
from tunesmith.recipe import RecipeError, combinations, replicate_seeds, replicates, variants, workflow_recipe

try:
    # Read by tunesmith, not by Snakemake's --configfile loader (which templates files, running code).
    RECIPE_PATH, RECIPE = workflow_recipe(config, workflow.config_settings.configfiles, workflow.basedir)
    VARIANTS = variants(RECIPE, origin=RECIPE_PATH)
    REPLICATES = replicates(RECIPE)  # `repeats`: the recipe under further seeds, named seed=N
except RecipeError as error:
    stop_workflow(error)  # our message alone, without Snakemake's header pointing at this file
# A killed run's lock: Snakemake's error then names the unlock command that works here.
explain_stale_locks(config.get("recipe"))
config.clear()
config.update(RECIPE)

# The recipe itself is variant "" (submission.jsonl, results/eval.json); a sweep and seed replicates add
# named ones.
RECIPES = {"": config, **VARIANTS, **REPLICATES}
PLANS = {name: plan.steps(recipe, data_of=config if name in REPLICATES else None) for name, recipe in RECIPES.items()}
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
    return [
        keyed(rules.ingest_source.output.ingested, upstream[f"ingest_{source['id']}"])
        for source in step(wildcards).settings.get("sources", [])
    ] + ([keyed(rules.build_pairs.output.ingested, upstream["pairs"])] if "pairs" in upstream else [])


def source_of_step(wildcards):
    return source_paths(step(wildcards).settings["sources"])


def curated(wildcards):
    """The dataset a training step consumes: a curated role's Parquet, or KTO's unpaired answers."""
    key = step(wildcards).upstream["dataset"]
    if STEPS[key].stage == "unpair_preference":
        return keyed(rules.unpair_preferences.output.kept, key)
    return keyed(rules.curate_data.output.kept, key, role=STEPS[key].stage.removeprefix("curate_"))


def curated_pairs(wildcards):
    return keyed(rules.curate_data.output.kept, step(wildcards).upstream["pairs"], role="preference")


def variant_name(wildcards):
    """The variant behind a job ("" for the recipe): the one that made its key, else the one it names."""
    return VARIANT_OF[wildcards.key] if "key" in wildcards.keys() else wildcards.get("variant", "")


def recipe_of(wildcards):
    return RECIPES[variant_name(wildcards)]


def model_files(variant, stage):
    """The base model a job waits for (the built tiny model's folder, or the fetched snapshot's record)
    and the stage's adapter folder (none for the base): the last of its chain, which holds the adapters
    beneath it (tunesmith.adapters)."""
    steps = PLANS[variant]
    base = [keyed(rules.pretrain_base.output.model, steps["base_model"].key)] if "base_model" in steps else []
    base = fetched_record(variant, "base") or base
    adapters = [
        keyed(rules_of_adapters()[name].output.adapter, steps[name].key)
        for name in plan.adapter_stages(RECIPES[variant], stage)[-1:]
    ]
    return base, adapters


def rules_of_adapters():
    return {"cpt": rules.train_cpt, "sft": rules.train_sft, "dpo": rules.train_dpo}


def base_model_input(wildcards):
    return model_files(variant_name(wildcards), "base")[0]


def base_model_path(wildcards):
    """The folder model jobs load: the fetched snapshot, or the built tiny model."""
    variant = variant_name(wildcards)
    return fetched_folder(variant, "base") or model_files(variant, "base")[0][0]


# ---- fetch (issue 14): snapshots of named models, made by the fetch_model localrule ----
def fetched_record(variant, role):
    """[the snapshot record of a fetched model] (what jobs wait for); [] when the role fetches nothing."""
    step = PLANS[variant].get(f"fetch_{role}")
    return [keyed(rules.fetch_model.output.record, step.key)] if step else []


def fetched_folder(variant, role):
    """The snapshot folder model jobs load for `role` ("base", or "judge" for a local judge), or None."""
    step = PLANS[variant].get(f"fetch_{role}")
    return keyed(rules.fetch_model.output.model, step.key) if step else None


def fetch_recipe_key(wildcards):
    """The recipe section that named a fetched model, for its error messages."""
    bases = {PLANS[variant]["fetch_base"].key for variant in PLANS if "fetch_base" in PLANS[variant]}
    return "base_model" if wildcards.key in bases else "judge.local"


def fetch_inputs(wildcards):
    """A local model folder's files (edits re-fetch it); a hub id has none."""
    return list(step(wildcards).files)


def judge_model_record(wildcards):
    """What a judge job waits for: the fetched snapshot of a local judge model (none for an endpoint)."""
    return fetched_record(variant_name(wildcards), "judge")


def judge_settings(wildcards):
    """The judge section a judge job gets; a local judge model is loaded from its fetched snapshot."""
    judge = step(wildcards).settings["judge"]
    folder = fetched_folder(variant_name(wildcards), "judge")
    return {**judge, "local": {**judge["local"], "path": folder}} if folder else judge


def fetch_targets():
    """Every snapshot the recipe and its sweep variants need: `snakemake fetch_models` on a login node."""
    return sorted(
        {record for variant in PLANS for role in ("base", "judge") for record in fetched_record(variant, role)}
    )


def adapter_chain(wildcards):
    return model_files(variant_name(wildcards), wildcards.stage)[1]


def base_adapters(wildcards):
    """The continued-pretraining adapter SFT and DPO train on top of, if the recipe has one."""
    key = step(wildcards).upstream.get("cpt")
    return [keyed(rules.train_cpt.output.adapter, key)] if key else []


def training_resource(name):
    """A resources function of training jobs: GPUs, and Slurm's nodes and tasks above one node
    (`tunesmith.launcher.job_resources`; None leaves the resource out)."""
    return lambda wildcards: job_resources(step(wildcards).settings["distributed"]).get(name)


def sft_adapter(wildcards):
    return keyed(rules.train_sft.output.adapter, step(wildcards).upstream["sft"])


def tokenizer(wildcards):
    return keyed(rules.train_tokenizer.output.tokenizer, step(wildcards).upstream["tokenizer"])


def task_file(wildcards):
    return recipe_of(wildcards)["tasks"]["path"]


def generations(variant, stage_names):
    return [
        keyed(rules.generate_answers.output.generations, PLANS[variant][f"generate_{name}"].key, stage=name)
        for name in stage_names
    ]


def preference_scores(variant):
    """Stage -> its preference-accuracy file, for the stages a recipe compares (none without DPO)."""
    steps = PLANS[variant]
    return {
        stage: keyed(rules.score_preferences.output.scores, steps[f"preference_{stage}"].key, stage=stage)
        for stage in plan.PREFERENCE_STAGES
        if f"preference_{stage}" in steps
    }


def stages(wildcards):
    return plan.model_stages(recipe_of(wildcards))


def references(wildcards):
    return recipe_of(wildcards)["tasks"]["references"] or []


# ---- judge (issue 10) ----
def judge_answers_input(wildcards):
    """What a judge job grades: a stage's generations, or the answers of judge.reference_grades."""
    if wildcards.stage == "reference":
        return recipe_of(wildcards)["judge"]["reference_grades"]
    return keyed(
        rules.generate_answers.output.generations, step(wildcards).upstream["generations"], stage=wildcards.stage
    )


def judge_template(wildcards):
    return step(wildcards).settings["judge"]["prompt_template"] or []


def judge_is_remote(wildcards):
    return step(wildcards).settings["judge"]["backend"] == "openai"


def judged(variant, stage_names):
    """The judge's grades of each stage (and `reference`) for a variant; none without a judge."""
    steps = PLANS[variant]
    return {
        name: keyed(rules.judge_answers.output.grades, steps[f"judge_{name}"].key, stage=name)
        for name in stage_names
        if f"judge_{name}" in steps
    }


def evaluation_inputs(wildcards):
    variant = variant_name(wildcards)
    names = plan.model_stages(RECIPES[variant])
    return {
        "generations": generations(variant, names),
        "references": references(wildcards),
        "tasks": task_file(wildcards),
        "judged": list(judged(variant, names).values()),
        "judged_reference": next(iter(judged(variant, ["reference"]).values()), []),
        "preferences": list(preference_scores(variant).values()),
    }


def scored_files():
    """The files the recipe's evaluation scores: what results/eval.json must name to be this run's."""
    found = evaluation_inputs({})
    return [
        *found["generations"],
        *found["judged"],
        *([found["judged_reference"]] if found["judged_reference"] else []),
        *found["preferences"],
    ]


def scored_by(recipe):
    """What scores a recipe, in words (None: nothing does)."""
    parts = []
    if plan.judge_enabled(recipe):
        judge = recipe["judge"]
        parts.append(f"judge {judge['openai']['model'] if judge['backend'] == 'openai' else judge['local']['path']}")
    if recipe["tasks"]["references"]:
        parts.append(f"references {recipe['tasks']['references']}")
    return "; ".join(parts) or None


# ---- end judge ----


def submission_stages(wildcards):
    """The stages whose answers a submission job gets: the named one, or every scored one for `best`."""
    recipe = recipe_of(wildcards)
    best = recipe["submission"]["stage"] == "best"
    return plan.model_stages(recipe) if best else [plan.submitted_stage(recipe)]


def submission_inputs(wildcards):
    recipe, variant = recipe_of(wildcards), variant_name(wildcards)
    best = recipe["submission"]["stage"] == "best"
    return {
        "generations": generations(variant, submission_stages(wildcards)),
        "tasks": recipe["tasks"]["path"],
        "scores": [keyed(rules.evaluate_stages.output.scores, PLANS[variant]["evaluate"].key)] if best else [],
    }


def keyed_result(wildcards, step_name, pattern):
    """A keyed result (the submission, the evaluation) of the recipe or of the sweep variant in the wildcards."""
    return keyed(pattern, PLANS[variant_name(wildcards)][step_name].key)


def sweep_targets():
    return [rules.rank_variants.output.table] if VARIANTS else []


def replicate_targets():
    return [rules.summarise_replicates.output.scores] if REPLICATES else []


def replicate_evaluations():
    """Seed -> the keyed evaluation of the recipe trained under it (the recipe's own seed first): under their
    keys they outlive the next recipe, so results/replicates.json names files that stay (`tunesmith compare`)."""
    return {
        seed: keyed(rules.evaluate_stages.output.scores, PLANS[name]["evaluate"].key)
        for seed, name in zip(replicate_seeds(config), ["", *REPLICATES])
    }


def evaluation_targets():
    return [rules.current_evaluation.output.scores] if scored_by(config) else []


def run_files():
    """The files the recipe's end-of-run summary and report pages read (tunesmith.summary.collect): the
    scored stages' answers when something scores them, else the submitted stage's alone."""
    steps = PLANS[""]
    found = evaluation_inputs({})
    names = plan.model_stages(config) if scored_by(config) else [plan.submitted_stage(config)]
    adapters = {
        name: keyed(rules_of_adapters()[name].output.adapter, steps[name].key)
        for name in rules_of_adapters()
        if name in steps
    }
    files = {
        "submission": rules.current_submission.output.submission,
        # The recipe's own (keyed) submission and its choice of stage: what submission.jsonl must copy.
        "submitted": keyed(rules.write_submission.output.submission, steps["submit"].key),
        "choice": keyed(rules.write_submission.output.choice, steps["submit"].key),
        "tasks": found["tasks"],
        "references": found["references"] or None,
        "scores": rules.current_evaluation.output.scores,
        "scored": scored_files(),
        "configured": scored_by(config),
        "generations": dict(zip(names, generations("", names))),
        "judged": judged("", names),
        "cards": {
            step.stage.removeprefix("curate_"): keyed(
                rules.curate_data.output.card, step.key, role=step.stage.removeprefix("curate_")
            )
            for step in steps.values()
            if step.stage.startswith("curate_")
        },
        "adapters": adapters,
        "replicates": (
            {
                "path": rules.summarise_replicates.output.scores,
                "evaluations": list(replicate_evaluations().values()),
            }
            if REPLICATES
            else None
        ),
    }
    # Plain strings: a rule's output is a path object tied to its rule, which a job's params cannot pickle.
    return json.loads(json.dumps(files))


def summarise_inputs(wildcards):
    """What the summary reads, as the rule's input: the files of run_files() (judged maps included)."""
    files = run_files()
    return {
        "submission": files["submission"],
        "tasks": files["tasks"],
        "references": files["references"] or [],
        "scores": evaluation_targets(),
        "generations": list(files["generations"].values()),
        "judged": list(files["judged"].values()),
        "cards": list(files["cards"].values()),
        "adapters": list(files["adapters"].values()),
        "replicates": replicate_targets(),
    }


def recipe_facts():
    """What the report's first page names of the recipe: its file and key settings."""
    return {"path": str(RECIPE_PATH), "settings": summary.key_settings(config)}


def submitted():
    """The submitted stage and why (the summary's first line); for `best`, what the choice file says once the
    submission job wrote it (tunesmith.summary.collect reads it again at job time)."""
    stage = plan.submitted_stage(config)
    return stage, summary.submission_reason(stage, config["submission"]["stage"], config["dpo"]["enabled"])


def reported(path, current=True, **flags):
    """`report(path, ...)` for a fixed path once it holds this recipe's results: `snakemake --report`
    refuses a registered file that is missing, and a report after `snakemake submission.jsonl` shows
    what that built (and never another recipe's tables)."""
    return report(path, **flags) if current and Path(path).exists() else path


def print_summary():
    print("", summary.end_of_run(run_files(), *submitted(), rules.summarise_run.output.summary), sep="\n")
    board = Path(rules.rank_variants.output.table)
    if VARIANTS and board.is_file():
        print(f"\nSweep leaderboard ({board}):\n{board.read_text()}")


when_nothing_to_do(workflow, print_summary)  # a run with nothing to do prints the summary too


onsuccess:
    print_summary()


# A run on this machine that would train a quantised base without CUDA stops here, before curation or a
# 26 GB fetch. onstart runs only when jobs are about to run (not for -n), and a cluster executor's jobs
# run elsewhere (workflow.local_exec is False): those plan and submit as usual.
onstart:
    if workflow.local_exec and not workflow.touch:
        from tunesmith.model import ModelError, refuse_quantised_training_here  # torch: only when jobs run

        try:
            refuse_quantised_training_here(
                {
                    f"{job.rule.name} {job.wildcards.key}": STEPS[job.wildcards.key].settings["base_model"]
                    for job in workflow.dag.needrun_jobs()
                    if job.rule.name in ("train_cpt", "train_sft", "train_dpo")
                }
            )
        except ModelError as error:
            stop_workflow(error)


def variant_overrides():
    return combinations(config)


wildcard_constraints:
    variant="[^/]+",


# ---- publish (issue 14): datasets in trl's layouts, cards, and the opt-in push targets ----
def dataset_targets():
    """The recipe's curated datasets in the layouts trl and `datasets` load."""
    return [
        keyed(rules.export_dataset.output.dataset, PLANS[""][f"curate_{role}"].key, role=role)
        for role in ("sft", "preference")
        if f"curate_{role}" in PLANS[""]
    ]


def exported_dataset(wildcards):
    key = PLANS[""][f"curate_{wildcards.role}"].key
    return {
        "dataset": keyed(rules.export_dataset.output.dataset, key, role=wildcards.role),
        "card": keyed(rules.curate_data.output.card, key, role=wildcards.role),
    }


def data_cards():
    """The recipe's data cards by role (what a model card counts)."""
    return {
        role: keyed(rules.curate_data.output.card, PLANS[""][f"curate_{role}"].key, role=role)
        for role in ("sft", "preference")
        if f"curate_{role}" in PLANS[""]
    }


def model_card_inputs(wildcards):
    if wildcards.stage == "dpo" and not config["dpo"]["enabled"]:
        raise WorkflowError("dpo.enabled is false: there is no dpo model to publish; use sft")
    sources = (
        model_files("", wildcards.stage)[1]
        if wildcards.kind == "adapter"
        else [expand(rules.export_model.output.model, stage=wildcards.stage)[0]]
    )
    return {"sources": sources, **data_cards(), "scores": evaluation_targets(), "record": fetched_record("", "base")}


def publish_repo(kind):
    """A params function: the hub repository a push goes to, refused before any job when unset."""
    key = "dataset_repo" if kind == "dataset" else "model_repo"

    def repo(wildcards):
        if not config["publish"][key]:
            raise WorkflowError(f"publish.{key} is null: name the hub repository (owner/name) to push to")
        return config["publish"][key]

    return repo


# ---- on-policy pairs (issue 20, rules/pairs.smk): the shard count is in the paths, never in a key ----
def curation_sources(wildcards):
    """A curation step's sources; the preference role's add the on-policy pairs (pairs.enabled)."""
    key = step(wildcards).upstream.get("pairs")
    pairs = [pairs_source(keyed(rules.build_pairs.output.pairs, key))] if key else []
    return step(wildcards).settings.get("sources", []) + pairs


def pairs_shards(wildcards, name, rule_output):
    """A pairs step's files, one per shard (rule_output: the pattern of the step that made them)."""
    key, shards = step(wildcards).upstream[name], recipe_of(wildcards)["pairs"]["shards"]
    return [keyed(rule_output, key, shard=shard, shards=shards) for shard in range(shards)]


def pairs_sft_adapter(wildcards):
    return model_files(variant_name(wildcards), "sft")[1]


def pairs_prompts(wildcards):
    key = step(wildcards).upstream.get("dataset")
    return keyed(rules.curate_data.output.kept, key, role="sft") if key else step(wildcards).files[0]


def pairs_samples(wildcards):
    key = step(wildcards).upstream["samples"]
    return keyed(rules.sample_answers.output.samples, key, shard=wildcards.shard, shards=wildcards.shards)


def pairs_graded(wildcards):
    return pairs_shards(wildcards, "graded", rules.grade_answers.output.graded)


def pairs_judge_settings(wildcards):
    return judge_settings(wildcards) if "judge" in step(wildcards).settings else None


def pairs_judge_is_local(wildcards):
    return "judge" in step(wildcards).settings and not judge_is_remote(wildcards)


def pairs_judge_input(kind):
    """The judge grader's rubric file or fetched model record, as an input function (none for references)."""
    return lambda wildcards: (
        (judge_template(wildcards) if kind == "template" else judge_model_record(wildcards))
        if "judge" in step(wildcards).settings
        else []
    )
