"""Stage an adapter chain or a merged export with its model card: what a push uploads."""

from tunesmith.hub.hub import stage_model
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    stage_model(
        kind=snakemake.wildcards.kind,
        stage=snakemake.wildcards.stage,
        sources=list(snakemake.input.sources),
        sections=snakemake.params.sections,
        data_cards={role: snakemake.input[role] for role in ("sft", "preference") if role in snakemake.input.keys()},
        scores_path=snakemake.input.scores or None,
        record_path=snakemake.input.record or None,
        publish=snakemake.params.publish,
        out_dir=snakemake.output.folder,
    )
