"""Grade one shard of on-policy answers against references or with the judge, cached (tunesmith.training.on_policy)."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.training.on_policy import grade_answers
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # a local judge model is a fetched snapshot; an endpoint is not the hub
with recorded(snakemake, job_label(snakemake)):
    grade_answers(
        samples_path=snakemake.input.samples,
        grader=snakemake.params.pairs["grader"],
        out_path=snakemake.output.graded,
        cache_dir=snakemake.params.cache,
        judge=snakemake.params.judge,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
