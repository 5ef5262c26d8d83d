"""Each stage's scores over the seed replicates (`repeats`): per seed, mean and spread."""

from tunesmith.evaluation.replicates import summarise_replicates
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    summarise_replicates(
        evaluations=dict(zip(snakemake.params.seeds, snakemake.input.scores)),
        out_path=snakemake.output.scores,
        table_path=snakemake.output.table,
    )
