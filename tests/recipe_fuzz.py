"""Mutations of the shipped recipes, each with the verdict a correct validator must give.

Used by tests/test_recipe_fuzz.py, and runnable on its own to count verdicts over every mutation:

    python tests/recipe_fuzz.py [--workflow-sample N] [--src OTHER_CHECKOUT/src]

which ends with `RESULT recipe_fuzz tried=... wrongly_accepted=... wrongly_rejected=... tracebacks=...
hangs=... workflow_disagreements=...`. With --src it judges another checkout's validator (the counts
before a change). Each mutation is judged in-process by `tunesmith validate FILE` (the CLI's own
function, in a working directory that has the shipped data), with a 10-second alarm as the hang bound;
a sample is also planned by `snakemake -n`, whose verdict must agree.

Expectations come from the schema's declared types and ranges (an integer key takes only ints, a
number key only finite numbers inside its documented range, strings their pattern and non-empty
where the schema says so) and from YAML rules (a key given twice, aliases past a bound, a YTE marker).
Keys that take part in cross-key rules get "either" for in-range values, since another key decides.
"""

from __future__ import annotations

import argparse
from collections import Counter
import contextlib
import copy
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("default.yaml", "llm-jp-3-13b-qlora.yaml", "sweep.yaml")
# Keys whose valid values can still be refused because of another key (tunesmith.config.recipe's cross-key rules).
CROSS_KEYS = re.compile(r"^(sources|base_model\.(path|quantization|build\.(hidden_size|num_attention_heads))|"
                        r"dpo\.enabled|judge\.(backend|openai\.(base_url|model)|local\.path)|continued_pretraining\.enabled|distributed|template\.(kind|prompt)|"
                        r"tasks|sweep|curate\.near_dedup\.(permutations|bands)|"
                        r"curate\.(tokens\.)?(min|max)_(prompt|response)|generate\.guards\.(min|max)_chars)")
HANG_SECONDS = 10


@dataclass(frozen=True)
class Mutation:
    name: str  # what was done, e.g. "float for integer"
    key: str  # the key path changed ("" for the whole document)
    text: bytes  # the mutated recipe file
    expect: str  # "reject", "accept" or "either"


def _schema():
    from tunesmith.config.recipe import load_schema

    return load_schema()


def _types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    return set([kind] if isinstance(kind, str) else kind)


def leaves(value, schema: dict, path: tuple = ()):
    """(key path, leaf schema) of every value in a filled recipe; lists of scalars count as leaves."""
    if isinstance(value, dict) and "properties" in schema:
        for name, item in value.items():
            if name in schema["properties"]:
                yield from leaves(item, schema["properties"][name], (*path, name))
        return
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict) and "properties" in items:
        for index, item in enumerate(value):
            yield from leaves(item, items, (*path, index))
        return
    if "additionalProperties" in schema and isinstance(value, dict) and "properties" not in schema:
        yield path, schema  # sweep.matrix: a map, mutated as a whole
        return
    yield path, schema


def dotted(path: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def _put(document: dict, path: tuple, value) -> dict:
    node = document
    for part in path[:-1]:
        if isinstance(part, int):
            node = node[part]
        else:
            node = node.setdefault(part, {})
    node[path[-1]] = value
    return document


def _dump(document) -> bytes:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False).encode("utf-8")


def value_mutations(schema: dict, current) -> list[tuple[str, object, str]]:
    """(name, value, expected verdict) for one leaf."""
    types, found = _types(schema), []
    samples = {"string": "x", "integer": 7, "number": 7.5, "boolean": True, "null": None, "array": [1],
               "object": {"a": 1}}
    allowed = set(types) | ({"integer"} if "number" in types else set())
    for kind, sample in samples.items():
        if kind not in allowed:
            if kind == "string" and "enum" in schema:
                continue  # covered below
            found.append((f"{kind} for {'/'.join(sorted(types))}", sample, "reject"))
    numeric = types & {"integer", "number"}
    if numeric:
        if "integer" in types:
            found.append(("integral float for integer", float(current if type(current) is int else 1), "reject"))
            found.append(("integer past 64 bits", 2**70, "reject"))
            found.append(("huge integer", 10**15, "reject"))
        for special in (math.nan, math.inf, -math.inf):
            found.append((f"{special} for number", special, "reject"))
        if "number" in types:
            found.append(("huge number", 1e30, "reject"))
        if "minimum" in schema:
            found.append(("below minimum", schema["minimum"] - 1, "reject"))
            found.append(("at minimum", schema["minimum"], "accept"))
        if "exclusiveMinimum" in schema:
            found.append(("at exclusive minimum", schema["exclusiveMinimum"], "reject"))
        if "maximum" in schema:
            found.append(("above maximum", schema["maximum"] + 1, "reject"))
            found.append(("at maximum", schema["maximum"], "accept"))
    if "enum" in schema:
        found.append(("not in enum", "bogus-choice", "reject"))
        found += [(f"enum value {choice!r}", choice, "accept") for choice in schema["enum"]]
    if "string" in types and "enum" not in schema:
        if "pattern" in schema:
            found.append(("pattern with trailing newline", "abc\n", "reject"))
        if schema.get("minLength"):
            found.append(("empty string", "", "reject"))
    if "array" in types:
        items = schema.get("items", {})
        if schema.get("minItems"):
            found.append(("empty list", [], "reject"))
        if _types(items) == {"string"}:
            found.append(("list of a number", [3], "reject"))
            if items.get("minLength"):
                found.append(("list of an empty string", [""], "reject"))
    if "default" in schema and "object" not in types:
        found.append(("the default", schema["default"], "accept"))
    return found


def mutations(recipe_name: str) -> list[Mutation]:
    from tunesmith.config.recipe import validate_recipe

    text = (REPO / "recipes" / recipe_name).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    filled = validate_recipe(yaml.safe_load(text))
    schema = _schema()
    found: list[Mutation] = []
    for path, leaf in leaves(filled, schema):
        key = dotted(path)
        cross = bool(CROSS_KEYS.match(key))
        for name, value, expect in value_mutations(leaf, _get(filled, path)):
            if expect == "accept" and cross:
                expect = "either"
            found.append(Mutation(name, key, _dump(_put(copy.deepcopy(raw), path, value)), expect))
    objects = [(), *{path[:index] for path, _ in leaves(filled, schema) for index in range(1, len(path))}]
    for path in sorted(objects, key=dotted):
        node = _get(filled, path)
        if not isinstance(node, dict) or dotted(path) == "sweep.matrix":
            continue
        document = copy.deepcopy(raw)
        _put(document, (*path, "bogus_key"), 1) if path else document.update(bogus_key=1)
        found.append(Mutation("unknown key", dotted(path), _dump(document), "reject"))
        for name in node:
            typo = name[:-1]
            if len(name) > 3 and typo not in node:
                # The misspelt key holds the value the recipe means (filled in where the file omits it).
                document = copy.deepcopy(raw)
                _put(document, (*path, typo), copy.deepcopy(node[name]))
                found.append(Mutation("misspelt key", dotted((*path, name)), _dump(document), "reject"))
    found += document_mutations(text, raw)
    found += yaml11_mutations(raw, filled, schema) + path_mutations(raw, filled) + sweep_mutations(raw, filled, schema)
    return found


# ---- issue 19's families: YAML 1.1 forms, special files, NUL and over-long paths, sweeps -------------

RAW = "__raw_scalar__"
FIFO = "fifo.jsonl"  # made by scratch_directory: a named pipe a reader would wait on for ever


def _raw(raw: dict, path: tuple, text: str) -> bytes:
    """The recipe with the plain (unquoted) scalar `text` at `path`, as a person would type it."""
    return _dump(_put(copy.deepcopy(raw), path, RAW)).replace(RAW.encode(), text.encode("utf-8"))


def yaml11_mutations(raw: dict, filled: dict, schema: dict) -> list[Mutation]:
    """Forms YAML 1.1 and 1.2 read differently: a number in e-notation without a dot (1.2: the
    number), sexagesimal 1:30, yes/on, 0b101 and 1_000 (1.2: text, refused where a number or a
    boolean belongs), 0o and 0x integers (1.2: the integer), a date (1.2: text)."""
    found, integers, booleans = [], 0, 0
    for path, leaf in leaves(filled, schema):
        key, types, current = dotted(path), _types(leaf), _get(filled, path)
        cross = bool(CROSS_KEYS.match(key))
        integers += "integer" in types and type(current) is int
        booleans += types == {"boolean"}
        if "number" in types and type(current) is float and current > 0 and "enum" not in leaf:
            found.append(Mutation("e-notation without a dot", key, _raw(raw, path, f"{current:e}".replace(".000000", "")),
                                  "either" if cross else "accept"))
        if "integer" in types and type(current) is int and current >= 0:
            found.append(Mutation("sexagesimal", key, _raw(raw, path, f"{current // 60}:{current % 60:02d}"), "reject"))
        if "integer" in types and type(current) is int and current >= 0 and integers % 4 == 1:  # a sample: 1 in 4
            found.append(Mutation("underscored integer", key, _raw(raw, path, f"{current}_0"), "reject"))
            found.append(Mutation("binary integer", key, _raw(raw, path, "0b1"), "reject"))
            if current <= leaf.get("maximum", current) and current >= leaf.get("minimum", current):
                found.append(Mutation("hexadecimal integer", key, _raw(raw, path, hex(current)),
                                      "either" if cross else "accept"))
                found.append(Mutation("0o octal integer", key, _raw(raw, path, oct(current)),
                                      "either" if cross else "accept"))
        if types == {"boolean"}:
            for text in ("yes", "on") if booleans % 3 else ("yes", "no", "on", "off", "Y"):
                found.append(Mutation(f"YAML 1.1 boolean {text}", key, _raw(raw, path, text), "reject"))
        if "string" in types and "enum" not in leaf and "pattern" not in leaf and not CROSS_KEYS.match(key) \
                and key.startswith(("publish.license", "tracking.project")):
            found.append(Mutation("date-like text", key, _raw(raw, path, "2024-01-01"), "accept"))
    return found


def _path_keys(filled: dict) -> list[tuple]:
    return [("sources", index, "path") for index in range(len(filled["sources"]))] + [
        ("tasks", "path"), ("tasks", "references")]


def path_mutations(raw: dict, filled: dict) -> list[Mutation]:
    """Files that are not data (/proc, /sys, /dev, a FIFO, a link into /proc), a model folder that holds
    no model, and paths no file system takes (NUL, a 6,000-character name, 5,000 bytes of folders)."""
    found = []
    hostile = {"special file /proc/self/environ": "/proc/self/environ", "special file glob /proc/*/environ":
               "/proc/*/environ", "special file /dev/zero": "/dev/zero", "special file /dev/stdin": "/dev/stdin",
               "special file /sys": "/sys/kernel", "special file FIFO": FIFO, "link into /proc": "environ.jsonl",
               "NUL in a path": "data/x\0.jsonl", "over-long name": "data/" + "x" * 6000 + ".jsonl",
               "over-long path": "data/" + "/".join(["y" * 200] * 25) + ".jsonl"}
    for path in _path_keys(filled):
        for name, value in hostile.items():
            found.append(Mutation(name, dotted(path), _dump(_put(copy.deepcopy(raw), path, value)), "reject"))
    for name, value in {"model path /etc": "/etc", "model path /proc/self": "/proc/self",
                        "model path NUL": "a\0b", "model path a file": "data/tasks.jsonl"}.items():
        document = _put(copy.deepcopy(raw), ("base_model", "path"), value)
        document.get("base_model", {}).pop("build", None)
        found.append(Mutation(name, "base_model.path", _dump(document), "reject"))
    return found


def sweep_mutations(raw: dict, filled: dict, schema: dict) -> list[Mutation]:
    """A sweep over each string key of a section (list items excluded: a matrix key is dotted names),
    between its value and one with braces, a slash, a newline and Japanese: whatever validate says,
    the workflow must say the same (variant names safe whatever the values)."""
    found = []
    for path, leaf in leaves(filled, schema):
        if any(isinstance(part, int) for part in path) or len(path) < 2 or path[0] == "sweep":
            continue
        current = _get(filled, path)
        if "string" not in _types(leaf) or not isinstance(current, str):
            continue
        hostile = current + " {input}/{output} {}\n指示"
        document = copy.deepcopy(raw)
        document["sweep"] = {"matrix": {dotted(path): [current, hostile]}}
        found.append(Mutation("sweep over a string key", dotted(path), _dump(document), "either"))
    return found


def _get(document, path: tuple):
    for part in path:
        document = document[part]
    return document


def document_mutations(text: str, raw: dict) -> list[Mutation]:
    """Mutations of the file as text: YAML features a recipe must not use, and some it may."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi"))
    matrix = "".join(f"    generate.{key}: [1, 2, 3, 4]\n" for key in ("batch_size", "max_new_tokens"))
    matrix += "".join(f"    {key}: [1, 2, 3, 4]\n" for key in ("sft.lora.r", "dpo.lora.r", "sft.lora.lora_alpha"))
    first_section = next(key for key in raw if isinstance(raw[key], dict))
    cases = [
        ("duplicate top-level key", text + "seed: 7\n" if "seed" in raw else text + "seed: 1\nseed: 7\n", "reject"),
        ("duplicate section", text + f"{first_section}: {{}}\n", "reject"),
        ("YTE template", "__use_yte__: true\n" + text.replace("seed:", "seed: ?__import__('pathlib').Path("
                                                              "'yte-marker').touch() or 42\nunused_seed:", 1), "reject"),
        ("alias bomb", text + bomb, "reject"),
        ("sweep bomb", text.split("\nsweep:")[0] + "\nsweep:\n  matrix:\n" + matrix, "reject"),
        ("tab indentation", text.replace("\n  ", "\n\t", 1), "reject"),
        ("deep nesting", text + "x: " + "[" * 300 + "]" * 300 + "\n", "reject"),
        ("top level is a list", "- " + text.replace("\n", "\n  "), "reject"),
        ("empty file", "", "reject"),
        ("a comment edited", text.replace("#", "# edited:", 1), "accept"),
    ]
    found = [Mutation(name, "", body.encode("utf-8"), expect) for name, body, expect in cases]
    found.append(Mutation("invalid UTF-8", "", text.encode("utf-8") + b"\n# \xff\xfe\n", "reject"))
    found.append(Mutation("overlong UTF-8", "", b"seed: \xc0\xb1\n" + text.encode("utf-8"), "reject"))
    return found


# ---- judging ---------------------------------------------------------------------------------------

class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def verdict(path: Path) -> str:
    """accepted / rejected / traceback: <exception> / hang, from `tunesmith validate PATH` in-process."""
    from tunesmith.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(path)])
    except Hang:
        return "hang"
    except BaseException as error:  # anything but a verdict is a traceback for the user
        return f"traceback: {type(error).__name__}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if code == 0:
        return "accepted"
    message = err.getvalue()
    return "rejected" if "Traceback" not in message else "traceback: printed"


def workflow_verdict(path: Path, work: Path) -> str:
    """accepted / rejected / traceback / hang from `snakemake -n` with the recipe."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-q", "--directory",
               str(work), "--config", f"recipe={path}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "hang"
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "accepted"
    return "traceback" if "Traceback" in output else "rejected"


def scratch_directory() -> Path:
    """A working directory with the shipped data, where recipes' relative paths resolve."""
    work = Path(tempfile.mkdtemp(prefix="tunesmith-fuzz-"))
    (work / "data").symlink_to(REPO / "data")
    os.mkfifo(work / FIFO)
    (work / "environ.jsonl").symlink_to("/proc/self/environ")
    return work


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow-sample", type=int, default=40, help="mutations also planned by snakemake -n")
    parser.add_argument("--src", help="judge this checkout's package instead (e.g. the code before a change)")
    args = parser.parse_args(argv)
    # Made by this checkout's schema (the intent), so that two validators are judged on the same cases.
    all_mutations = [mutation for name in RECIPES for mutation in mutations(name)]
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
        for name in [name for name in sys.modules if name.startswith("tunesmith")]:
            del sys.modules[name]
    work = scratch_directory()
    from conftest import fake_hub_cache  # offline (as tests run), a hub id validates only when cached
    from huggingface_hub import constants

    os.environ["HF_HUB_CACHE"] = constants.HF_HUB_CACHE = str(fake_hub_cache(work))
    counts = {"tried": 0, "wrongly_accepted": 0, "wrongly_rejected": 0, "tracebacks": 0, "hangs": 0,
              "workflow_disagreements": 0}
    problems = []
    os.chdir(work)
    step = max(1, len(all_mutations) // max(1, args.workflow_sample))
    for index, mutation in enumerate(all_mutations):
        path = work / f"mutant-{index}.yaml"
        path.write_bytes(mutation.text)
        found = verdict(path)
        counts["tried"] += 1
        wrong = ((mutation.expect == "reject" and found == "accepted")
                 or (mutation.expect == "accept" and found == "rejected"))
        if found.startswith("traceback"):
            counts["tracebacks"] += 1
        elif found == "hang":
            counts["hangs"] += 1
        elif wrong:
            counts["wrongly_accepted" if found == "accepted" else "wrongly_rejected"] += 1
        if wrong or found.startswith("traceback") or found == "hang":
            problems.append(f"{found:>20}  {mutation.name} at {mutation.key or '(document)'}")
        sampled = index % step == 0 or mutation.name == "sweep over a string key"
        if sampled and not args.src and found in ("accepted", "rejected"):
            flow = workflow_verdict(path, work)
            if flow != found:
                counts["workflow_disagreements"] += 1
                problems.append(f"workflow says {flow}, validate {found}: {mutation.name} at {mutation.key}")
        path.unlink()
    if (work / "yte-marker").exists():
        problems.append("a YTE expression ran")
    shutil.rmtree(work, ignore_errors=True)
    for line in problems[:60]:
        print(line)
    if len(problems) > 60:
        print(f"... and {len(problems) - 60} more")
    kinds = Counter(line.split(" at ")[0].strip() for line in problems)
    print("\nby kind:\n" + "\n".join(f"{count:6d}  {kind}" for kind, count in kinds.most_common()))
    tried = Counter(mutation.name for mutation in all_mutations)
    print("\ntried by mutation:\n" + "\n".join(f"{count:6d}  {name}" for name, count in sorted(tried.items())))
    print("RESULT recipe_fuzz " + " ".join(f"{key}={value}" for key, value in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
