"""KTO's curated dataset: the curated preference pairs as labelled single answers, a quarantine file and a card."""

from tunesmith.data.unpaired import write_unpaired
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    write_unpaired(
        pairs_path=snakemake.input.pairs,
        seed=snakemake.params.seed,
        kept_path=snakemake.output.kept,
        quarantine_path=snakemake.output.quarantine,
        card_path=snakemake.output.card,
    )
