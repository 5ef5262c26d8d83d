"""Gather the graded shards into preference pairs (best vs worst above the margin), quarantine the rest, and
ingest the pairs as the preference source curation reads (tunesmith.training.on_policy)."""

from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.training.on_policy import build_pairs
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    build_pairs(
        graded_paths=list(snakemake.input.graded),
        min_margin=snakemake.params.pairs["min_margin"],
        pairs_path=snakemake.output.pairs,
        quarantine_path=snakemake.output.quarantine,
        summary_path=snakemake.output.summary,
        ingested_path=snakemake.output.ingested,
    )
