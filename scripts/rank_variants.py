"""Rank a sweep's variants by the scores of the stage each submits: a leaderboard table."""

from tunesmith.evaluate import leaderboard
from tunesmith.logs import log_to
from tunesmith.manifest import recorded

log_to(snakemake.log[0])
with recorded(snakemake, "leaderboard"):
    leaderboard(
        scores=dict(zip(snakemake.params.overrides, snakemake.input.scores)),
        overrides=snakemake.params.overrides,
        submitted=snakemake.params.submitted,
        out_path=snakemake.output.scores,
        table_path=snakemake.output.table,
    )
