"""`tunesmith`: commands around the Snakemake workflow (the workflow itself runs with `snakemake`)."""

from __future__ import annotations

import argparse
import sys

import yaml

from tunesmith.recipe import RecipeError, load_recipe


def validate(args) -> int:
    """Check a recipe against the schema; print it with every default filled in."""
    try:
        recipe = load_recipe(args.recipe, check_files=True)
    except (RecipeError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    if args.show:
        yaml.safe_dump(recipe, sys.stdout, allow_unicode=True, sort_keys=False)
    else:
        print(f"{args.recipe}: valid")
    return 0


def show_lineage(args) -> int:
    """Walk back from an artifact (e.g. submission.jsonl) to the data and settings that made it."""
    from tunesmith.manifest import LineageError, lineage

    try:
        print("\n".join(lineage(args.target, task_id=args.task_id, root=args.root)))
    except LineageError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def explain_rebuild(args) -> int:
    """Say which targets a build would rerun, and the recipe key or input file that causes each."""
    from tunesmith.explain import explain

    try:
        print("\n".join(explain(args.configfile, args.targets, root=args.directory)))
    except (RecipeError, RuntimeError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunesmith", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help=validate.__doc__)
    check.add_argument("recipe", help="recipe YAML file")
    check.add_argument("--show", action="store_true", help="print the recipe with defaults filled in")
    check.set_defaults(run=validate)
    trace = commands.add_parser("lineage", help=show_lineage.__doc__)
    trace.add_argument("target", help="an artifact path, as written by the workflow (e.g. submission.jsonl)")
    trace.add_argument("--task-id", type=int, help="also show what each stage holds about this task")
    trace.add_argument("--root", default=".", help="the workflow's working directory")
    trace.set_defaults(run=show_lineage)
    why = commands.add_parser("explain", help=explain_rebuild.__doc__)
    why.add_argument("targets", nargs="*", help="targets, as for snakemake (default: the workflow's)")
    why.add_argument("--configfile", help="the recipe (default: recipes/default.yaml)")
    why.add_argument("--directory", default=".", help="the workflow's working directory")
    why.set_defaults(run=explain_rebuild)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
