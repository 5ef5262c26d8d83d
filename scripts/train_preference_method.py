"""The preference stage (dpo.method: DPO, ORPO, SimPO or KTO) on the curated preference data, on top of the
frozen SFT adapter. Tracking settings come from the workflow config, not params: tracking cannot change the
weights, and a changed param would rerun the job."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.training.launcher import run_distributed
from tunesmith.training.tracking import run_of
from tunesmith.training.train import train_dpo
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
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
        tracking=run_of(snakemake, "dpo"),
        base_adapters=list(snakemake.input.base_adapters),
    )
