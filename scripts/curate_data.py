"""Curate one role's ingested sources (sft or preference) into Parquet, a quarantine file and a data card."""

from tunesmith.data.curate import curate, curate_memory_limit
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    curate(
        sources=snakemake.params.sources,
        role=snakemake.wildcards.role,
        tasks_path=snakemake.input.tasks,
        settings=snakemake.params.curate,
        kept_path=snakemake.output.kept,
        quarantine_path=snakemake.output.quarantine,
        card_path=snakemake.output.card,
        ingested=list(snakemake.input.ingested),
        seed=snakemake.params.seed,
        card_markdown_path=snakemake.output.card_markdown,
        lengths_plot_path=snakemake.output.lengths_plot,
        threads=snakemake.threads,
        memory_limit=curate_memory_limit(snakemake),
        max_length=snakemake.params.lengths["max_length"],
        tokenizer=snakemake.params.lengths["tokenizer"],
        trust_remote_code=snakemake.params.lengths["trust_remote_code"],
    )
