"""Preference accuracy of one stage's model (sft or dpo) on the held-out preference pairs."""

from tunesmith.logs import log_to
from tunesmith.manifest import recorded
from tunesmith.preference import score_preferences

log_to(snakemake.log[0])
model = snakemake.params.model
with recorded(snakemake, f"preference_{snakemake.wildcards.stage}"):
    score_preferences(
        base_path=snakemake.params.base_path,
        base_section=model["base_model"],
        adapters=list(snakemake.input.adapters),
        template_section=model["template"],
        dataset_path=snakemake.input.dataset,
        out_path=snakemake.output.scores,
        threads=snakemake.threads,
    )
