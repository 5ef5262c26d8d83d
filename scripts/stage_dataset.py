"""Stage an exported curated dataset with its dataset card: what a push uploads."""

from tunesmith.hub.hub import stage_dataset
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    stage_dataset(
        dataset_dir=snakemake.input.dataset,
        data_card_path=snakemake.input.card,
        role=snakemake.wildcards.role,
        sources=snakemake.params.sources,
        curate=snakemake.params.curate,
        publish=snakemake.params.publish,
        out_dir=snakemake.output.folder,
    )
