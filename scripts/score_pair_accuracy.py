"""Preference accuracy of one stage's model (sft or dpo) on the held-out preference pairs."""

from tunesmith.evaluation.preference_accuracy import score_preferences
from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
    score_preferences(
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        adapter=next(iter(snakemake.input.adapters), None),  # the stage's one standalone adapter folder
        template_section=snakemake.params.template,
        dataset_path=snakemake.input.dataset,
        out_path=snakemake.output.scores,
        threads=snakemake.threads,
    )
