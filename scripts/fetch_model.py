"""Snapshot the model a recipe names (hub id at a revision, or a local folder) and record its files."""

from tunesmith.hub.fetch import fetch_model
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    fetch_model(
        path=snakemake.params.path,
        revision=snakemake.params.revision,
        out_dir=snakemake.output.model,
        record_path=snakemake.output.record,
        key=snakemake.params.recipe_key,
    )
