# Snapshots of the models the recipe names (issue 14), made where the network is: fetch_model is a
# localrule, so under a cluster profile it runs on the submitting (login) node, and compute jobs load
# the snapshot with the hub switched off. `snakemake fetch_models` fetches them all ahead of a run.


rule fetch_model:
    input:
        files=fetch_inputs,
    output:
        model=directory("results/models/{key}/model"),
        record="results/models/{key}/snapshot.json",
    log:
        "logs/fetch_model/{key}.log",
    params:
        path=setting("path"),
        revision=setting("revision"),
        recipe_key=fetch_recipe_key,
    wildcard_constraints:
        key=KEY,
    localrule: True
    script:
        "../scripts/fetch_model.py"


rule fetch_models:
    input:
        WORKFLOW.fetch_targets(),
    localrule: True
