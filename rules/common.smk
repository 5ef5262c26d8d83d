# Validation of the recipe, and the input helpers the rules share. No rules here.
#
# Everything the workflow knows about its stages lives in tunesmith.workflow (the stage registry): the
# recipe and its variants, every step's content key, the rule that builds each stage. The functions below
# only turn wildcards into its calls and its answers into Snakemake errors. Stage artifacts live under
# content keys: results/<stage>/<key>/... ; a rule's wildcards carry the key.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tunesmith import workflow as registry
from tunesmith.evaluation import summary
from tunesmith.jobs.logs import explain_stale_locks, stop_workflow, when_nothing_to_do
from tunesmith.training.launcher import job_resources


def locate(rule, output, **wildcards):
    """The path of `rules.<rule>.output.<output>` for these wildcards (how the registry names a path)."""
    return expand(getattr(rules, rule).output[output], **wildcards)[0]


try:
    # Read by tunesmith, not by Snakemake's --configfile loader (which templates files, running code).
    WORKFLOW = registry.load(config, workflow.config_settings.configfiles, workflow.basedir, locate)
except registry.RecipeError as error:
    stop_workflow(error)  # our message alone, without Snakemake's header pointing at this file
# A killed run's lock: Snakemake's error then names the unlock command that works here.
explain_stale_locks(config.get("recipe"))
config.clear()
config.update(WORKFLOW.recipe)  # what tunesmith.training.tracking.run_of reads in training jobs
KEY = registry.KEY


def asked(function):
    """A registry call of a Snakemake function, its WorkflowError as Snakemake's."""

    def call(*arguments):
        try:
            return function(*arguments)
        except registry.WorkflowError as error:
            raise WorkflowError(str(error)) from None

    return call


def variant(wildcards):
    """The variant behind a job ("" for the recipe): the one that made its key, else the one it names."""
    key = wildcards.key if "key" in wildcards.keys() else None
    return WORKFLOW.variant(key, wildcards.get("variant", ""))


@asked
def step(wildcards):
    return WORKFLOW.step(wildcards.key)


def setting(name):
    """A params function: the setting `name` of the step whose key is in the wildcards."""
    return lambda wildcards: step(wildcards).settings[name]


def by_key(method):
    """An input function: `method(key)` of the registry for the key in the wildcards."""
    return asked(lambda wildcards: method(wildcards.key))


def by_variant(method):
    """An input function: `method(variant)` of the registry for the job's variant."""
    return asked(lambda wildcards: method(variant(wildcards)))


step_sources = by_key(WORKFLOW.step_sources)
ingested = by_key(WORKFLOW.ingested)
curated = by_key(WORKFLOW.curated)
curated_pairs = by_key(WORKFLOW.curated_pairs)
curation_sources = by_key(WORKFLOW.curation_sources)
fetch_recipe_key = by_key(WORKFLOW.fetch_recipe_key)
judge_settings = by_key(WORKFLOW.judge_settings)
base_model_input = by_variant(WORKFLOW.base_model_input)
base_model_path = by_variant(WORKFLOW.base_model_path)
task_file = by_variant(WORKFLOW.task_file)
references = by_variant(WORKFLOW.references)
stages = by_variant(WORKFLOW.model_stages)
submission_stages = by_variant(WORKFLOW.submission_stages)
submission_inputs = by_variant(WORKFLOW.submission_inputs)
evaluation_inputs = by_variant(WORKFLOW.evaluation_inputs)
judge_model_record = asked(lambda wildcards: WORKFLOW.fetched_record(variant(wildcards), "judge"))
adapter_chain = asked(lambda wildcards: WORKFLOW.adapter_chain(variant(wildcards), wildcards.stage))
judge_answers_input = asked(lambda wildcards: WORKFLOW.judge_answers(wildcards.key, wildcards.stage))
base_adapters = by_key(lambda key: WORKFLOW.consumed(key, "cpt", "adapter"))
sft_adapter = by_key(lambda key: WORKFLOW.consumed(key, "sft", "adapter")[0])
tokenizer = by_key(lambda key: WORKFLOW.consumed(key, "tokenizer", "tokenizer")[0])
fetch_inputs = by_key(lambda key: list(WORKFLOW.step(key).files))
judge_template = by_key(lambda key: WORKFLOW.step(key).settings["judge"]["prompt_template"] or [])
judge_is_remote = by_key(lambda key: WORKFLOW.step(key).settings["judge"]["backend"] == "openai")


def training_resource(name):
    """A resources function of training jobs: GPUs, and Slurm's nodes and tasks above one node
    (`tunesmith.training.launcher.job_resources`; None leaves the resource out)."""
    return lambda wildcards: job_resources(step(wildcards).settings["distributed"]).get(name)


def keyed_result(wildcards, step_name, output):
    """A keyed result (the submission, the evaluation) of the recipe or of the sweep variant in the wildcards."""
    return WORKFLOW.step_output(variant(wildcards), step_name, output)


def sweep_targets():
    return [rules.rank_variants.output.table] if WORKFLOW.variants else []


def replicate_targets():
    return [rules.summarise_replicates.output.scores] if WORKFLOW.replicates else []


def evaluation_targets():
    return [current_files()["scores"]] if registry.scored_by(WORKFLOW.recipe) else []


def current_files():
    # Plain strings: a rule's output is a path object tied to its rule, which a job's params cannot pickle.
    return {
        "submission": str(rules.current_submission.output.submission),
        "scores": str(rules.current_evaluation.output.scores),
        "replicates": str(rules.summarise_replicates.output.scores),
    }


def run_files():
    """The files the recipe's end-of-run summary and report pages read (tunesmith.evaluation.summary.collect)."""
    return WORKFLOW.run_files(current_files())


def summarise_inputs(wildcards):
    return WORKFLOW.summary_inputs(current_files())


def reported(path, current=True, **flags):
    """`report(path, ...)` for a fixed path once it holds this recipe's results: `snakemake --report`
    refuses a registered file that is missing, and a report after `snakemake submission.jsonl` shows
    what that built (and never another recipe's tables)."""
    return report(path, **flags) if current and Path(path).exists() else path


def print_summary():
    print("", summary.end_of_run(run_files(), *WORKFLOW.submitted(), rules.summarise_run.output.summary), sep="\n")
    board = Path(rules.rank_variants.output.table)
    if WORKFLOW.variants and board.is_file():
        print(f"\nSweep leaderboard ({board}):\n{board.read_text()}")


when_nothing_to_do(workflow, print_summary)  # a run with nothing to do prints the summary too


onsuccess:
    print_summary()


# A run on this machine that would train a quantised base without CUDA stops here, before curation or a
# 26 GB fetch. onstart runs only when jobs are about to run (not for -n), and a cluster executor's jobs
# run elsewhere (workflow.local_exec is False): those plan and submit as usual.
onstart:
    if workflow.local_exec and not workflow.touch:
        from tunesmith.model.model import ModelError, refuse_quantised_training_here  # torch: only when jobs run

        jobs = [(job.rule.name, job.wildcards.get("key")) for job in workflow.dag.needrun_jobs()]
        try:
            refuse_quantised_training_here(WORKFLOW.training_bases(jobs))
        except ModelError as error:
            stop_workflow(error)


wildcard_constraints:
    variant="[^/]+",


# ---- publish (issue 14): datasets in trl's layouts, cards, and the opt-in push targets ----
dataset_targets = WORKFLOW.exported_datasets
exported_dataset = asked(lambda wildcards: WORKFLOW.dataset_card_inputs(wildcards.role))
model_card_inputs = asked(
    lambda wildcards: WORKFLOW.model_card_inputs(wildcards.kind, wildcards.stage, current_files())
)


def publish_repo(kind):
    """A params function: the hub repository a push goes to, refused before any job when unset."""
    return asked(lambda wildcards: WORKFLOW.publish_repo(kind))


# ---- on-policy pairs (rules/pairs.smk): the shard count is in the paths, never in a key ----
pairs_sft_adapter = asked(lambda wildcards: WORKFLOW.adapter_chain(variant(wildcards), "sft"))
pairs_prompts = by_key(WORKFLOW.pairs_prompts)
pairs_graded = by_key(WORKFLOW.pairs_graded)
pairs_samples = asked(lambda wildcards: WORKFLOW.pairs_samples(wildcards.key, wildcards.shard, wildcards.shards))
pairs_judge_settings = by_key(WORKFLOW.pairs_judge)
pairs_judge_is_local = by_key(WORKFLOW.pairs_judge_is_local)


def pairs_judge_input(kind):
    """The judge grader's rubric file or fetched model record, as an input function (none for references)."""
    return by_key(lambda key: WORKFLOW.pairs_judge_inputs(key, kind))
