"""Score each stage's answers: the judge's grades when a judge is configured, exact match and chrF
against the references when there are any (overall and per task family), the judge's agreement with
reference grades, and each stage's preference accuracy on the held-out pairs."""

from tunesmith.evaluation.evaluate import evaluate
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
judged = list(snakemake.input.judged)
with recorded(snakemake, job_label(snakemake)):
    evaluate(
        generations=dict(zip(snakemake.params.stages, snakemake.input.generations)),
        references_path=snakemake.input.references or None,  # one file is a str, none an empty list
        out_path=snakemake.output.scores,
        table_path=snakemake.output.table,
        tasks_path=snakemake.input.tasks,
        judged=dict(zip(snakemake.params.stages, judged)) if judged else None,
        judged_reference=snakemake.input.judged_reference or None,
        judge=snakemake.params.judge,
        seed=snakemake.params.seed,
        preferences=dict(zip(snakemake.params.preference_stages, snakemake.input.preferences)),
        confidence=snakemake.params.evaluate["confidence"],
        bootstrap_samples=snakemake.params.evaluate["bootstrap_samples"],
    )
