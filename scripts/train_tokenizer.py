"""Train the tiny model's byte-level BPE tokenizer on the pretrain sources."""

from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.model.base_model import train_tokenizer
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
with recorded(snakemake, job_label(snakemake)):
    train_tokenizer(
        text_paths=list(snakemake.input.texts),
        vocab_size=snakemake.params.base_model["build"]["vocab_size"],
        out_dir=snakemake.output.tokenizer,
    )
