"""The run's summary for the report: its first page, every task's answers beside the reference, and the
data cards and evaluation as pages."""

from tunesmith.evaluation.summary import write_summary
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
stage, reason = snakemake.params.submitted
with recorded(snakemake, job_label(snakemake)):
    write_summary(
        files=snakemake.params.files,
        stage=stage,
        reason=reason,
        summary_path=snakemake.output.summary,
        start_page_path=snakemake.output.start_page,
        answers_path=snakemake.output.answers,
        recipe=snakemake.params.recipe,
        cards_folder=snakemake.output.cards,
        evaluation_path=snakemake.output.evaluation,
    )
