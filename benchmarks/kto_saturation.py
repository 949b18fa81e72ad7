"""How many samples carry Diffusion-KTO's gradient? The sigmoid utility's saturation, measured on one sweep run.

    python benchmarks/kto_saturation.py --beta 1000 --lr 1e-4      # one synthetic sweep run, ~1 min on a CPU
    python benchmarks/kto_saturation.py --beta 300 --lr 1e-4

Diffusion-KTO's loss (eq. 8) is ``1 - U(x)`` with ``x = w * beta * (g - z_ref)`` per sample. With the default
utility ``U = sigmoid`` the gradient a sample sends is proportional to ``sigmoid'(x)``, which vanishes on both
sides of 0: once ``|x|`` is large, a sample stops teaching, whether it is already fitted or hopeless. (The
loss-averse ``log sigmoid`` and the risk-seeking ``softplus`` keep a slope on one side.) This script trains one
run of the KTO vs DPO sweep (``kto_lab.synthetic.sweep``, the committed shapes world) and records ``|x|`` for
every sample of every step, then prints per window of steps: the median ``|x|``, the share of samples with
``|x| < 2`` (slope above 0.1, 40 % of the sigmoid's largest), and the share of the gradient that the eighth of
the samples with the largest slope carry. ``figures/kto_vs_dpo.md`` (section 4) found the runs at lr 1e-4 and
beta >= 1,000 chaotic (tiny input changes move where they end); this measures the suspected cause.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def saturation_stats(x: np.ndarray) -> Dict[str, float]:
    """For arguments ``x`` of the sigmoid utility: median |x|, share below ``objectives.SATURATED_AT`` (2: the
    complement of the trainer's ``saturated`` metric), and the share of the total gradient weight
    ``sigmoid'(x)`` carried by the eighth of the samples with the largest weight."""
    from kto_lab.objectives import SATURATED_AT

    x = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    s = 1.0 / (1.0 + np.exp(-x))
    slope = np.sort(s * (1.0 - s))[::-1]
    top = max(1, len(slope) // 8)
    return {"median_abs_x": float(np.median(x)), "share_active": float(np.mean(x < SATURATED_AT)),
            "top_eighth_gradient_share": float(slope[:top].sum() / slope.sum())}


def record_kto_arguments(records: List[np.ndarray]):
    """Wrap ``kto_lab.objectives.kto_loss`` so every call appends ``|w beta (g - z_ref)|`` to ``records``;
    returns a function that restores the original."""
    import kto_lab.objectives as O

    original = O.kto_loss

    def recording(err_policy, err_ref, labels, *, beta, z_ref=0.0, **kwargs):
        g = err_ref.detach().float() - err_policy.detach().float()
        z = torch.as_tensor(z_ref, dtype=g.dtype, device=g.device)
        records.append((beta * (g - z)).abs().cpu().numpy().ravel())
        return original(err_policy, err_ref, labels, beta=beta, z_ref=z_ref, **kwargs)

    O.kto_loss = recording

    def restore():
        O.kto_loss = original

    return restore


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--beta", type=float, default=1000.0, help="KTO's beta")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    ap.add_argument("--regime", default="noise30", help="data regime (kto_lab.synthetic.regimes)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed")
    ap.add_argument("--windows", type=int, default=3, help="how many windows of steps to report")
    ap.add_argument("--base", default=str(REPO / "figures/synthetic/base/pipeline"), help="base pipeline")
    ap.add_argument("--work", default="runs/kto_saturation", help="scratch directory for the run")
    ap.add_argument("--set", nargs="*", default=[], metavar="sweep.FIELD=VALUE",
                    help="SweepConfig overrides (e.g. sweep.steps=30 for a quick look)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    from kto_lab.config import load_config, parse_overrides
    from kto_lab.synthetic.sweep import SweepConfig, make_cell, run_cell

    torch.set_num_threads(1)
    cfg = load_config(SweepConfig, None, parse_overrides(args.set).get("sweep", {})).validate()
    records: List[np.ndarray] = []
    restore = record_kto_arguments(records)
    try:
        result = run_cell(make_cell(args.regime, "kto", args.seed, args.beta, args.lr), cfg, Path(args.base),
                          Path(args.work))
    finally:
        restore()
    edges = np.linspace(0, len(records), args.windows + 1).astype(int)
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        row = {"steps": f"{a + 1}-{b}", **saturation_stats(np.concatenate(records[a:b]))}
        rows.append(row)
        print(f"beta {args.beta:g} lr {args.lr:g} steps {row['steps']}: median |x| {row['median_abs_x']:.2f}, "
              f"share |x| < 2 {row['share_active']:.2f}, gradient share of the top eighth "
              f"{row['top_eighth_gradient_share']:.2f}")
    print("final redness / fidelity:", round(result["final"]["score"], 4), "/", round(result["final"]["fidelity"], 4))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "windows": rows, "final": result["final"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
