# The embedded default's tiny base model; unused when the recipe's base_model.path names a model.


rule train_tokenizer:
    input:
        texts=source_paths("pretrain"),
    output:
        tokenizer=directory("results/base_model/tokenizer"),
    log:
        "logs/train_tokenizer.log",
    params:
        vocab_size=config["base_model"]["build"]["vocab_size"],
    script:
        "../scripts/train_tokenizer.py"


rule pretrain_base:
    input:
        tokenizer=rules.train_tokenizer.output.tokenizer,
        texts=source_paths("pretrain"),
    output:
        model=directory("results/base_model/model"),
    log:
        "logs/pretrain_base.log",
    params:
        build=config["base_model"]["build"],
        seed=config["seed"],
    threads: workflow.cores
    resources:
        gpu=1,
    script:
        "../scripts/pretrain_base.py"
