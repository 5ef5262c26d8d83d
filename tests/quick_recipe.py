"""A recipe like the given one with a few training steps per stage, for tests that check how the workflow
runs (determinism, the Slurm profile) rather than what the default learns: python tests/quick_recipe.py IN OUT"""

import sys

import yaml

QUICK = {("base_model", "build", "pretrain_steps"): 20, ("sft", "max_steps"): 12, ("dpo", "max_steps"): 6}


def quick_recipe(source: str, target: str) -> str:
    with open(source, encoding="utf-8") as file:
        recipe = yaml.safe_load(file)
    for path, value in QUICK.items():
        node = recipe
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    with open(target, "w", encoding="utf-8") as file:
        yaml.safe_dump(recipe, file, allow_unicode=True, sort_keys=False)
    return target


if __name__ == "__main__":
    quick_recipe(sys.argv[1], sys.argv[2])
