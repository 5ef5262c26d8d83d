"""LoRA continued pretraining of the base model on the raw text of the pretrain sources."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.training.launcher import run_distributed
from tunesmith.training.tracking import run_of
from tunesmith.training.train import train_cpt
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
    run_distributed(
        train_cpt,
        distributed=snakemake.params.distributed,
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        cpt=snakemake.params.continued_pretraining,
        text_paths=list(snakemake.input.texts),
        seed=snakemake.params.seed,
        out_dir=snakemake.output.adapter,
        threads=snakemake.threads,
        tracking=run_of(snakemake, "cpt"),
    )
