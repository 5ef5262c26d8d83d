"""`tunesmith compare` over seed replicates (tunesmith.evaluation.replicated): a single run's significant-looking difference
that the seed spread swamps, a large difference consistent across seeds, the two-level bootstrap against a
computation by hand, and the page with both sides' seeds or one side's only."""

import json
import statistics

import numpy as np
import pytest
import yaml

from conftest import REPO
from quick_recipe import quick_recipe
from tunesmith.config import plan
from tunesmith.config.recipe import replicates, validate_recipe
from tunesmith.evaluation import compare as compare_module
from tunesmith.evaluation import replicated
from tunesmith.evaluation.compare import compare, score_diff, summary_lines
from tunesmith.evaluation.evaluate import evaluate
from tunesmith.jobs.atomic import write_json, write_jsonl

TASKS = 60
REFERENCES = {i: f"答え{i}" for i in range(TASKS)}
SAMPLES = 1000


def right(share: float, offset: int) -> set[int]:
    """The tasks a seed gets right: a run of round(share × TASKS) tasks from `offset` (seeds differ in which)."""
    return {task for task in range(TASKS) if (task - offset) % TASKS < round(share * TASKS)}


def evaluation(folder, tasks_right: set[int]):
    """An eval.json of one seed's sft answers (right on `tasks_right`), as the workflow's evaluation writes it."""
    generations = folder / "sft.jsonl"
    write_jsonl(generations, [{"task_id": i, "output": REFERENCES[i] if i in tasks_right else f"違う{i % 3}"}
                              for i in REFERENCES])
    references = folder.parent.parent / "references.jsonl"
    if not references.exists():
        write_jsonl(references, [{"task_id": i, "output": text} for i, text in REFERENCES.items()])
    evaluate({"sft": generations}, references, folder / "eval.json", bootstrap_samples=SAMPLES)
    return folder / "eval.json"


def sides(tmp_path, first: tuple, second: tuple) -> tuple[dict, dict]:
    """Seeds 42, 43, 44 of A and of B, each seed's share right (A's seeds from offsets 0, 10, 20; B's 0, 25, 35)."""
    found = []
    for name, shares, offsets in (("a", first, (0, 10, 20)), ("b", second, (0, 25, 35))):
        found.append({seed: evaluation(tmp_path / "runs" / f"{name}{seed}", right(share, offset))
                      for seed, share, offset in zip((42, 43, 44), shares, offsets)})
    return found[0], found[1]


def by_hand(first: np.ndarray, second: np.ndarray, confidence: float, samples: int, seed: int) -> list[float]:
    """The two-level bootstrap written out draw by draw: each side's seeds resampled, the per-task mean over
    the drawn seeds, then the same tasks drawn for both sides and the means differenced."""
    rng = np.random.default_rng(seed)
    seeds_first = rng.integers(0, len(first), size=(samples, len(first)))
    seeds_second = rng.integers(0, len(second), size=(samples, len(second)))
    tasks = rng.integers(0, first.shape[1], size=(samples, first.shape[1]))
    differences = [second[seeds_second[draw]].mean(axis=0)[tasks[draw]].mean()
                   - first[seeds_first[draw]].mean(axis=0)[tasks[draw]].mean() for draw in range(samples)]
    tail = (1 - confidence) / 2 * 100
    return list(np.percentile(differences, [tail, 100 - tail]))


def exact_matrix(shares: tuple, offsets: tuple) -> np.ndarray:
    return np.array([[task in right(share, offset) for task in range(TASKS)] for share, offset in zip(shares, offsets)],
                    dtype=float)


def test_a_single_runs_significant_difference_that_the_seed_spread_swamps_is_within_noise(tmp_path):
    shares_a, shares_b = (0.30, 0.60, 0.45), (0.80, 0.50, 0.65)
    first, second = sides(tmp_path, shares_a, shares_b)
    # One run each (the own seeds, 30% against 80%): McNemar calls it better by far.
    single = score_diff(*[json.loads(side[42].read_text()) for side in (first, second)], 0.95, SAMPLES, 0)
    assert single["sft"]["overall"]["exact match"]["verdict"] == "better"
    assert single["sft"]["overall"]["exact match"]["p_value"] < 1e-6
    found = replicated.seed_scores(first, second, 0.95, SAMPLES, 0)["sft"]["overall"]
    exact = found["exact match"]
    assert (exact["a"], exact["b"]) == (pytest.approx(0.45), pytest.approx(0.65))  # pooled over seeds and tasks
    assert exact["verdict"] == "within noise" and exact["interval"][0] < -0.02 < 0.3 < exact["interval"][1]
    expected = by_hand(exact_matrix(shares_a, (0, 10, 20)), exact_matrix(shares_b, (0, 25, 35)), 0.95, SAMPLES, 0)
    assert exact["interval"] == pytest.approx(expected)
    # The tasks alone (every seed in every draw) would have excluded 0: it is the seeds' spread that widens it.
    per_task = exact_matrix(shares_b, (0, 25, 35)).mean(axis=0) - exact_matrix(shares_a, (0, 10, 20)).mean(axis=0)
    tasks_only = per_task[np.random.default_rng(0).integers(0, TASKS, size=(SAMPLES, TASKS))].mean(axis=1)
    assert np.percentile(tasks_only, 2.5) > 0.05
    # Each side's spread over its seeds, on the same tasks.
    assert exact["seeds"]["a"]["sd"] == pytest.approx(statistics.stdev(shares_a))
    assert (exact["seeds"]["b"]["min"], exact["seeds"]["b"]["max"]) == (pytest.approx(0.5), pytest.approx(0.8))
    assert exact["seeds"]["a"]["per_seed"] == {"42": pytest.approx(0.3), "43": pytest.approx(0.6),
                                               "44": pytest.approx(0.45)}
    assert found["chrF"]["verdict"] == "within noise" and found["chrF"]["seeds"]["a"]["runs"] == 3


def test_a_large_difference_consistent_across_seeds_is_better(tmp_path):
    shares_a, shares_b = (0.40, 0.42, 0.38), (0.75, 0.78, 0.72)
    first, second = sides(tmp_path, shares_a, shares_b)
    exact = replicated.seed_scores(first, second, 0.95, SAMPLES, 0)["sft"]["overall"]["exact match"]
    assert exact["verdict"] == "better" and exact["interval"][0] > 0.15
    assert exact["difference"] == pytest.approx(np.mean(shares_b) - np.mean(shares_a))
    expected = by_hand(exact_matrix(shares_a, (0, 10, 20)), exact_matrix(shares_b, (0, 25, 35)), 0.95, SAMPLES, 0)
    assert exact["interval"] == pytest.approx(expected)
    assert exact["p_value"] < 0.01 and exact["detail"] == {"seeds_a": 3, "seeds_b": 3}


def keyed(tmp_path, side: dict) -> dict[int, str]:
    """Move a side's evaluations under results/evaluated/<key>/ (result keys); seed → key."""
    found = {}
    for seed, path in side.items():
        key = f"{abs(hash((str(path), seed))) % 16**12:012x}"
        target = tmp_path / "results" / "evaluated" / key
        target.mkdir(parents=True)
        (target / "eval.json").write_text(path.read_text())
        found[seed] = key
    return found


def test_the_page_shows_both_sides_seeds_or_says_only_one_side_has_them(tmp_path, monkeypatch):
    first, second = sides(tmp_path, (0.30, 0.60, 0.45), (0.80, 0.50, 0.65))
    keys_a, keys_b = keyed(tmp_path, first), keyed(tmp_path, second)
    # results/replicates.json (the current recipe's) lists A's seeds: B is one run.
    write_json(tmp_path / "results" / "replicates.json",
               {"seeds": [42, 43, 44], "evaluations": {str(seed): f"results/evaluated/{key}/eval.json"
                                                       for seed, key in keys_a.items()}})
    text, facts, _ = compare(keys_a[42], keys_b[42], root=tmp_path)
    assert facts["seeds"] is None
    assert f"Only A has seed replicates (3 seeds: 42, 43, 44); B is one run" in text
    assert f"A's {tmp_path}/results/evaluated/{keys_a[42]}/eval.json against B's" in text
    assert "## Scores (B against A" in text and "Seeds: 3 vs" not in text
    # Both sides with seeds: the seed table first, with each side's spread, then the single runs.
    listed = {keys_a[42]: first, keys_b[42]: second}
    monkeypatch.setattr(compare_module.replicated, "key_evaluations",
                        lambda evaluation, root: listed.get(evaluation.parent.name, {}))
    text, facts, _ = compare(keys_a[42], keys_b[42], root=tmp_path)
    assert facts["seeds"]["a"] == [42, 43, 44] and facts["seed_note"] is None
    assert "Seeds: 3 vs 3 (A: 42, 43, 44; B: 42, 43, 44)" in text
    row = next(line for line in text.splitlines() if line.startswith("| sft | exact match |"))
    assert "sd 15.0 pts, 30.0%–60.0%" in row and "sd 15.0 pts, 50.0%–80.0%" in row and "within noise" in row
    assert text.index("## Scores over the seed replicates") < text.index("## Scores of one run each")
    assert any(line.startswith("sft (seeds 3 vs 3): exact match 45.0% → 65.0%") and line.endswith("within noise")
               for line in summary_lines(facts))


def test_a_recipe_with_repeats_names_the_evaluation_of_each_seed_built(tmp_path):
    path = quick_recipe(REPO / "recipes/default.yaml", tmp_path / "quick.yaml")
    recipe = yaml.safe_load(open(path, encoding="utf-8"))
    recipe = validate_recipe({**recipe, "repeats": 3}, origin="quick.yaml")
    paths = {recipe["seed"]: tmp_path / plan.folder_of(plan.steps(recipe)["evaluate"]) / "eval.json"}
    for replicate in replicates(recipe).values():
        steps = plan.steps(replicate, data_of=recipe)
        paths[replicate["seed"]] = tmp_path / plan.folder_of(steps["evaluate"]) / "eval.json"
    assert len(set(paths.values())) == 3
    for path in list(paths.values())[:2]:  # seed 44 not built yet
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    assert replicated.recipe_evaluations(recipe, tmp_path) == {42: paths[42], 43: paths[43]}
    assert replicated.recipe_evaluations({**recipe, "repeats": 1}, tmp_path) == {}
