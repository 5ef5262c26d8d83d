"""LoRA SFT on the curated SFT data, on top of the continued-pretraining adapter if any."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.training.launcher import run_distributed
from tunesmith.training.tracking import run_of
from tunesmith.training.train import train_sft
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
    run_distributed(
        train_sft,
        distributed=snakemake.params.distributed,
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        template_section=snakemake.params.template,
        sft=snakemake.params.sft,
        dataset_path=snakemake.input.dataset,
        seed=snakemake.params.seed,
        out_dir=snakemake.output.adapter,
        threads=snakemake.threads,
        tracking=run_of(snakemake, "sft"),
        base_adapters=list(snakemake.input.base_adapters),
    )
