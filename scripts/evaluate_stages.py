"""Score each stage's answers against the reference file (exact match, chrF, per task family), with
each stage's preference accuracy on the held-out pairs."""

from tunesmith.evaluate import evaluate
from tunesmith.logs import log_to
from tunesmith.manifest import recorded

log_to(snakemake.log[0])
with recorded(snakemake, "evaluate"):
    evaluate(
        generations=dict(zip(snakemake.params.stages, snakemake.input.generations)),
        references_path=snakemake.input.references,
        out_path=snakemake.output.scores,
        table_path=snakemake.output.table,
        tasks_path=snakemake.input.tasks,
        preferences=dict(zip(snakemake.params.preference_stages, snakemake.input.preferences)),
    )
