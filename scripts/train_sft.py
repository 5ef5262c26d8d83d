"""LoRA SFT on the curated SFT data, of the base merged with the continued-pretraining adapter if any."""

from tunesmith.logs import log_to
from tunesmith.manifest import recorded
from tunesmith.train import train_sft

log_to(snakemake.log[0])
with recorded(snakemake, "sft"):
    train_sft(
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        template_section=snakemake.params.template,
        sft=snakemake.params.sft,
        dataset_path=snakemake.input.dataset,
        seed=snakemake.params.seed,
        out_dir=snakemake.output.adapter,
        threads=snakemake.threads,
        base_adapters=list(snakemake.input.base_adapters),
        distributed=snakemake.params.distributed,
    )
