"""How often does a win-rate interval exclude 50 % when A and B are truly even? (the rule behind stats.MIN_PROMPTS)

    python benchmarks/ci_coverage.py                  # ~1 min on one CPU core
    python benchmarks/ci_coverage.py --reps 2000 --prompts 4 10 20

Each simulated evaluation has ``n`` prompts whose outcomes are drawn from a truly even comparison: a win or
a loss with probability (1 - t)/2 each and a tie with probability t. For every interval method of
:func:`kto_lab.eval.stats.win_rate_from_outcomes` (``min_prompts=1``: the intervals themselves) it counts the
evaluations whose 95 % interval excludes 50 % (a false verdict; nominal 5 %). docs/evaluation.md ("No
interval from fewer than 10 prompts") quotes the output of the default run.
"""

from __future__ import annotations

import argparse

import numpy as np

from kto_lab.eval.stats import win_rate_from_outcomes


def false_verdict_rate(n: int, ties: float, method: str, reps: int, rng, n_bootstrap: int = 500) -> float:
    misses = 0
    for r in range(reps):
        o = rng.choice([0.0, 0.5, 1.0], size=n, p=[(1 - ties) / 2, ties, (1 - ties) / 2])
        w = win_rate_from_outcomes(o, method, n_bootstrap=n_bootstrap, seed=r, min_prompts=1)
        misses += not (w.low <= 0.5 <= w.high)
    return misses / reps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[4, 6, 8, 10, 12, 15, 20, 30])
    ap.add_argument("--ties", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--methods", nargs="+", default=["bootstrap", "wilson", "normal"])
    ap.add_argument("--reps", type=int, default=1000, help="simulated evaluations per cell")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print("| ties | method | " + " | ".join(f"{n} prompts" for n in args.prompts) + " |")
    print("|---|---|" + "---|" * len(args.prompts))
    for t in args.ties:
        for m in args.methods:
            rates = [false_verdict_rate(n, t, m, args.reps, rng) for n in args.prompts]
            print(f"| {t:g} | {m} | " + " | ".join(f"{100 * r:.1f} %" for r in rates) + " |")


if __name__ == "__main__":
    main()
