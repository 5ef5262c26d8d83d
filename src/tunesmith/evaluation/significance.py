"""Is a difference between two sets of answers to the same tasks more than noise? The paired statistics
every score comparison uses (stages of one run, two runs in `tunesmith compare`, sweep variants against
their baseline, `submission.stage: best`), and the intervals shown beside single scores.

Both sides answer the same tasks, so each comparison pairs them task by task:
- the difference's interval is a paired bootstrap: the tasks resampled with replacement, the same
  draw for both sides, the statistic recomputed on each side and differenced;
- the test fits the measure: exact match and preference accuracy (right or wrong per item) get
  McNemar's exact test (a two-sided binomial test on the items only one side gets right); judge grades
  and chrF get Wilcoxon's signed-rank test (ties dropped; for chrF on each task's own chrF, while the
  interval is corpus chrF's paired bootstrap);
- the verdict is `better` or `worse` when the test's p-value is below 1 − confidence, else
  `within noise`.
Two recipes trained under several seeds each (`repeats`) are compared by a two-level bootstrap that
resamples each side's seeds and then the tasks (`compare_replicated`), so that its interval holds both
the seed spread and the task sampling; its verdict is `better` or `worse` when that interval excludes 0.
Single scores get an interval too: Wilson's for a share (exact match, preference accuracy), a
percentile bootstrap over tasks for a mean grade or corpus chrF. Tests check these against scipy and
hand-computed fixtures (tests/test_significance.py).
"""

from __future__ import annotations

import numpy as np

BETTER, WORSE, NOISE = "better", "worse", "within noise"


def _stats():
    """scipy.stats, imported at the first test: every `snakemake` start imports this module (the submission's
    choice of stage), and scipy.stats takes about half a second to import."""
    from scipy import stats

    return stats


def _chrf():
    """sacrebleu's chrF, imported where a chrF interval is computed (sacrebleu imports lxml and more)."""
    from sacrebleu.metrics import CHRF

    return CHRF()


def verdict(difference: float, p_value: float | None, confidence: float) -> str:
    """`better` / `worse` (B against A) when the test rejects "no difference" at `confidence`, else `within noise`."""
    if p_value is None or p_value >= 1 - confidence or difference == 0:
        return NOISE
    return BETTER if difference > 0 else WORSE


# ---- single scores ----
def share_interval(successes: int, n: int, confidence: float) -> list[float] | None:
    """Wilson score interval of a share (exact match, preference accuracy); None without items."""
    if n == 0:
        return None
    found = _stats().binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(found.low), float(found.high)]


def _draws(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _percentiles(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def chrf_statistics(outputs: list[str], references: list[str]) -> np.ndarray:
    """Each task's chrF sufficient statistics (character and word n-gram matches and counts): corpus chrF
    of any resample of the tasks is computed from the sum of its rows, as sacrebleu's own bootstrap does."""
    return np.asarray(_chrf()._extract_corpus_statistics(list(outputs), [list(references)]), dtype=float)


def _chrf_of(metric, rows: np.ndarray) -> float:
    return float(metric._compute_score_from_stats(list(rows.sum(axis=0))).score)


def _corpus_chrf_draws(statistics: np.ndarray, draws: np.ndarray) -> np.ndarray:
    metric = _chrf()
    return np.array([_chrf_of(metric, statistics[draw]) for draw in draws])


def chrf_interval(outputs: list[str], references: list[str], confidence: float, samples: int,
                  seed: int) -> list[float] | None:
    """Percentile bootstrap interval of corpus chrF over the tasks."""
    if not references:
        return None
    statistics = chrf_statistics(outputs, references)
    return _percentiles(_corpus_chrf_draws(statistics, _draws(len(references), samples, seed)), confidence)


# ---- paired tests ----
def mcnemar(first: list[bool], second: list[bool]) -> dict:
    """McNemar's exact test: of the items exactly one side gets right, is each side's share 1/2?
    `only_first` / `only_second`: the discordant counts; p-value two-sided (1 when none differ)."""
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    discordant = only_first + only_second
    p_value = 1.0 if discordant == 0 else float(_stats().binomtest(only_second, discordant, 0.5).pvalue)
    return {"only_first": only_first, "only_second": only_second, "p_value": p_value}


def wilcoxon(first, second) -> dict:
    """Wilcoxon's signed-rank test on paired values (zero differences dropped, exact distribution for small
    samples where scipy chooses it); p-value 1 when every pair is tied."""
    differences = np.asarray(second, dtype=float) - np.asarray(first, dtype=float)
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return {"nonzero": 0, "p_value": 1.0}
    result = _stats().wilcoxon(nonzero, zero_method="wilcox")
    return {"nonzero": int(nonzero.size), "p_value": float(result.pvalue)}


def sign_test(first, second) -> dict:
    """The sign test: of the pairs that differ, is each direction's share 1/2?"""
    up = sum(1 for a, b in zip(first, second) if b > a)
    down = sum(1 for a, b in zip(first, second) if b < a)
    p_value = 1.0 if up + down == 0 else float(_stats().binomtest(up, up + down, 0.5).pvalue)
    return {"up": up, "down": down, "p_value": p_value}


def paired_interval(first, second, confidence: float, samples: int, seed: int) -> list[float] | None:
    """Paired bootstrap interval of mean(second) − mean(first): one draw of tasks for both sides."""
    differences = np.asarray(second, dtype=float) - np.asarray(first, dtype=float)
    if differences.size == 0:
        return None
    return _percentiles(differences[_draws(len(differences), samples, seed)].mean(axis=1), confidence)


def _result(measure: str, test: str, first: float, second: float, n: int, interval, found: dict,
            confidence: float) -> dict:
    difference = second - first
    return {"measure": measure, "n": n, "a": first, "b": second, "difference": difference, "interval": interval,
            "test": test, "p_value": found["p_value"], "confidence": confidence,
            "verdict": verdict(difference, found["p_value"], confidence),
            "detail": {key: value for key, value in found.items() if key != "p_value"}}


def compare_binary(first: list[bool], second: list[bool], confidence: float, samples: int, seed: int,
                   measure: str = "exact match") -> dict:
    """Two sides' right/wrong per item (same items, same order): shares, the paired bootstrap interval of
    the difference (B − A), McNemar's exact test and the verdict."""
    _same_length(first, second)
    n = len(first)
    first_share = sum(map(bool, first)) / n if n else 0.0
    second_share = sum(map(bool, second)) / n if n else 0.0
    interval = paired_interval([float(bool(a)) for a in first], [float(bool(b)) for b in second],
                               confidence, samples, seed)
    return _result(measure, "McNemar exact", first_share, second_share, n, interval, mcnemar(first, second),
                   confidence)


def compare_grades(first, second, confidence: float, samples: int, seed: int, measure: str = "judge grade",
                   test: str = "wilcoxon") -> dict:
    """Two sides' grades per task: means, the paired bootstrap interval of the difference, and the
    Wilcoxon signed-rank test (`test="sign"`: the sign test)."""
    _same_length(first, second)
    n = len(first)
    found = wilcoxon(first, second) if test == "wilcoxon" else sign_test(first, second)
    return _result(measure, "Wilcoxon signed-rank" if test == "wilcoxon" else "sign test",
                   float(np.mean(first)) if n else 0.0, float(np.mean(second)) if n else 0.0, n,
                   paired_interval(first, second, confidence, samples, seed), found, confidence)


def compare_chrf(first_outputs: list[str], second_outputs: list[str], references: list[str], confidence: float,
                 samples: int, seed: int) -> dict:
    """Corpus chrF of two sides' answers to the same tasks: the paired bootstrap interval of the difference,
    and Wilcoxon's signed-rank test on the tasks' own chrF."""
    _same_length(first_outputs, second_outputs)
    _same_length(first_outputs, references)
    metric = _chrf()
    first, second = chrf_statistics(first_outputs, references), chrf_statistics(second_outputs, references)
    first_score, second_score = _chrf_of(metric, first), _chrf_of(metric, second)
    n = len(references)
    if n == 0:
        return _result("chrF", "paired bootstrap", 0.0, 0.0, 0, None, {"p_value": 1.0}, confidence)
    draws = _draws(n, samples, seed)
    differences = _corpus_chrf_draws(second, draws) - _corpus_chrf_draws(first, draws)
    # The test: Wilcoxon on each task's own chrF. (The bootstrap's own p-value cannot see noise when a
    # handful of tasks all move one way: three of three gives p = 0, the signed-rank test 0.25.)
    found = wilcoxon([_chrf_of(metric, row[None, :]) for row in first], [_chrf_of(metric, row[None, :]) for row in second])
    return _result("chrF", "Wilcoxon signed-rank", first_score, second_score, n,
                   _percentiles(differences, confidence), found, confidence)


# ---- seed replicates ----
def mean_statistics(values) -> np.ndarray:
    """Per-item values (seeds × items) as summable statistics for `compare_replicated`: (value, 1)."""
    data = np.asarray(values, dtype=float)
    return np.stack([data, np.ones_like(data)], axis=-1)


def mean_of(statistics: np.ndarray) -> np.ndarray:
    """The mean from summed `mean_statistics` (any leading axes)."""
    return statistics[..., 0] / statistics[..., 1]


def chrf_of(statistics: np.ndarray) -> np.ndarray:
    """Corpus chrF from summed chrF statistics (rows of `chrf_statistics`; any leading axes)."""
    metric = _chrf()
    flat = statistics.reshape(-1, statistics.shape[-1])
    return np.array([_chrf_of(metric, row[None, :]) for row in flat]).reshape(statistics.shape[:-1])


def hierarchical_draws(first: np.ndarray, second: np.ndarray, score, samples: int, seed: int) -> np.ndarray:
    """B − A over `samples` two-level bootstrap draws. `first`, `second`: summable statistics per seed and
    item (seeds × items × statistics; both sides the same items). Each draw resamples each side's seeds with
    replacement (n of n), then the items (m of m, the same items for both sides: paired), sums the drawn
    seeds' statistics over the drawn items and scores the sums with `score` (mean_of, chrf_of)."""
    _same_length(first[0], second[0])
    rng = np.random.default_rng(seed)
    seeds_first = rng.integers(0, len(first), size=(samples, len(first)))
    seeds_second = rng.integers(0, len(second), size=(samples, len(second)))
    items = rng.integers(0, first.shape[1], size=(samples, first.shape[1]))
    found = []
    for start in range(0, samples, 500):  # blocks keep memory at draws × items × statistics
        block = slice(start, start + 500)
        sums = []
        for side, picked in ((first, seeds_first[block]), (second, seeds_second[block])):
            counts = np.stack([np.bincount(row, minlength=len(side)) for row in picked]).astype(float)
            per_item = np.einsum("bs,sik->bik", counts, side)  # the drawn seeds' statistics per item
            sums.append(np.take_along_axis(per_item, items[block][:, :, None], axis=1).sum(axis=1))
        found.append(score(sums[1]) - score(sums[0]))
    return np.concatenate(found)


def compare_replicated(first: np.ndarray, second: np.ndarray, score, confidence: float, samples: int, seed: int,
                       measure: str) -> dict:
    """Two recipes' seed replicates on the same items (statistics as in `hierarchical_draws`): each side's
    score pooled over its seeds and the items, B − A with the interval of the two-level bootstrap (seeds and
    items resampled, so it holds seed spread and item sampling), a two-sided bootstrap p-value, and the
    verdict from the interval: `better` / `worse` only when it excludes 0."""
    n = first.shape[1]
    a = b = 0.0
    interval, p_value, verdict_found = None, 1.0, NOISE
    if n:
        a, b = float(score(first.sum(axis=(0, 1)))), float(score(second.sum(axis=(0, 1))))
        draws = hierarchical_draws(first, second, score, samples, seed)
        interval = _percentiles(draws, confidence)
        p_value = float(min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))))
        verdict_found = BETTER if interval[0] > 0 else WORSE if interval[1] < 0 else NOISE
    return {"measure": measure, "n": n, "a": a, "b": b, "difference": b - a, "interval": interval,
            "test": "bootstrap over seeds and tasks", "p_value": p_value, "confidence": confidence,
            "verdict": verdict_found, "detail": {"seeds_a": len(first), "seeds_b": len(second)}}


def _same_length(first, second) -> None:
    if len(first) != len(second):
        raise ValueError(f"paired values need the same items on both sides: {len(first)} against {len(second)}")


# ---- wording ----
def describe(result: dict, percent: bool | None = None) -> str:
    """One line: `exact match 40.0% → 55.0% (+15.0 points, 95% interval +3.0 to +27.0; McNemar exact
    p=0.021): better`."""
    percent = result["measure"] in ("exact match", "preference accuracy") if percent is None else percent
    scale, unit, form = (100, " points", ".1f") if percent else (1, "", ".2f")
    value = (lambda v: f"{v * 100:.1f}%") if percent else (lambda v: format(v, form))
    interval = result["interval"]
    shown = "" if interval is None else (f", {result['confidence']:.0%} interval {interval[0] * scale:+{form}} to "
                                         f"{interval[1] * scale:+{form}}")
    return (f"{result['measure']} {value(result['a'])} → {value(result['b'])} "
            f"({result['difference'] * scale:+{form}}{unit}{shown}; {result['test']} p={result['p_value']:.3g}): "
            f"{result['verdict']}")
