"""Sample on-policy answers to one shard of the prompts with the SFT model (tunesmith.training.on_policy)."""

from tunesmith.hub.fetch import hub_offline
from tunesmith.jobs.logs import log_to
from tunesmith.jobs.manifest import recorded
from tunesmith.training.on_policy import sample_answers
from tunesmith.workflow import job_label

log_to(snakemake.log[0])
hub_offline()  # the base model is a fetched snapshot; compute nodes may have no network
with recorded(snakemake, job_label(snakemake)):
    sample_answers(
        base_path=snakemake.params.base_path,
        base_section=snakemake.params.base_model,
        adapter=snakemake.input.adapters[0],  # the SFT stage's one adapter folder
        template_section=snakemake.params.template,
        settings=snakemake.params.pairs,
        generate=snakemake.params.generate,
        seed=snakemake.params.seed,
        shard=int(snakemake.wildcards.shard),
        shards=int(snakemake.wildcards.shards),
        out_path=snakemake.output.samples,
        cache_dir=snakemake.params.cache,
        sft_key=snakemake.params.sft_key,
        curated_sft=snakemake.input.prompts,
        threads=snakemake.threads,
        normalize_prompts=snakemake.params.curate["normalize_training_text"],
    )
