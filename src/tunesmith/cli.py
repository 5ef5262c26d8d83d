"""`tunesmith`: commands around the Snakemake workflow (the workflow itself runs with `snakemake`)."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from tunesmith.config.recipe import RecipeError, load_recipe_and_variants, parse_overrides


def shown_recipe(recipe: dict) -> dict:
    """The recipe as `validate --show` prints it: every default filled in, except a source's null
    `columns` entries (null means "the style's own column name", a dozen lines per source that say
    nothing); its other nulls are settings (max_rows: no cap, base_model.path: the tiny model) and stay."""
    shown = dict(recipe)
    shown["sources"] = [{**source, "columns": {name: column for name, column in source["columns"].items()
                                               if column is not None}}
                        for source in recipe["sources"]]
    return shown


def validate(args) -> int:
    """Check a recipe exactly as the workflow does (schema, cross-key rules, sweep variants, and the
    files it names, relative to the current directory); print it with every default filled in."""
    try:
        recipe, sweep = load_recipe_and_variants(args.recipe, check_files=not args.no_files,
                                                 overrides=parse_overrides(args.set))
    except RecipeError as error:
        print(error, file=sys.stderr)
        return 1
    if args.show:
        yaml.safe_dump(shown_recipe(recipe), sys.stdout, allow_unicode=True, sort_keys=False)
    else:
        print(f"{args.recipe}: valid" + (f" ({len(sweep)} sweep variants)" if sweep else ""))
    return 0


def show_lineage(args) -> int:
    """Walk back from an artifact (e.g. submission.jsonl) to the data and settings that made it."""
    from tunesmith.lineage import LineageError, lineage, task_overview

    try:
        overview = [] if args.task_id is None else task_overview(args.target, args.task_id, root=args.root)
        print("\n".join(overview + lineage(args.target, task_id=args.task_id, root=args.root)))
    except LineageError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def explain_rebuild(args) -> int:
    """Say which targets a build would rerun, and the recipe key or input file that causes each."""
    from tunesmith.explain import explain

    try:
        print("\n".join(explain(args.recipe, args.targets, root=args.directory, snakefile=args.snakefile)))
    except (RecipeError, RuntimeError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def compare_runs(args) -> int:
    """Compare two finished runs (recipe files, sweep variant names or result keys): the rows each kept that the
    other quarantined, the rows each stage trained on, score deltas with paired tests, the answers that changed."""
    from tunesmith.evaluation.compare import CompareError, compare, summary_lines

    try:
        text, facts, target = compare(args.a, args.b, recipe=args.recipe, root=args.directory, out_path=args.out)
    except (CompareError, RecipeError, OSError) as error:
        print(error, file=sys.stderr)
        return 1
    print(text)
    print("\n".join(["Verdicts (B against A):", *summary_lines(facts), f"Written to {target}."]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunesmith", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help=validate.__doc__)
    check.add_argument("recipe", help="recipe YAML file")
    check.add_argument("--show", action="store_true",
                       help="print the recipe with defaults filled in (a source's unmapped, null columns left out)")
    check.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe key, as the workflow's --config set=KEY=VALUE[,KEY=VALUE...] does "
                            "(repeatable; e.g. --set sft.num_train_epochs=3)")
    check.add_argument("--no-files", action="store_true",
                       help="skip the checks of the files the recipe names (to check a recipe away from its data)")
    check.set_defaults(run=validate)
    trace = commands.add_parser("lineage", help=show_lineage.__doc__)
    trace.add_argument("target", help="an artifact path, as written by the workflow (e.g. submission.jsonl)")
    trace.add_argument("--task-id", type=int, help="first the task's input, reference, answer and whether it was correct, "
                       "then what each stage holds about it (an id the task file lacks is an error)")
    trace.add_argument("--root", default=".", help="the workflow's working directory")
    trace.set_defaults(run=show_lineage)
    why = commands.add_parser("explain", help=explain_rebuild.__doc__)
    why.add_argument("targets", nargs="*", help="targets, as for snakemake (default: the workflow's)")
    why.add_argument("--recipe", help="the recipe, as for snakemake's --config recipe=PATH "
                     "(default: the workflow's recipes/default.yaml)")
    why.add_argument("--directory", default=".", help="the workflow's working directory")
    why.add_argument("--snakefile", default="Snakefile", help="the workflow (default: ./Snakefile)")
    why.set_defaults(run=explain_rebuild)
    versus = commands.add_parser("compare", help=compare_runs.__doc__)
    versus.add_argument("a", help="run A: a recipe file, a sweep variant name (with --recipe) or a result key")
    versus.add_argument("b", help="run B, the same kinds")
    versus.add_argument("--recipe", help="the recipe whose sweep variants A and B may name")
    versus.add_argument("--directory", default=".", help="the workflow's working directory")
    versus.add_argument("--out", help="the page to write (default: results/compare/<A>_vs_<B>.md)")
    versus.set_defaults(run=compare_runs)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # `tunesmith validate --show | head`: the reader left; not an error of ours. Python would
        # complain again when it flushes stdout at exit, so point stdout at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
