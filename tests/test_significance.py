"""The paired statistics against hand-computed values and independent formulas."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from sacrebleu.metrics import CHRF

from tunesmith.evaluation import significance


def test_mcnemar_exact_matches_the_binomial_tail_by_hand():
    # 8 items only B gets right, 1 only A gets right, 11 both or neither.
    first = [True] * 1 + [False] * 8 + [True] * 6 + [False] * 5
    second = [False] * 1 + [True] * 8 + [True] * 6 + [False] * 5
    found = significance.mcnemar(first, second)
    # two-sided: 2 * P(X <= 1), X ~ Binomial(9, 1/2) = 2 * (1 + 9) / 512
    assert found == {"only_first": 1, "only_second": 8, "p_value": pytest.approx(20 / 512)}
    result = significance.compare_binary(first, second, confidence=0.95, samples=2000, seed=1)
    assert result["a"] == pytest.approx(7 / 20) and result["b"] == pytest.approx(14 / 20)
    assert result["difference"] == pytest.approx(0.35)
    assert result["verdict"] == "better"
    assert result["interval"][0] > 0 and result["interval"][0] < 0.35 < result["interval"][1]
    # At 99% the same counts are noise: p = 0.039 is above 0.01.
    assert significance.compare_binary(first, second, 0.99, 2000, 1)["verdict"] == "within noise"
    assert significance.compare_binary(second, first, 0.95, 2000, 1)["verdict"] == "worse"


def test_mcnemar_with_no_discordant_items_is_noise():
    same = [True, False, True]
    assert significance.mcnemar(same, same)["p_value"] == 1.0
    assert significance.compare_binary(same, same, 0.95, 100, 0)["verdict"] == "within noise"


def test_wilcoxon_exact_and_sign_test_by_hand():
    first = [3, 2, 1, 4, 2, 5]
    second = [4, 4, 4, 8, 7, 5]  # differences 1, 2, 3, 4, 5 and one tie (dropped)
    found = significance.wilcoxon(first, second)
    # All five signed ranks positive: the exact two-sided p is 2 / 2**5.
    assert found == {"nonzero": 5, "p_value": pytest.approx(2 / 32)}
    assert significance.sign_test(first, second) == {"up": 5, "down": 0, "p_value": pytest.approx(2 / 32)}
    result = significance.compare_grades(first, second, 0.90, 2000, 0)
    assert result["verdict"] == "better" and result["difference"] == pytest.approx(15 / 6)
    assert significance.compare_grades(first, second, 0.95, 2000, 0)["verdict"] == "within noise"
    assert significance.wilcoxon([1, 2], [1, 2]) == {"nonzero": 0, "p_value": 1.0}


def test_paired_interval_is_the_bootstrap_of_the_differences():
    first = [0.0] * 10
    assert significance.paired_interval(first, [0.5] * 10, 0.95, 500, 0) == pytest.approx([0.5, 0.5])
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=200), rng.normal(size=200) + 0.3
    low, high = significance.paired_interval(a, b, 0.95, 4000, 0)
    # The bootstrap interval of a mean of 200 differences is close to mean ± 1.96 sd / sqrt(n).
    differences = b - a
    half = 1.96 * differences.std(ddof=1) / math.sqrt(len(differences))
    assert low == pytest.approx(differences.mean() - half, abs=0.04)
    assert high == pytest.approx(differences.mean() + half, abs=0.04)


def test_wilson_interval_matches_the_formula():
    z = NormalDist().inv_cdf(0.975)
    successes, n = 57, 100
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert significance.share_interval(successes, n, 0.95) == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert significance.share_interval(0, 0, 0.95) is None


def test_corpus_chrf_from_statistics_is_sacrebleus_corpus_score():
    outputs = ["東京です", "りんご", "3", "こんにちは世界"]
    references = ["東京", "りんごです", "3", "こんにちは"]
    statistics = significance.chrf_statistics(outputs, references)
    expected = CHRF().corpus_score(outputs, [references]).score
    assert significance._chrf_of(CHRF(), statistics) == pytest.approx(expected)
    low, high = significance.chrf_interval(outputs, references, 0.95, 300, 0)
    assert low <= expected <= high


def test_compare_chrf_verdicts():
    references = [f"答え{i}は{i * 7}です" for i in range(30)]
    wrong = ["わかりません"] * 30
    result = significance.compare_chrf(wrong, references, references, 0.95, 500, 0)
    assert result["verdict"] == "better" and result["b"] == pytest.approx(100.0)
    assert result["interval"][0] > 0
    same = significance.compare_chrf(wrong, wrong, references, 0.95, 500, 0)
    assert same["verdict"] == "within noise" and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        significance.compare_chrf(wrong, wrong[:3], references, 0.95, 10, 0)


def test_describe_names_the_test_and_the_verdict():
    result = significance.compare_binary([False] * 9 + [True], [True] * 10, 0.95, 500, 0)
    line = significance.describe(result)
    assert line.startswith("exact match 10.0% → 100.0% (+90.0 points, 95% interval")
    assert "McNemar exact p=0.00391" in line and line.endswith(": better")
