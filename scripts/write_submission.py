"""Write the submission from the chosen stage's answers (the named stage, or for `best` the stage the
evaluation's paired tests pick); it is validated before it lands, and the choice is written beside it."""

from tunesmith.evaluation.choice import submit
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    submit(
        requested=snakemake.params.submission["stage"],
        dpo_enabled=snakemake.params.dpo["enabled"],
        generations=dict(zip(snakemake.params.stages, snakemake.input.generations)),
        tasks_path=snakemake.params.tasks["path"],
        out_path=snakemake.output.submission,
        choice_path=snakemake.output.choice,
        scores_path=snakemake.input.scores[0] if snakemake.input.scores else None,
        allow_empty=snakemake.params.submission["allow_empty"],
    )
