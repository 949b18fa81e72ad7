"""Statistics of the paper's automatic evaluation (Diffusion-KTO appendix A.2 and B, Tables 1-3).

* :func:`median_index`: which of a prompt's N images is "the median-scoring image" (A.2:
  "we generate 5 images per method and report the win-rate using the median scoring images").
  For even N we take the LOWER median (the (N-1)//2-th smallest; ties broken by sample index),
  so the chosen score is always one real image's score, never an average of two.
* :func:`win_rate`: per-prompt outcome 1 (A's median image scores higher by more than the scorer's
  tie tolerance), 1/2 (a tie: ``|a - b| <= tolerance``), 0; the win rate is their mean, with a 95% CI by one of
  ``bootstrap`` (percentile bootstrap over prompts, fixed seed; the default),
  ``wilson`` (Wilson score interval with ``wins + ties/2`` successes out of n), or
  ``normal`` (mean +- z * sd/sqrt(n) of the outcomes, ddof=0: Wald's interval when there are no ties), or
  ``paper`` (:func:`paper_interval`: the normal approximation with n = every generated image, the "±"
  of Diffusion-KTO Tables 3-5; narrower, as it counts N images per prompt as independent trials).
* :func:`mean_ci`: mean score with the t-based 95% CI of the mean (Table 2, over all N images).

**Too few prompts.** An interval from fewer than :data:`MIN_PROMPTS` (10) prompts is not computed
(NaN, with a ``note``): at a true win rate of 50 % the 95 % percentile bootstrap then excludes 50 % in
13-14 % of evaluations of 4 prompts and 7.5-11 % at 6-8 (with 30 % ties), against 4-7 % from 10 prompts
on (``benchmarks/ci_coverage.py``; docs/evaluation.md), and 4 prompts gave "12.5 % [0.0, 37.5]" for a
LoRA that changed nothing (issue 21).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy import stats as sps

CI_METHODS = ("bootstrap", "wilson", "normal", "paper")
MIN_PROMPTS = 10  # fewer prompts: no interval (module docstring)


def median_index(scores) -> int:
    """Index of the (lower) median of ``scores`` (NaNs are not allowed: filter failures first)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"median_index needs a non-empty 1-D array, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("median_index: scores contain NaN")
    order = np.argsort(scores, kind="stable")  # ties keep sample order
    return int(order[(scores.size - 1) // 2])


def median_score(scores) -> float:
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores[median_index(scores)])


def outcomes(a, b, tolerance: float = 0.0) -> np.ndarray:
    """Per-prompt outcome of A vs B: 1 win, 0.5 tie (``|a - b| <= tolerance``: a difference the scorer
    cannot resolve, :func:`kto_lab.eval.scorers.tie_tolerance`), 0 loss (a and b aligned by prompt)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"outcomes: a and b must be aligned 1-D arrays, got {a.shape} and {b.shape}")
    if not tolerance >= 0:
        raise ValueError(f"outcomes: tolerance={tolerance!r} must be >= 0")
    return np.where(np.abs(a - b) <= tolerance, 0.5, np.where(a > b, 1.0, 0.0))


@dataclass
class WinRate:
    rate: float  # in [0, 1]
    low: float
    high: float
    n: int
    wins: int
    ties: int
    losses: int
    method: str
    note: str = ""  # why there is no interval (too few prompts), else empty

    def to_dict(self):
        return asdict(self)


def _z(level: float) -> float:
    return float(sps.norm.ppf(0.5 + level / 2))


def wilson_interval(successes: float, n: int, level: float = 0.95):
    """Wilson score interval for a proportion (successes may be fractional: ties count half)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = _z(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


def paper_interval(rate: float, n_images: int, level: float = 0.95):
    """``rate +- z * sqrt(rate * (1 - rate) / n_images)``: the interval of Diffusion-KTO Tables 3-5
    ("the 95% confidence interval of the win rate over 2500 samples": 500 prompts x 5 images; e.g.
    86.0 +- 1.36, 96.6 +- 0.71). The win rate is decided per prompt (median image), but this counts
    every image as an independent trial, so with N images per prompt it is about sqrt(N) times
    narrower than an interval with prompts as the unit (our default, ``bootstrap``)."""
    if n_images <= 0:
        return float("nan"), float("nan")
    half = _z(level) * float(np.sqrt(rate * (1 - rate) / n_images))
    return rate - half, rate + half


def win_rate_from_outcomes(o, method: str = "bootstrap", level: float = 0.95, n_bootstrap: int = 2000,
                           seed: int = 0, n_images: Optional[int] = None, min_prompts: int = MIN_PROMPTS) -> WinRate:
    """Win rate of per-prompt outcomes with its CI; ``n_images`` (every image behind the outcomes)
    is needed by ``method="paper"`` only. Fewer than ``min_prompts`` outcomes: the rate without an
    interval (NaN bounds and a ``note``; module docstring)."""
    if method not in CI_METHODS:
        raise ValueError(f"ci method {method!r} is not known; choose one of {list(CI_METHODS)}")
    o = np.asarray(o, dtype=np.float64)
    n = int(o.size)
    wins, ties = int((o == 1).sum()), int((o == 0.5).sum())
    if n == 0:
        return WinRate(float("nan"), float("nan"), float("nan"), 0, 0, 0, 0, method)
    rate = float(o.mean())
    if n < min_prompts:
        return WinRate(rate, float("nan"), float("nan"), n, wins, ties, n - wins - ties, method,
                       f"no interval: {n} prompt(s) < {min_prompts}")
    if method == "wilson":
        low, high = wilson_interval(wins + ties / 2, n, level)
    elif method == "paper":
        if n_images is None:
            raise ValueError("ci method 'paper' needs n_images (every generated image behind the win rate)")
        low, high = paper_interval(rate, n_images, level)
    elif method == "normal":
        half = _z(level) * o.std() / np.sqrt(n)
        low, high = rate - half, rate + half
    else:
        rng = np.random.default_rng(seed)
        means = o[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1)
        low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return WinRate(rate, float(max(0.0, low)), float(min(1.0, high)), n, wins, ties, n - wins - ties, method)


def win_rate(a, b, method: str = "bootstrap", level: float = 0.95, n_bootstrap: int = 2000, seed: int = 0,
             tolerance: float = 0.0, min_prompts: int = MIN_PROMPTS) -> WinRate:
    """Win rate of A over B from per-prompt scores (ties, ``|a - b| <= tolerance``, count half) with its CI."""
    return win_rate_from_outcomes(outcomes(a, b, tolerance), method, level, n_bootstrap, seed, min_prompts=min_prompts)


@dataclass
class MeanCI:
    mean: float
    low: float
    high: float
    n: int
    std: float

    def to_dict(self):
        return asdict(self)


def mean_ci(x, level: float = 0.95) -> MeanCI:
    """Mean with the Student-t CI of the mean: ``mean +- t_{n-1} * s / sqrt(n)`` (s with ddof=1)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0, float("nan"))
    m = float(x.mean())
    if n == 1:
        return MeanCI(m, float("nan"), float("nan"), 1, float("nan"))
    s = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, df=n - 1)) * s / np.sqrt(n)
    return MeanCI(m, m - half, m + half, n, s)


def share_ci(flags, level: float = 0.95) -> Optional[WinRate]:
    """Share of True among ``flags`` (e.g. NSFW-flagged images) with a Wilson interval."""
    flags = np.asarray(flags, dtype=bool)
    k, n = int(flags.sum()), int(flags.size)
    low, high = wilson_interval(k, n, level)
    return WinRate(k / n if n else float("nan"), low, high, n, k, 0, n - k, "wilson")
