"""Figures and tables of a sweep directory (:mod:`kto_lab.synthetic.sweep`), from its cell files only.

    kto-lab synthetic sweep-report --run runs/sweeps/red --out figures/kto_vs_dpo
    kto-lab synthetic sweep-report --out figures/kto_vs_dpo --redraw    # the figures again, from its tables

* ``comparison.md`` / ``.csv``: every method at the default setting on balanced feedback, mean and
  95 % interval over seeds of its final score (mean over its last checkpoints);
* ``frontier.png`` / ``frontier.csv``: the user's score against prompt fidelity and against the
  distance from the base model, one curve per method through its settings (beta for KTO / DPO,
  the learning rate for SFT / CSFT / BCE), Pareto-optimal settings ringed;
* ``regimes.png`` / ``regimes.csv``: per data regime, the win rate of Diffusion-KTO over
  Diffusion-DPO, image by image on the same captions and seeds, on the user's score and on
  fidelity (mean over seeds, 95 % t interval over seeds), and each method's means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..eval.frontier import plot_frontier, save_figure, summarize_over_seeds
from ..eval.stats import mean_ci, outcomes
from ..plotting import label, new_figure
from .experiment import METHODS
from .regimes import REGIMES
from .sweep import SweepConfig, load_cells, plan_settings, uses_beta
from .users import get_user

METRICS = ("score", "fidelity", "fidelity_all", "distance")
SETTING = ["regime", "method", "beta", "learning_rate"]


def cells_frame(run: str | Path):
    """One row per finished cell: its setting, seed, final metrics and seconds."""
    import pandas as pd

    rows = [{**c["cell"], **c["final"], "seconds": c["seconds"]} for c in load_cells(run)]
    if not rows:
        raise FileNotFoundError(f"no finished cell in {str(run)!r} (expected {Path(run) / 'cells'}/*.json)")
    df = pd.DataFrame(rows)
    df["beta"] = df["beta"].astype(float)  # NaN for methods without beta
    df["knob"] = np.where(df["method"].map(uses_beta), df["beta"], df["learning_rate"])
    return df


def frontier_series(summary):
    """One curve per knob: KTO and DPO get a beta curve (at the default learning rate) and a learning-rate
    curve (at the default beta; the default setting is on both); SFT, CSFT, BCE a learning-rate curve; a
    method with one setting (KTO's other utilities, SPIN) is a single point. Adds ``series`` and ``knob``."""
    import pandas as pd

    d = SweepConfig()
    parts = []
    for method, g in summary.groupby("method", sort=False):
        if len(g) == 1 or not uses_beta(method):
            parts.append(g.assign(series=method, knob=g.learning_rate))
            continue
        for knob, part in (("beta", g[g.learning_rate == d.learning_rate]), ("learning rate", g[g.beta == d.beta])):
            if len(part) > 1:
                parts.append(part.assign(series=f"{method}, {knob}",
                                         knob=part.beta if knob == "beta" else part.learning_rate))
    return pd.concat(parts, ignore_index=True)


def series_label(series: str) -> str:
    """"kto, learning rate" -> "Diffusion-KTO, over the learning rate"; a method name -> its display name."""
    method, _, knob = series.partition(", ")
    return label(method) + (f", over {'the learning rate' if knob == 'learning rate' else 'beta'}" if knob else "")


def _base(run) -> Dict[str, float]:
    first = next(load_cells(run))
    return {**first["base"], "distance": 0.0}


def _fmt(r, m: str, digits: int = 3) -> str:
    if np.isnan(r[f"{m}_low"]):
        return f"{r[m]:.{digits}f}"
    return f"{r[m]:.{digits}f} ({r[f'{m}_low']:.{digits}f}, {r[f'{m}_high']:.{digits}f})"


def comparison_table(df, score_name: str):
    """Every method at the default setting (SweepConfig's beta and learning rate), balanced feedback."""
    d = SweepConfig()
    default = (df.regime == "balanced") & (df.learning_rate == d.learning_rate) & (df.beta.isna() | (df.beta == d.beta))
    s = summarize_over_seeds(df[default], SETTING, METRICS)
    order = [m for m in METHODS if m in set(s.method)]
    s = s.set_index("method").loc[order].reset_index()
    lines = [f"| method | seeds | {score_name} | fidelity | all attributes right | distance from base |",
             "|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(f"| {label(r.method)} | {r.n_seeds} | " + " | ".join(_fmt(r, m) for m in METRICS) + " |")
    return s, "\n".join(lines)


def plot_frontiers(summary, base: Dict[str, float], score_name: str, path: Optional[Path] = None):
    """Three panels: the user's score against fidelity (all settings, then zoomed on the settings that keep
    at least half the base's fidelity) and against the distance from the base. Returns the figure."""
    fig = new_figure(figsize=(19, 6.3), layout="constrained")
    axes = fig.subplots(1, 3)
    curves = frontier_series(summary)
    for ax, x in zip(axes, ("fidelity", "fidelity", "distance")):
        plot_frontier(ax, curves, x, "score", method_col="series", label_of=series_label, base=base,
                      maximize_x=x == "fidelity", annotate=ax is not axes[0])
    kept = curves[curves.fidelity >= base["fidelity"] / 2]
    pad_x, pad_y = 0.01, 0.02
    axes[1].set(xlim=(kept.fidelity.min() - pad_x, max(kept.fidelity.max(), base["fidelity"]) + pad_x),
                ylim=(min(kept.score.min(), base["score"]) - pad_y, kept.score.max() + pad_y))
    axes[0].set(xlabel="prompt fidelity (share of named attributes right)", ylabel=f"mean {score_name}",
                title=f"{score_name} vs prompt fidelity (up and right is better)")
    axes[1].set(xlabel="prompt fidelity", ylabel=f"mean {score_name}",
                title="zoomed: settings keeping at least half the base's fidelity")
    axes[2].set(xlabel="distance from the base model (RMS pixel change, same caption and seed)",
                ylabel=f"mean {score_name}", title=f"{score_name} vs distance moved (up and left is better)")
    axes[0].legend(fontsize=7, loc="lower left")
    return save_figure(fig, path, "point labels: the knob's value (beta or learning rate); bars: 95% interval over "
                                  "seeds; each point: mean over the last checkpoints")


def head_to_head(cell_a: Dict, cell_b: Dict, metric: str, tolerance: float = 0.0) -> float:
    """Win rate of cell A over cell B on ``metric``: image by image (same caption and seed), ties
    (``|a - b| <= tolerance``, the scorer's :func:`~kto_lab.eval.scorers.tie_tolerance`) count half, the i-th
    last checkpoint of A against the i-th last of B, averaged."""
    a, b = cell_a["per_image"], cell_b["per_image"]
    pairs = zip(sorted(a, key=int), sorted(b, key=int))
    return float(np.mean([outcomes(a[i][metric], b[j][metric], tolerance).mean() for i, j in pairs]))


def tie_tolerances(run) -> Dict[str, float]:
    """The head-to-head tie tolerances of a study directory's world (its ``world.json``'s user): the user's
    score ties within its scorer's tolerance; fidelity is a share of attributes (discrete), so only equal ones tie."""
    import json

    from kto_lab.eval.scorers import tie_tolerance

    scorer = get_user(json.loads((Path(run) / "world.json").read_text())["user"]).scorer
    return {"score": tie_tolerance(scorer), "fidelity": 0.0}


def regime_table(run, methods=("kto", "dpo")):
    """Per regime and pair of settings (KTO's beta and learning rate, DPO's): win rate of KTO over DPO
    (score, fidelity) over seeds, and each method's mean score and fidelity."""
    import pandas as pd

    tolerance = tie_tolerances(run)
    wanted = plan_settings(run, "regimes")  # the frontier's balanced cells take part only where this plan asked
    cells = {}
    for c in load_cells(run):
        k = c["cell"]
        if k["method"] in methods and (wanted is None or (k["regime"], k["method"], k["beta"], k["learning_rate"]) in wanted):
            cells.setdefault((k["regime"], k["method"], k["beta"], k["learning_rate"]), {})[k["seed"]] = c
    rows = []
    for regime in REGIMES:
        kto = sorted((b, lr) for (r, m, b, lr) in cells if r == regime and m == methods[0])
        dpo = sorted((b, lr) for (r, m, b, lr) in cells if r == regime and m == methods[1])
        for bk, lk in kto:
            for bd, ld in dpo:
                a, b = cells[(regime, methods[0], bk, lk)], cells[(regime, methods[1], bd, ld)]
                seeds = sorted(set(a) & set(b))
                if not seeds:
                    continue
                row = {"regime": regime, "kto_beta": bk, "kto_lr": lk, "dpo_beta": bd, "dpo_lr": ld,
                       "n_seeds": len(seeds), "counts": a[seeds[0]]["feedback"]["counts"]}
                for metric in ("score", "fidelity"):
                    ci = mean_ci([head_to_head(a[s], b[s], metric, tolerance[metric]) for s in seeds])  # t, clipped
                    row.update({f"win_{metric}": ci.mean, f"win_{metric}_low": max(0.0, ci.low),
                                f"win_{metric}_high": min(1.0, ci.high)})
                for metric in ("score", "fidelity", "distance"):
                    for name, cs in (("kto", a), ("dpo", b)):
                        m = mean_ci([cs[s]["final"][metric] for s in seeds])
                        row.update({f"{name}_{metric}": m.mean, f"{name}_{metric}_low": m.low,
                                    f"{name}_{metric}_high": m.high})
                rows.append(row)
    return pd.DataFrame(rows)


def _pairing(r) -> str:
    return f"KTO beta {r['kto_beta']:g} lr {r['kto_lr']:g} vs DPO beta {r['dpo_beta']:g} lr {r['dpo_lr']:g}"


def plot_regimes(table, score_name: str, path: Optional[Path] = None):
    """Win rate of KTO over DPO per regime (score, fidelity) and each method's means. Returns the figure."""
    pairings = list(dict.fromkeys(table.apply(_pairing, axis=1)))
    regimes = [r for r in REGIMES if r in set(table.regime)]
    fig = new_figure(figsize=(17, 5.3), layout="constrained")
    axes = fig.subplots(1, 3)
    width = 0.8 / max(len(pairings), 1)
    x = np.arange(len(regimes))
    drawn = set()
    for k, pairing in enumerate(pairings):
        t = table[table.apply(_pairing, axis=1) == pairing].set_index("regime").reindex(regimes)
        for ax, metric in zip(axes[:2], ("score", "fidelity")):
            mid = 100 * t[f"win_{metric}"]
            err = 100 * np.abs(np.vstack([t[f"win_{metric}"] - t[f"win_{metric}_low"],
                                          t[f"win_{metric}_high"] - t[f"win_{metric}"]]))
            ax.bar(x + (k - (len(pairings) - 1) / 2) * width, mid, width, yerr=np.nan_to_num(err), capsize=3,
                   label=pairing, color=f"C{k}")
        for name, marker in (("kto", "o"), ("dpo", "s")):  # DPO in its pairing's colour, KTO in greys
            setting = (name, t[f"{name}_beta"].iloc[0], t[f"{name}_lr"].iloc[0])
            if setting in drawn:
                continue
            drawn.add(setting)
            n_kto = sum(d[0] == "kto" for d in drawn)
            color = f"C{k}" if name == "dpo" else str(min(0.6, 0.3 * (n_kto - 1)))
            axes[2].errorbar(t[f"{name}_fidelity"], t[f"{name}_score"], fmt=marker, ms=5, color=color,
                             mfc="none" if name == "dpo" else color,
                             label=f"{label(name)} beta {setting[1]:g} lr {setting[2]:g}")
            for r, (fx, sy) in zip(regimes, zip(t[f"{name}_fidelity"], t[f"{name}_score"])):
                axes[2].annotate(r, (fx, sy), fontsize=6, xytext=(3, 2), textcoords="offset points")
    for ax, metric in zip(axes[:2], (score_name, "prompt fidelity")):
        ax.axhline(50, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, regimes, rotation=20, fontsize=8)
        ax.set(ylim=(0, 100), ylabel=f"win rate of KTO over DPO, {metric} (%)",
               title=f"KTO vs DPO per data regime: {metric}")
    axes[0].legend(fontsize=7)
    axes[2].set(xlabel="prompt fidelity", ylabel=f"mean {score_name}", title="each method per regime (mean over seeds)")
    axes[2].legend(fontsize=7)
    return save_figure(fig, path, "win rate: image by image on the same captions and seeds, ties half, last "
                                  "checkpoints; bars: 95% t interval over seeds")


def regime_markdown(table, score_name: str) -> str:
    lines = [f"| regime | data, seed 0 (images / liked / pairs) | KTO (beta, lr) | DPO (beta, lr) | seeds | "
             f"KTO win rate, {score_name} | KTO win rate, fidelity | KTO {score_name} | DPO {score_name} | "
             "KTO fidelity | DPO fidelity |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        c = r["counts"]
        pct = lambda m: f"{100 * r[m]:.1f}% ({100 * r[m + '_low']:.1f}, {100 * r[m + '_high']:.1f})"
        lines.append(f"| {r.regime} | {c['images']} / {c['desirable']} / {c['pairs']} | {r.kto_beta:g}, {r.kto_lr:g} | "
                     f"{r.dpo_beta:g}, {r.dpo_lr:g} | {r.n_seeds} | {pct('win_score')} | {pct('win_fidelity')} | "
                     + " | ".join(_fmt(r, m) for m in ("kto_score", "dpo_score", "kto_fidelity", "dpo_fidelity")) + " |")
    return "\n".join(lines)


def base_of_report(out: str | Path) -> Dict[str, float]:
    """The base model's means as :func:`write_report` wrote them in ``OUT/comparison.md`` (3 decimals)."""
    import re

    text = (Path(out) / "comparison.md").read_text()
    m = re.search(r"Base model: \S+ (-?\d+\.\d+), fidelity (-?\d+\.\d+), all attributes right (-?\d+\.\d+)", text)
    if m is None:
        raise ValueError(f"{Path(out) / 'comparison.md'} has no 'Base model: ...' line (written by sweep-report)")
    return {"score": float(m[1]), "fidelity": float(m[2]), "fidelity_all": float(m[3]), "distance": 0.0}


def redraw_report(out: str | Path) -> List[Path]:
    """``frontier.png`` and ``regimes.png`` drawn again from the tables :func:`write_report` saved in ``out``
    (``frontier.csv``, ``regimes.csv``, ``comparison.md``'s base line, ``world.json``), without the sweep
    directory: ``kto-lab synthetic sweep-report --out OUT --redraw``. The base model's star is placed at
    its means as ``comparison.md`` rounds them (3 decimals)."""
    import json

    import pandas as pd

    out = Path(out)
    score_name = get_user(json.loads((out / "world.json").read_text())["user"]).scorer
    plot_frontiers(pd.read_csv(out / "frontier.csv"), base_of_report(out), score_name, out / "frontier.png")
    paths = [out / "frontier.png"]
    if (out / "regimes.csv").is_file():
        plot_regimes(pd.read_csv(out / "regimes.csv"), score_name, out / "regimes.png")
        paths.append(out / "regimes.png")
    return paths


def write_report(run: str | Path, out: str | Path) -> List[Path]:
    """Every figure and table of a sweep directory; returns the paths written."""
    import json

    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = json.loads((run / "world.json").read_text())
    score_name = get_user(world["user"]).scorer
    df = cells_frame(run)
    base = _base(run)
    paths: List[Path] = []
    df.drop(columns=["knob"]).to_csv(out / "cells.csv", index=False)
    paths.append(out / "cells.csv")

    summary_all = summarize_over_seeds(df, SETTING + ["knob"], METRICS)
    frontier = summary_all[summary_all.regime == "balanced"]
    frontier.to_csv(out / "frontier.csv", index=False)
    plot_frontiers(frontier, base, score_name, out / "frontier.png")
    paths += [out / "frontier.csv", out / "frontier.png"]

    comp, md = comparison_table(df, score_name)
    comp.to_csv(out / "comparison.csv", index=False)
    base_line = f"Base model: {score_name} {base['score']:.3f}, fidelity {base['fidelity']:.3f}, " \
                f"all attributes right {base['fidelity_all']:.3f}."
    (out / "comparison.md").write_text(md + "\n\n" + base_line + "\n")
    paths += [out / "comparison.csv", out / "comparison.md"]

    table = regime_table(run)
    if not table.empty:
        table.drop(columns=["counts"]).assign(**{
            k: table["counts"].map(lambda c, k=k: c[k]) for k in ("images", "desirable", "undesirable", "pairs")
        }).to_csv(out / "regimes.csv", index=False)
        (out / "regimes.md").write_text(regime_markdown(table, score_name) + "\n")
        plot_regimes(table, score_name, out / "regimes.png")
        paths += [out / "regimes.csv", out / "regimes.md", out / "regimes.png"]
    (out / "world.json").write_text(json.dumps(world, indent=2))
    paths.append(out / "world.json")
    return paths
