"""The numbers behind a judge's grades: a bootstrap confidence interval of the mean grade, the grade
distribution, and agreement with another judge's grades of the same answers (exact, within one,
Spearman, quadratic-weighted kappa). Small enough to keep here rather than pull in scikit-learn;
tests/test_evaluate.py checks them against values scikit-learn and scipy give for the same fixture.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GRADES = (1, 2, 3, 4, 5)


def bootstrap_interval(values: list[float], samples: int, confidence: float, seed: int) -> list[float] | None:
    """Percentile bootstrap interval of the mean: the tasks resampled with replacement `samples` times."""
    if not values:
        return None
    data = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(data), size=(samples, len(data)))
    means = data[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def distribution(grades: list[int]) -> dict[str, int]:
    return {str(grade): sum(1 for value in grades if value == grade) for grade in GRADES}


def spearman(first: list[int], second: list[int]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when either side is constant."""
    # Pearson's r of the average ranks (pandas' own method="spearman" would need scipy).
    ranks = [pd.Series(values, dtype=float).rank(method="average").to_numpy() for values in (first, second)]
    if len(first) < 2 or any(rank.std() == 0 for rank in ranks):
        return None
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def quadratic_weighted_kappa(first: list[int], second: list[int], categories=GRADES) -> float | None:
    """Cohen's kappa with quadratic weights over the 1–5 scale; None when chance agreement is perfect
    (both sides give one and the same grade throughout)."""
    index = {category: position for position, category in enumerate(categories)}
    size = len(categories)
    observed = np.zeros((size, size))
    for a, b in zip(first, second):
        observed[index[a], index[b]] += 1
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    positions = np.arange(size)
    weights = (positions[:, None] - positions[None, :]) ** 2 / (size - 1) ** 2
    disagreement = (weights * expected).sum()
    return None if disagreement == 0 else float(1 - (weights * observed).sum() / disagreement)


def agreement(judge: dict[int, int], reference: dict[int, int]) -> dict:
    """How a judge's grades compare with reference grades of the same answers, on the tasks both graded."""
    shared = sorted(set(judge) & set(reference))
    ours, theirs = [judge[task] for task in shared], [reference[task] for task in shared]
    if not shared:
        return {"n": 0, "exact": None, "within_one": None, "spearman": None, "quadratic_weighted_kappa": None}
    return {
        "n": len(shared),
        "exact": sum(a == b for a, b in zip(ours, theirs)) / len(shared),
        "within_one": sum(abs(a - b) <= 1 for a, b in zip(ours, theirs)) / len(shared),
        "spearman": spearman(ours, theirs),
        "quadratic_weighted_kappa": quadratic_weighted_kappa(ours, theirs),
        "mean_judge": float(np.mean(ours)),
        "mean_reference": float(np.mean(theirs)),
    }
