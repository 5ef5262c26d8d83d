"""Rank a sweep's variants by the scores of the stage each submits, each against the recipe's own
submission (paired) and, with `repeats`, against the recipe's seed spread: a leaderboard table."""

from tunesmith.evaluation.leaderboard import leaderboard
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    leaderboard(
        scores=dict(zip(snakemake.params.overrides, snakemake.input.scores)),
        overrides=snakemake.params.overrides,
        choices=dict(zip(snakemake.params.overrides, snakemake.input.choices)),
        out_path=snakemake.output.scores,
        table_path=snakemake.output.table,
        baseline=snakemake.input.baseline,
        baseline_choice=snakemake.input.baseline_choice,
        baseline_seeds=dict(zip(snakemake.params.seeds, snakemake.input.baseline_seeds)),
    )
