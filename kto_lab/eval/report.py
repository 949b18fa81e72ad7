"""Tables (CSV + Markdown, the paper's Tables 1-3 layout) and figures of an evaluation.

* win-rate table: rows ``A vs B``, columns metrics, cells ``win% [low, high]`` (Tables 1, 3-5);
* mean-score table: rows models, columns metrics, cells ``mean ± half-width of the 95% CI`` (Table 2);
* a win-rate bar chart with CI error bars, and per-metric score distributions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from kto_lab.plotting import label, new_figure


def markdown_table(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (no dependency on ``tabulate``)."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4g}"
    return str(v)


def win_rate_wide(wins: pd.DataFrame, style: str = "all", paper: bool = False) -> pd.DataFrame:
    """Rows ``A vs B``, columns metrics, cells ``62.5 [55.0, 70.0]`` (percent); with ``paper``, the
    paper's interval over all images as ``62.5 ± 1.90`` (Diffusion-KTO Tables 3-5)."""
    w = wins[wins["style"] == style].copy()
    w["pair"] = w["model_a"] + " vs " + w["model_b"]
    lows, highs = (w.paper_ci_low, w.paper_ci_high) if paper else (w.ci_low, w.ci_high)
    cells = []
    for r, lo, hi, n in zip(w.win_rate, lows, highs, w.n_prompts):
        if np.isnan(lo) or np.isnan(hi):  # too few prompts for an interval (stats.MIN_PROMPTS)
            cells.append(f"{r:.1f} [no interval: {n} prompts]")
        else:
            cells.append(f"{r:.1f} ± {(hi - lo) / 2:.2f}" if paper else f"{r:.1f} [{lo:.1f}, {hi:.1f}]")
    w["cell"] = cells
    return w.pivot(index="pair", columns="metric", values="cell")


def _tie_line(wins: pd.DataFrame) -> str:
    """The tie rule and each metric's tolerance, for the report."""
    if "tie_tolerance" not in wins:
        return ""
    tol = wins.drop_duplicates("metric").set_index("metric")["tie_tolerance"]
    few = wins.get("ci_note", pd.Series(dtype=str)).fillna("").astype(bool).any()
    least = f" No interval from fewer than {int(wins['min_prompts'].max())} prompts." if few and "min_prompts" in wins else ""
    return ("Ties (count half): median scores within the scorer's tie tolerance, " +
            ", ".join(f"{m} {t:.3g}" for m, t in tol.items()) + f" (docs/evaluation.md).{least}\n")


def mean_wide(means: pd.DataFrame, style: str = "all") -> pd.DataFrame:
    """Rows models, columns metrics, cells ``mean ± half-width``."""
    m = means[means["style"] == style].copy()
    m["cell"] = [f"{mu:.4g} ± {(hi - lo) / 2:.2g}" for mu, lo, hi in zip(m["mean"], m.ci_low, m.ci_high)]
    return m.pivot(index="model", columns="metric", values="cell")


def write_report(out_dir, wins: pd.DataFrame, means: pd.DataFrame, nsfw: Optional[pd.DataFrame] = None,
                 title: str = "Evaluation") -> Dict[str, Path]:
    """Write win_rates.csv, mean_scores.csv, nsfw.csv and report.md under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"win_rates": out_dir / "win_rates.csv", "mean_scores": out_dir / "mean_scores.csv",
             "report": out_dir / "report.md"}
    wins.to_csv(paths["win_rates"], index=False)
    means.to_csv(paths["mean_scores"], index=False)
    md: List[str] = [f"# {title}\n"]
    if len(wins):
        method = wins["ci_method"].iloc[0]
        md += [f"## Win rate (%) of A over B, median of N images per prompt, ties count half; 95% CI ({method})\n",
               _tie_line(wins), markdown_table(win_rate_wide(wins))]
        if "paper_ci_low" in wins:
            md += ["\n### The same win rates with the papers' interval: normal approximation over all generated "
                   "images (Diffusion-KTO Tables 3-5; narrower: it counts every image as an independent trial)\n",
                   markdown_table(win_rate_wide(wins, paper=True))]
        styles = [s for s in wins["style"].unique() if s != "all"]
        for s in styles:
            md += [f"\n### Style: {s}\n", markdown_table(win_rate_wide(wins, s))]
        fails = wins[(wins["style"] == "all")][["model_a", "model_b", "metric", "n_prompts", "failed_a", "failed_b",
                                                 "excluded", "on_failure"]]
        md += ["\n### Prompts with no generated image (counted, see `on_failure`)\n", markdown_table(fails, index=False)]
    if len(means):
        md += ["\n## Mean score over all images (95% t-interval of the mean)\n", markdown_table(mean_wide(means))]
        for s in [s for s in means["style"].unique() if s != "all"]:
            md += [f"\n### Style: {s}\n", markdown_table(mean_wide(means, s))]
    if nsfw is not None and len(nsfw):
        paths["nsfw"] = out_dir / "nsfw.csv"
        nsfw.to_csv(paths["nsfw"], index=False)
        md += ["\n## Share of images flagged by the safety checker (%)\n", markdown_table(nsfw, index=False)]
    paths["report"].write_text("\n".join(md), encoding="utf-8")
    return paths


def plot_win_rates(wins: pd.DataFrame, path=None, style: str = "all"):
    """Grouped bars: one group per metric, one bar per ``A vs B``, 95% CI error bars, 50% line.

    Returns the figure (a notebook shows it); saves it too when ``path`` is given.
    """
    w = wins[wins["style"] == style]
    metrics = list(dict.fromkeys(w["metric"]))
    pairs = list(dict.fromkeys(zip(w["model_a"], w["model_b"])))
    width = 0.8 / max(1, len(pairs))
    fig = new_figure(figsize=(max(5.5, 2.4 + 1.5 * len(metrics)), 3.8 + 0.16 * len(pairs)), layout="constrained")
    ax = fig.subplots()
    for j, (a, b) in enumerate(pairs):
        sel = w[(w["model_a"] == a) & (w["model_b"] == b)].set_index("metric").reindex(metrics)
        x = np.arange(len(metrics)) + (j - (len(pairs) - 1) / 2) * width
        err = np.stack([sel.win_rate - sel.ci_low, sel.ci_high - sel.win_rate])
        ns = sorted(set(sel["n_prompts"].dropna().astype(int)))
        n = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        ax.bar(x, sel.win_rate, width, yerr=err, capsize=3, label=f"{label(a)} vs {label(b)} (n = {n} prompts)")
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(metrics)), [label(m) for m in metrics])
    ax.set_ylim(0, 103)  # room for a CI cap at 100
    ax.set_ylabel("win rate of A over B (%)")
    scope = "" if style == "all" else f", style {style}"
    ci = f" ({w['ci_method'].iloc[0]})" if "ci_method" in w and len(w) else ""
    fig.suptitle(f"Win rate of A over B{scope}\nmedian image per prompt, ties count half; 95% CI{ci}; dashed: even",
                 fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_score_distributions(df: pd.DataFrame, metrics: Sequence[str], path=None):
    """One panel per metric: a histogram of all image scores per model.

    Returns the figure (a notebook shows it); saves it too when ``path`` is given.
    """
    ok = df[df["status"] == "ok"]
    fig = new_figure(figsize=(3.2 * len(metrics), 3.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = ok[metric].dropna()
        bins = np.linspace(values.min(), values.max(), 21) if len(values) and values.max() > values.min() else 10
        for model, g in ok.groupby("model", sort=False):
            ax.hist(g[metric].dropna(), bins=bins, alpha=0.5, label=f"{label(model)} (n = {g[metric].notna().sum()})")
        ax.set_title(label(metric))
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("images")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Scores of every generated image, per model", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
