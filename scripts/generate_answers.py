"""Answer the task file with one stage's model (base, sft or dpo), in batches."""

from tunesmith.generate import generate_answers
from tunesmith.fetch import hub_offline
from tunesmith.logs import log_to
from tunesmith.manifest import recorded

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
model = snakemake.params.model
with recorded(snakemake, f"generate_{snakemake.wildcards.stage}"):
    generate_answers(
        base_path=snakemake.params.base_path,
        base_section=model["base_model"],
        adapter=next(iter(snakemake.input.adapters), None),  # the stage's one adapter folder; none for base
        template_section=model["template"],
        settings=snakemake.params.generate,
        tasks_path=snakemake.input.tasks,
        seed=model["seed"],
        out_path=snakemake.output.generations,
        threads=snakemake.threads,
    )
