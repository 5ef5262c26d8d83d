"""Grade one stage's answers (or the reference grades file's) with the recipe's LLM judge, cached."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.judge.judge import judge_answers
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # a local judge model is a fetched snapshot; an endpoint is not the hub
with recorded(snakemake, job_label(snakemake)):
    judge_answers(
        answers_path=snakemake.input.answers,
        tasks_path=snakemake.input.tasks,
        references_path=snakemake.input.references or None,  # one file is a str, none an empty list
        settings=snakemake.params.judge,
        seed=snakemake.params.seed,
        out_path=snakemake.output.grades,
        cache_dir=snakemake.params.cache,
        answers_kind=snakemake.params.answers_kind,
        threads=snakemake.threads,
    )
