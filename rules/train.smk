# Tracking (the recipe's `tracking`) reaches the training scripts through the workflow config, not params: it
# cannot change the weights, and Snakemake reruns a job whose params changed. The stage table declares the
# keys each training job reads of it (plan.Stage.unkeyed), and tunesmith.training.tracking.run_of reads those.


rule train_cpt:
    input:
        base_model_input,
        texts=step_sources,
    output:
        adapter=report(
            directory("results/cpt/{key}/adapter"),
            patterns=["training_{name}.png", "training_{name}.csv"],
            category="Training curves",
            subcategory="cpt",
            caption="../report/curves.rst",
        ),
    log:
        "logs/train_cpt/{key}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        seed=setting("seed"),
        continued_pretraining=setting("continued_pretraining"),
        distributed=setting("distributed"),
        sources=setting("sources"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=training_resource("gpu"),
        nodes=training_resource("nodes"),
        tasks=training_resource("tasks"),
        tasks_per_gpu=training_resource("tasks_per_gpu"),
        gres=training_resource("gres"),
        mpi=training_resource("mpi"),
    script:
        "../scripts/train_cpt.py"


rule train_sft:
    input:
        base_model_input,
        dataset=curated,
        base_adapters=base_adapters,
    output:
        adapter=report(
            directory("results/sft/{key}/adapter"),
            patterns=["training_{name}.png", "training_{name}.csv"],
            category="Training curves",
            subcategory="sft",
            caption="../report/curves.rst",
        ),
    log:
        "logs/train_sft/{key}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
        seed=setting("seed"),
        sft=setting("sft"),
        distributed=setting("distributed"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=training_resource("gpu"),
        nodes=training_resource("nodes"),
        tasks=training_resource("tasks"),
        tasks_per_gpu=training_resource("tasks_per_gpu"),
        gres=training_resource("gres"),
        mpi=training_resource("mpi"),
    script:
        "../scripts/train_sft.py"


# The preference stage (recipe section `dpo`): DPO, ORPO, SimPO or KTO, as dpo.method says.
rule train_preference_method:
    input:
        base_model_input,
        dataset=curated,
        sft_adapter=sft_adapter,
        base_adapters=base_adapters,
    output:
        adapter=report(
            directory("results/dpo/{key}/adapter"),
            patterns=["training_{name}.png", "training_{name}.csv"],
            category="Training curves",
            subcategory="dpo",
            caption="../report/curves.rst",
        ),
    log:
        "logs/train_preference_method/{key}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
        seed=setting("seed"),
        dpo=setting("dpo"),
        distributed=setting("distributed"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=training_resource("gpu"),
        nodes=training_resource("nodes"),
        tasks=training_resource("tasks"),
        tasks_per_gpu=training_resource("tasks_per_gpu"),
        gres=training_resource("gres"),
        mpi=training_resource("mpi"),
    script:
        "../scripts/train_preference_method.py"


# A standalone merged model of the recipe's SFT or DPO stage: `snakemake results/export/dpo`. The merge
# runs on the CPU in the recipe's dtype (exact; a 13B model never has to fit a GPU).
rule export_model:
    input:
        base_model_input,
        adapter=adapter_chain,
    output:
        model=directory("results/export/{stage}"),
    log:
        "logs/export_model/{stage}.log",
    params:
        base_path=base_model_path,
        base_model=lambda wildcards: WORKFLOW.export_settings("base_model"),
        template=lambda wildcards: WORKFLOW.export_settings("template"),
    wildcard_constraints:
        stage="sft|dpo",
    threads: workflow.cores
    script:
        "../scripts/export_model.py"
