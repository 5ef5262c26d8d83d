"""Build the tiny Llama from a config and pretrain it briefly on the pretrain sources."""

from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.model.base_model import pretrain_base
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    pretrain_base(
        tokenizer_dir=snakemake.input.tokenizer,
        text_paths=list(snakemake.input.texts),
        build=snakemake.params.base_model["build"],
        seed=snakemake.params.seed,
        out_dir=snakemake.output.model,
        threads=snakemake.threads,
    )
