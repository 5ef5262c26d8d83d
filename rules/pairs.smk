# On-policy preference pairs (issue 20, tunesmith.training.on_policy): the SFT model's sampled answers, in pairs.shards
# jobs; their grades, in as many jobs (cached per answer under PAIRS_CACHE, so a rebuild grades only new
# answers); the pairs, which curate_data reads as the preference source `on_policy`. The shard count is in
# the paths, not in the keys: the answers are the same however the prompts are split.
PAIRS_CACHE = "results/pairs_cache"


rule sample_answers:
    input:
        base_model_input,
        adapters=pairs_sft_adapter,
        prompts=pairs_prompts,
    output:
        samples="results/pairs_samples/{key}/{shard}-of-{shards}.jsonl",
    log:
        "logs/sample_answers/{key}/{shard}-of-{shards}.log",
    params:
        base_path=base_model_path,
        base_model=setting("base_model"),
        template=setting("template"),
        seed=setting("seed"),
        pairs=setting("pairs"),
        generate=setting("generate"),
        curate=setting("curate"),
        sft_key=lambda wildcards: step(wildcards).upstream["sft"],
        cache=lambda wildcards: f"{PAIRS_CACHE}/samples/{wildcards.key}",
    wildcard_constraints:
        key=KEY,
        shard=r"\d+",
        shards=r"\d+",
    threads: lambda wildcards: max(1, workflow.cores // int(wildcards.shards))
    resources:
        gpu=1,
    script:
        "../scripts/sample_answers.py"


rule grade_answers:
    input:
        samples=pairs_samples,
        template=pairs_judge_input("template"),
        judge_model=pairs_judge_input("model"),
    output:
        graded="results/pairs_graded/{key}/{shard}-of-{shards}.jsonl",
    log:
        "logs/grade_answers/{key}/{shard}-of-{shards}.log",
    params:
        pairs=setting("pairs"),
        judge=pairs_judge_settings,
        seed=lambda wildcards: step(wildcards).settings.get("seed", 0),
        cache=f"{PAIRS_CACHE}/grades",
    wildcard_constraints:
        key=KEY,
        shard=r"\d+",
        shards=r"\d+",
    # A local judge model holds a GPU and its share of the cores; references and an endpoint need neither.
    threads: lambda wildcards: max(1, workflow.cores // int(wildcards.shards)) if pairs_judge_is_local(wildcards) else 1
    resources:
        gpu=lambda wildcards: 1 if pairs_judge_is_local(wildcards) else 0,
    script:
        "../scripts/grade_answers.py"


rule build_pairs:
    input:
        graded=pairs_graded,
    output:
        pairs="results/pairs/{key}/pairs.jsonl",
        quarantine="results/pairs/{key}/quarantine.jsonl",
        summary="results/pairs/{key}/summary.json",
        ingested="results/pairs/{key}/pairs.parquet",
    log:
        "logs/build_pairs/{key}.log",
    params:
        pairs=setting("pairs"),
    wildcard_constraints:
        key=KEY,
    script:
        "../scripts/build_pairs.py"
