"""Write a curated dataset in the layouts trl and `datasets` load (split files and a dataset card)."""

from tunesmith.hub.hub import export_curated
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    export_curated(
        kept_path=snakemake.input.kept,
        data_card_path=snakemake.input.card,
        role=snakemake.wildcards.role,
        sources=snakemake.params.sources,
        curate=snakemake.params.curate,
        out_dir=snakemake.output.dataset,
    )
