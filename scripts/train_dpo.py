"""DPO on the curated preference data, on top of the frozen SFT adapter, with the SFT model as reference."""

from tunesmith.fetch import hub_offline
from tunesmith.launcher import run_distributed
from tunesmith.logs import log_to
from tunesmith.manifest import recorded
from tunesmith.train import train_dpo

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, "dpo"):
    run_distributed(
        train_dpo,
        distributed=snakemake.params.distributed,
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        template_section=snakemake.params.template,
        dpo=snakemake.params.dpo,
        dataset_path=snakemake.input.dataset,
        sft_adapter=snakemake.input.sft_adapter,
        seed=snakemake.params.seed,
        out_dir=snakemake.output.adapter,
        threads=snakemake.threads,
        base_adapters=list(snakemake.input.base_adapters),
    )
