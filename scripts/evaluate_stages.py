"""Score each stage's answers against the reference file (exact match, chrF)."""

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
    )
