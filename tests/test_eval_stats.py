"""Statistics of the win-rate protocol against known values (scipy / hand-computed)."""

import numpy as np
import pytest
from scipy import stats as sps

from kto_lab.eval.stats import (mean_ci, median_index, median_score, outcomes, paper_interval, share_ci, win_rate,
                                 win_rate_from_outcomes, wilson_interval)


def test_median_of_odd_n_is_the_middle_image():
    scores = [0.3, 0.9, 0.1, 0.5, 0.7]  # sorted: 0.1 0.3 0.5 0.7 0.9 -> 0.5 at index 3
    assert median_index(scores) == 3
    assert median_score(scores) == 0.5


def test_median_of_even_n_is_the_lower_median():
    scores = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4 -> lower median 2 (index 3), never the average 2.5
    assert median_index(scores) == 3
    assert median_score(scores) == 2.0
    assert median_index([5.0, 6.0]) == 0


def test_median_ties_are_broken_by_sample_order():
    assert median_index([1.0, 1.0, 1.0]) == 1
    assert median_index([2.0, 1.0, 1.0, 2.0]) == 2  # sorted (1,k=1) (1,k=2) (2,k=0) (2,k=3) -> k=2


def test_median_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        median_index([1.0, np.nan])
    with pytest.raises(ValueError, match="non-empty"):
        median_index([])


def test_outcomes_count_ties_half():
    np.testing.assert_array_equal(outcomes([1, 2, 3], [0, 2, 4]), [1.0, 0.5, 0.0])


def test_wilson_interval_matches_hand_computed_values():
    # 7 successes of 10, z = 1.959964: centre = (0.7 + z^2/20) / (1 + z^2/10); half = z*sqrt(.021 + z^2/400)/(1+z^2/10)
    z = sps.norm.ppf(0.975)
    denom = 1 + z**2 / 10
    centre = (0.7 + z**2 / 20) / denom
    half = z * np.sqrt(0.7 * 0.3 / 10 + z**2 / 400) / denom
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)  # published table values


def test_win_rate_wilson_and_normal_with_ties():
    a = np.array([3, 3, 3, 3, 3, 3, 1, 1, 2, 2], dtype=float)
    b = np.array([1, 1, 1, 1, 1, 1, 2, 2, 2, 2], dtype=float)  # 6 wins, 2 losses, 2 ties -> 7/10
    wr = win_rate(a, b, method="wilson")
    assert (wr.rate, wr.wins, wr.ties, wr.losses, wr.n) == (0.7, 6, 2, 2, 10)
    assert (wr.low, wr.high) == pytest.approx(wilson_interval(7, 10))
    normal = win_rate(a, b, method="normal")
    o = np.array([1] * 6 + [0] * 2 + [0.5] * 2)
    half = sps.norm.ppf(0.975) * o.std() / np.sqrt(10)
    assert (normal.low, normal.high) == pytest.approx((0.7 - half, min(1.0, 0.7 + half)))


def test_win_rate_normal_without_ties_is_wald():
    a, b = np.r_[np.ones(30), np.zeros(70)], np.full(100, 0.5)
    wr = win_rate(a, b, method="normal")
    half = 1.959964 * np.sqrt(0.3 * 0.7 / 100)
    assert wr.rate == 0.3 and (wr.low, wr.high) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-6)


def test_bootstrap_ci_is_seeded_and_close_to_normal_for_many_prompts():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=400) + 0.3, rng.normal(size=400)
    w1, w2 = win_rate(a, b, seed=3), win_rate(a, b, seed=3)
    assert (w1.low, w1.high) == (w2.low, w2.high)
    normal = win_rate(a, b, method="normal")
    assert w1.low < w1.rate < w1.high
    assert w1.low == pytest.approx(normal.low, abs=0.015) and w1.high == pytest.approx(normal.high, abs=0.015)


def test_win_rate_rejects_unknown_method():
    with pytest.raises(ValueError, match="bootstrap"):
        win_rate([1.0], [0.0], method="exact")


def test_mean_ci_matches_scipy_t_interval():
    x = np.array([2.0, 4.0, 4.0, 5.0, 7.0, 9.0])
    ci = mean_ci(x)
    low, high = sps.t.interval(0.95, df=5, loc=x.mean(), scale=sps.sem(x))
    assert ci.mean == pytest.approx(31 / 6) and (ci.low, ci.high) == pytest.approx((low, high))
    assert ci.n == 6


def test_share_ci_counts_flags():
    s = share_ci([True, False, False, False])
    assert s.rate == 0.25 and s.n == 4 and (s.low, s.high) == pytest.approx(wilson_interval(1, 4))


@pytest.mark.parametrize("rate, half", [(0.860, 0.0136), (0.966, 0.0071), (0.742, 0.0172), (0.955, 0.0081)])
def test_paper_interval_reproduces_diffusion_kto_tables_3_to_5(rate, half):
    """Every "±" of Diffusion-KTO Tables 3-5 is the normal approximation over all 2,500 images
    (500 prompts x 5): e.g. 86.0 ± 1.36 and 96.6 ± 0.71 (Table 3), 74.2 ± 1.72 and 95.5 ± 0.81 (Table 5)."""
    low, high = paper_interval(rate, 2500)
    assert round(100 * (high - rate), 2) == pytest.approx(100 * half) and high - rate == pytest.approx(rate - low)


def test_paper_ci_method_counts_images_not_prompts():
    o = np.array([1.0] * 7 + [0.0] * 3)  # 10 prompts, 5 images each
    wr = win_rate_from_outcomes(o, method="paper", n_images=50)
    assert (wr.low, wr.high) == pytest.approx(paper_interval(0.7, 50))
    prompts_as_unit = win_rate_from_outcomes(o, method="normal")
    assert (wr.high - wr.low) == pytest.approx((prompts_as_unit.high - prompts_as_unit.low) / np.sqrt(5))
    with pytest.raises(ValueError, match="needs n_images"):
        win_rate_from_outcomes(o, method="paper")


def test_scores_within_the_tolerance_tie():
    """issue 21, 8: score differences of ~1e-5 (a few pixels' rounding) counted as wins."""
    a, b = [0.5, 0.50001, 0.6, 0.4], [0.5, 0.5, 0.5, 0.5]
    np.testing.assert_array_equal(outcomes(a, b), [0.5, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(outcomes(a, b, tolerance=0.5 / 255), [0.5, 0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="tolerance"):
        outcomes(a, b, tolerance=-1)
    from kto_lab.eval.scorers import TIE_TOLERANCE, tie_tolerance

    assert tie_tolerance("redness") == 0.5 / 255 and tie_tolerance("pickscore") == 0.025
    assert tie_tolerance("fidelity") == 0.0 and tie_tolerance("redness", {"redness": 0.1}) == 0.1
    assert set(TIE_TOLERANCE) >= {"redness", "saturation", "brightness", "contrast", "pickscore", "clip", "hpsv2",
                                  "aesthetic", "imagereward"}


def test_no_interval_from_too_few_prompts():
    """issue 21, 8: 4 prompts gave 12.5 % [0.0, 37.5], an interval excluding 50 % for a LoRA that did nothing."""
    o = np.array([0.5, 0.0, 0.0, 0.0])
    for method in ("bootstrap", "wilson", "normal", "paper"):
        wr = win_rate_from_outcomes(o, method, n_images=20)
        assert wr.rate == 0.125 and np.isnan(wr.low) and np.isnan(wr.high)
        assert wr.note == "no interval: 4 prompt(s) < 10"
    wr = win_rate_from_outcomes(np.r_[o, o, [0.5, 0.5]], "bootstrap")
    assert wr.n == 10 and wr.note == "" and wr.low <= wr.rate <= wr.high
    assert not np.isnan(win_rate_from_outcomes(o, "wilson", min_prompts=4).low)
