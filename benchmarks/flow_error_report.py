"""Which error is a flow model's implicit reward? The tables of figures/flow_error.md, from committed results only.

    python benchmarks/flow_error_report.py --out figures/flow_error.md \
        --figure6 figures figures/flow_error/velocity figures/flow_error/x0 \
        --sweeps figures/beta_scale figures/beta_scale/flow_error_velocity figures/beta_scale/flow_error_x0 \
        --synthetic runs/sweeps/flow --write-cells figures/flow_error/synthetic_cells.csv
    # or, from the committed results alone: ... --synthetic figures/flow_error/synthetic_cells.csv

Inputs: each ``--figure6`` folder holds a flow toy's ``figure6_flow_metrics.json`` and ``figure6_flow_run.json``
(``kto-lab toy figure6 --family flow ...``), each ``--sweeps`` folder a flow toy's beta sweep
``ablation_flow_metrics.json`` (``kto-lab toy ablations --family flow --betas ...``); the flow_error of each is
read from its recorded config (absent: velocity, the only error before the option). ``--synthetic`` is a sweep
directory of the shapes world under flow matching (``kto-lab synthetic sweep --plan flow``).

What "aligns best per unit of drift" means here. Alignment on the toy: the share of samples in P_d's region minus
the share in P_u's, above the pretrained model's; drift: the energy distance of the samples to the pretrained
model's (``energy_to_pretrained``, the toy's distance metric). In the shapes world: the user's score above the
base model's; drift: the distance from the base (RMS pixel change of the image for the same caption and seed) and
the fidelity lost. Each flow_error is swept over beta, because its errors, and so its useful beta, differ in size;
a choice is better if its beta curve reaches more alignment at the same drift. Per seed, the best alignment among
the betas whose drift stays within a budget; mean and 95 % t interval over seeds, and on the toy the paired
difference per seed between the first ``--sweeps`` choice and each other (the same seeds train every choice). In
the shapes world the budget is on the distance from the base or on the fidelity lost.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from kto_lab.eval.stats import mean_ci

TOY_BUDGETS = (0.02, 0.05, 0.1, 0.15)  # energy distance to the pretrained model
SYNTHETIC_BUDGETS = (0.15, 0.2, 0.25, 0.3)  # RMS pixel distance from the base model
FIDELITY_BUDGETS = (0.05, 0.1, 0.15)  # fidelity lost against the base model
FIGURE6_ROWS = ("pretrained", "sft", "bce", "dpo", "kto:kto", "kto:loss_averse", "nft")


def _flow_error(config: Dict) -> str:
    return config.get("flow_error") or "velocity"


def _ci(values) -> str:
    c = mean_ci(values)
    return f"{c.mean:.3f}" if c.n < 2 else f"{c.mean:.3f} ({c.low:.3f}, {c.high:.3f})"


def read_figure6(folder: Path):
    run = json.loads((folder / "figure6_flow_run.json").read_text())
    return _flow_error(run["config"]), json.loads((folder / "figure6_flow_metrics.json").read_text()), run["command"]


def read_sweep(folder: Path):
    data = json.loads((folder / "ablation_flow_metrics.json").read_text())
    return _flow_error(data["_run"]["config"]), data["beta"], data["_run"]["command"]


def toy_alignment(row: Dict, pretrained: Dict) -> np.ndarray:
    """Per seed: (share in P_d - share in P_u) above the pretrained model's."""
    a = np.array(row["share_desirable"]["values"]) - np.array(row["share_undesirable"]["values"])
    p = np.array(pretrained["share_desirable"]["values"]) - np.array(pretrained["share_undesirable"]["values"])
    return a - p


def best_within(alignment: np.ndarray, drift: np.ndarray, budget: float) -> np.ndarray:
    """Per seed (columns), the best alignment over settings (rows) whose drift is within ``budget`` (0 when none:
    the pretrained model itself is always within budget)."""
    ok = drift <= budget
    return np.where(ok, alignment, 0.0).max(axis=0, initial=0.0)


def figure6_table(runs) -> List[str]:
    lines = ["| flow_error | method | share in P_d's region | share in P_u's region | alignment (d - u, above pretrained) "
             "| energy to pretrained |", "|---|---|---|---|---|---|"]
    for error, metrics, _ in runs:
        for method in FIGURE6_ROWS:
            if method not in metrics:
                continue
            row = metrics[method]
            lines.append(f"| {error} | {method} | {_ci(row['share_desirable']['values'])} | "
                         f"{_ci(row['share_undesirable']['values'])} | {_ci(toy_alignment(row, metrics['pretrained']))} | "
                         f"{_ci(row['energy_to_pretrained']['values'])} |")
    return lines


def sweep_tables(sweeps, figure6_by_error) -> List[str]:
    lines = ["Per beta (mean over 3 seeds): alignment / energy distance to the pretrained model.", "",
             "| beta | " + " | ".join(e for e, _, _ in sweeps) + " |", "|---|" + "---|" * len(sweeps)]
    betas = sorted({float(b) for _, rows, _ in sweeps for b in rows}, key=float)
    per_error = {}
    for error, rows, _ in sweeps:
        pre = figure6_by_error[error]["pretrained"]
        done = lambda b: str(b) in rows and "diverged" not in rows[str(b)]  # a diverged beta is no setting to use
        align = np.array([toy_alignment(rows[str(b)], pre) if done(b) else np.full(3, np.nan) for b in betas])
        drift = np.array([rows[str(b)]["energy_to_pretrained"]["values"] if done(b) else np.full(3, np.nan)
                          for b in betas])
        per_error[error] = (align, drift)
    def cell(error, rows, i):
        if str(betas[i]) not in rows:
            return "-"  # not in this sweep
        if "diverged" in rows[str(betas[i])]:
            return "diverged"
        return f"{np.mean(per_error[error][0][i]):.3f} / {np.mean(per_error[error][1][i]):.3f}"

    for i, b in enumerate(betas):
        cells = [cell(e, rows, i) for e, rows, _ in sweeps]
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    lines += ["", "Best alignment within a drift budget (energy distance to the pretrained model), over the betas "
              "above; mean (95 % t interval) over seeds.", "",
              "| drift budget | " + " | ".join(e for e, _, _ in sweeps) + " |", "|---|" + "---|" * len(sweeps)]
    best = {e: {budget: best_within(np.nan_to_num(per_error[e][0], nan=-1), np.nan_to_num(per_error[e][1], nan=9),
                                    budget) for budget in TOY_BUDGETS} for e, _, _ in sweeps}
    for budget in TOY_BUDGETS:
        lines.append(f"| {budget:g} | " + " | ".join(_ci(best[e][budget]) for e, _, _ in sweeps) + " |")
    first, others = sweeps[0][0], [e for e, _, _ in sweeps[1:]]
    lines += ["", f"Paired over seeds (the same seeds train every choice): {first} minus each other choice, best "
              "alignment within the budget; per seed, then mean (95 % t interval).", "",
              "| drift budget | " + " | ".join(f"{first} - {e}" for e in others) + " |", "|---|" + "---|" * len(others)]
    for budget in TOY_BUDGETS:
        cells = []
        for e in others:
            d = best[first][budget] - best[e][budget]
            cells.append(f"{' '.join(f'{x:+.3f}' for x in d)}: {_ci(d)}")
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    return lines


def best_gain_within(rows: List[Dict], method: str, error: str, seeds, cost, budget: float) -> List[float]:
    """Per seed, the best redness gain over ``method``'s settings with this error whose ``cost`` is within budget."""
    return [max([r["score"] - r["base_score"] for r in rows if r["method"] == method and r["flow_error"] == error
                 and r["seed"] == s and cost(r) <= budget], default=0.0) for s in seeds]


SYNTHETIC_COLUMNS = ("method", "flow_error", "beta", "seed", "score", "fidelity", "distance", "base_score",
                     "base_fidelity")


def synthetic_rows(source: Path) -> List[Dict]:
    """One row per finished cell: from a flow-plan sweep directory, or from the CSV this script wrote of one."""
    import csv

    if source.is_file():
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: (r[k] if k in ("method", "flow_error") else (None if r[k] == "" else float(r[k]))) for k in r}
                for r in rows]
    from kto_lab.synthetic.sweep import load_cells

    return [{"method": c["cell"]["method"], "flow_error": c["cell"]["flow_error"], "beta": c["cell"]["beta"],
             "seed": c["cell"]["seed"], "score": c["final"]["score"], "fidelity": c["final"]["fidelity"],
             "distance": c["final"]["distance"], "base_score": c["base"]["score"],
             "base_fidelity": c["base"]["fidelity"]} for c in load_cells(source)]


def write_synthetic_rows(rows: List[Dict], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, SYNTHETIC_COLUMNS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["method"], r["flow_error"], r["beta"] or 0, r["seed"])):
            w.writerow({k: ("" if r[k] is None else r[k]) for k in SYNTHETIC_COLUMNS})


def synthetic_tables(rows: List[Dict]) -> List[str]:
    if not rows:
        return ["(no finished cell)"]
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["flow_error"], r["beta"]), []).append(r)
    lines = ["| method | flow_error | beta | seeds | redness gain | fidelity | distance from base | gain per unit distance |",
             "|---|---|---|---|---|---|---|---|"]
    for (method, error, beta), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        gain = [r["score"] - r["base_score"] for r in rs]
        dist = [r["distance"] for r in rs]
        lines.append(f"| {method} | {error} | {'' if beta is None else f'{beta:g}'} | {len(rs)} | {_ci(gain)} | "
                     f"{_ci([r['fidelity'] for r in rs])} | {_ci(dist)} | {_ci([g / d for g, d in zip(gain, dist)])} |")
    lines += ["", f"Base model: redness {rows[0]['base_score']:.3f}, fidelity {rows[0]['base_fidelity']:.3f}."]
    seeds = sorted({r["seed"] for r in rows})
    drifts = (("distance", "distance from base", lambda r: r["distance"], SYNTHETIC_BUDGETS),
              ("fidelity", "fidelity lost", lambda r: r["base_fidelity"] - r["fidelity"], FIDELITY_BUDGETS))
    for _, label, cost, budgets in drifts:
        lines += ["", f"Best redness gain within a budget of {label}, over each method's betas; mean (95 % t interval) "
                  "over seeds (0: no setting stayed within the budget).", "",
                  f"| method | {label} budget | velocity | epsilon | x0 |", "|---|---|---|---|---|"]
        for method in ("kto", "nft"):
            for budget in budgets:
                row = [_ci(best_gain_within(rows, method, error, seeds, cost, budget))
                       for error in ("velocity", "epsilon", "x0")]
                lines.append(f"| {method} | {budget:g} | " + " | ".join(row) + " |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--figure6", nargs="+", required=True, type=Path, help="folders of flow Figure 6 runs")
    p.add_argument("--sweeps", nargs="+", required=True, type=Path, help="folders of flow beta sweeps")
    p.add_argument("--synthetic", type=Path, default=None,
                   help="a flow-plan sweep directory of the shapes world, or the cells CSV written by --write-cells")
    p.add_argument("--write-cells", type=Path, default=None, help="write the synthetic cells' final metrics here (CSV)")
    p.add_argument("--out", type=Path, default=None, help="write the tables here (Markdown); default: print")
    args = p.parse_args(argv)
    runs = [read_figure6(f) for f in args.figure6]
    sweeps = [read_sweep(f) for f in args.sweeps]
    by_error = {e: m for e, m, _ in runs}
    missing = [e for e, _, _ in sweeps if e not in by_error]
    if missing:
        raise SystemExit(f"no --figure6 run for flow_error {missing}: its pretrained rows anchor the sweep's alignment")
    lines = ["# Which error is a flow model's implicit reward? (objective.flow_error)", "",
             "Made by `python benchmarks/flow_error_report.py` from the runs below (its docstring has the full command). "
             "Alignment: share in P_d's region minus share in P_u's, above the pretrained model's; drift: energy distance "
             "to the pretrained model's samples. The reading and the chosen default: docs/toy.md, \"Which error is a "
             "flow model's implicit reward?\".", "",
             "## The flow toy: Figure 6 per flow_error (3 seeds; mean, 95 % t interval)", "",
             *[f"- {e}: `{cmd}`" for e, _, cmd in runs], "", *figure6_table(runs), "",
             "## The flow toy: Diffusion-KTO over beta per flow_error", "",
             *[f"- {e}: `{cmd}`" for e, _, cmd in sweeps], "", *sweep_tables(sweeps, by_error)]
    if args.synthetic is not None:
        rows = synthetic_rows(args.synthetic)
        if args.write_cells is not None:
            write_synthetic_rows(rows, args.write_cells)
        lines += ["", "## The shapes world under flow matching (red user; 3 seeds; mean, 95 % t interval)", "",
                  "`kto-lab synthetic sweep --plan flow --base figures/synthetic/base_flow/pipeline --out runs/sweeps/flow`"
                  f" ({len(rows)} cells; final value = mean over the checkpoints at steps 60, 90, 120).", "",
                  *synthetic_tables(rows)]
    text = "\n".join(lines) + "\n"
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
