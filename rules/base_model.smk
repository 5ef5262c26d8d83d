# The embedded default's tiny base model; unused when the recipe's base_model.path names a model.


rule train_tokenizer:
    input:
        texts=step_sources,
    output:
        tokenizer=directory("results/tokenizer/{key}"),
    log:
        "logs/train_tokenizer/{key}.log",
    params:
        base_model=setting("base_model"),
        sources=setting("sources"),
    wildcard_constraints:
        key=KEY,
    script:
        "../scripts/train_tokenizer.py"


rule pretrain_base:
    input:
        tokenizer=tokenizer,
        texts=step_sources,
    output:
        model=directory("results/base_model/{key}"),
    log:
        "logs/pretrain_base/{key}.log",
    params:
        base_model=setting("base_model"),
        seed=setting("seed"),
        sources=setting("sources"),
    wildcard_constraints:
        key=KEY,
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/pretrain_base.py"
