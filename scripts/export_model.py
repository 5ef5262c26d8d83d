"""Merge the submitted stage's adapter into the base model on CPU and save a standalone model folder."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.hub.export import export_merged
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
    export_merged(
        base_path=snakemake.params.base_path,
        section=snakemake.params.base_model,
        adapter=snakemake.input.adapter[0],  # the stage's one adapter folder (a list of one: sft|dpo have one)
        out_dir=snakemake.output.model,
        template_section=snakemake.params.template,
    )
