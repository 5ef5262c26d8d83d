"""Answer the task file with one stage's model (base, sft or dpo), in batches."""

from tunesmith.generation.generate import generate_answers
from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
    generate_answers(
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        adapter=next(iter(snakemake.input.adapters), None),  # the stage's one adapter folder; none for base
        template_section=snakemake.params.template,
        settings=snakemake.params.generate,
        tasks_path=snakemake.input.tasks,
        seed=snakemake.params.seed,
        out_path=snakemake.output.generations,
        threads=snakemake.threads,
        normalize_prompts=snakemake.params.curate["normalize_training_text"],
    )
