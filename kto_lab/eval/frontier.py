"""Frontiers over seeds: how much reward a method buys for how much of something else it gives up.

A sweep trains every method at several settings of its strength knob (beta for KTO / DPO, the
learning rate for SFT / CSFT / BCE) and several seeds. Here, shared by the shapes world and the
toy:

* :func:`summarize_over_seeds`: per setting, the mean of each metric over seeds and its Student-t
  95 % interval over seeds (:func:`kto_lab.eval.stats.mean_ci`);
* :func:`pareto_mask`: the settings no other setting beats on both axes (the Pareto frontier);
* :func:`plot_frontier`: one curve per method through its settings, ordered by the knob, with the
  intervals as error bars on both axes and the Pareto-optimal settings ringed. A method "beats"
  another where its curve lies above and to the right of the other's.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from ..plotting import label, spread_labels
from .stats import mean_ci


def summarize_over_seeds(df, by: Sequence[str], metrics: Sequence[str], seed_col: str = "seed"):
    """``df``: one row per (setting, seed). Returns one row per setting: ``n_seeds`` and, per
    metric, ``<metric>`` (mean over seeds), ``<metric>_low`` / ``<metric>_high`` (95 % t interval)."""
    import pandas as pd

    rows = []
    for key, g in df.groupby(list(by), sort=True, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n_seeds"] = int(g[seed_col].nunique())
        for m in metrics:
            ci = mean_ci(g[m].to_numpy(dtype=float))
            row[m], row[f"{m}_low"], row[f"{m}_high"] = ci.mean, ci.low, ci.high
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(x, y, maximize_x: bool = True, maximize_y: bool = True) -> np.ndarray:
    """True where no other point is at least as good on both axes and better on one."""
    x = np.asarray(x, dtype=float) * (1 if maximize_x else -1)
    y = np.asarray(y, dtype=float) * (1 if maximize_y else -1)
    better_or_equal = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
    strictly = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


def plot_frontier(ax, summary, x: str, y: str, *, method_col: str = "method", knob_col: str = "knob",
                  label_of: Callable[[str], str] = label, maximize_x: bool = True, maximize_y: bool = True,
                  base: Optional[Dict[str, float]] = None, annotate: bool = True) -> None:
    """One line per method through its settings (sorted by ``knob_col``), 95 % intervals over seeds
    as error bars, Pareto-optimal settings (over every method) ringed, the base model as a star."""
    front = pareto_mask(summary[x], summary[y], maximize_x, maximize_y)
    for k, (method, g) in enumerate(summary.groupby(method_col, sort=False)):
        g = g.sort_values(knob_col)
        color = f"C{k % 10}"
        xerr = np.abs(np.vstack([g[x] - g[f"{x}_low"], g[f"{x}_high"] - g[x]]))
        yerr = np.abs(np.vstack([g[y] - g[f"{y}_low"], g[f"{y}_high"] - g[y]]))
        ax.errorbar(g[x], g[y], xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), color=color, marker="o", ms=4,
                    lw=1.2, capsize=2, elinewidth=0.7, label=label_of(method))
        if annotate and len(g) > 1:
            for _, r in g.iterrows():
                ax.annotate(f"{r[knob_col]:g}", (r[x], r[y]), fontsize=6, color=color, xytext=(3, 3),
                            textcoords="offset points")
    ax.scatter(summary[x][front], summary[y][front], s=110, facecolors="none", edgecolors="k", lw=0.8,
               label="Pareto-optimal setting", zorder=3)
    if base is not None:
        ax.scatter([base[x]], [base[y]], marker="*", s=140, color="k", label="base model", zorder=4)
    ax.set(xlabel=x, ylabel=y)



def save_figure(fig, path=None, note: str = "", dpi: int = 120):
    """Put a one-line ``note`` under ``fig`` (a :func:`kto_lab.plotting.new_figure` with constrained
    layout), move its point labels apart (:func:`kto_lab.plotting.spread_labels`), save it to ``path``
    if given, and return it."""
    if note:
        fig.supxlabel(note, fontsize=7)
    spread_labels(fig)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
