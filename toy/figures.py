"""Draw and save Figures 6 and 9 and the ablation plots; write the metrics files.

``write_figure6(result, out)`` -> ``figure6.png``, ``figure6_metrics.json`` (methods as keys),
``figure6_metrics.csv`` / ``figure6_metrics.md`` (the table, mean ± sd over seeds, plus the
scores of exact draws of P_d and P_u), ``figure6_samples.npz`` (first seed) and
``figure6_run.json`` (config, seeds, timings). ``write_figure9(out)`` -> ``figure9.png``.
``write_ablations(result, out)`` -> ``ablation.png``, ``ablation_metrics.json``/``.csv``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves
import numpy as np  # noqa: E402
import torch  # noqa: E402

from kto_lab.config import to_dict  # noqa: E402
from kto_lab.objectives import centered, get_utility  # noqa: E402

from .data import DESIRABLE, UNDESIRABLE  # noqa: E402
from .metrics import METRICS, REGION_RADIUS_STD  # noqa: E402
from .run import Figure6Result, reference_metrics  # noqa: E402
from .train import METHOD_LABELS  # noqa: E402

TABLE_METRICS = METRICS
PAPER_UTILITIES = ("loss_averse", "kto", "risk_seeking")
UTILITY_LABELS = {"loss_averse": "Loss-Averse: log σ(x)", "kto": "KTO: σ(x)",
                  "risk_seeking": "Risk-Seeking: -log σ(-x)", "prospect": "prospect value fn (extra)"}


def _label(method: str, cfg=None) -> str:
    label = METHOD_LABELS.get(method, method)
    overrides = (cfg.method_overrides or {}).get(method) if cfg is not None else None
    if overrides:  # method_overrides may be None (ToyConfig.validate allows it)
        label += "\n(" + ", ".join(f"{k}={v:g}" for k, v in overrides.items()) + ")"
    return label


def _draw_sources(ax):
    for src, color in ((DESIRABLE, "tab:green"), (UNDESIRABLE, "tab:red")):
        ax.add_patch(plt.Circle(src.mean, REGION_RADIUS_STD * src.std, fill=False, color=color, lw=1.2, ls="--"))
        ax.plot(*src.mean, marker="+", color=color, ms=8)


def plot_figure6(result: Figure6Result, path: Optional[Path] = None):
    """Scatter panels (first seed), one per method, beside bar charts of the metrics (mean ± sd)."""
    methods = list(result.samples)
    ncol = 3
    nrow = math.ceil(len(methods) / ncol)
    fig = plt.figure(figsize=(4 * ncol + 6.5, 3.8 * nrow))
    outer = fig.add_gridspec(1, 2, width_ratios=[3 * ncol, 5.5], wspace=0.25)
    left = outer[0].subgridspec(nrow, ncol)
    g = torch.Generator().manual_seed(0)
    des, und = DESIRABLE.sample(400, g), UNDESIRABLE.sample(400, g)
    for i, method in enumerate(methods):
        ax = fig.add_subplot(left[i // ncol, i % ncol])
        ax.scatter(des[:, 0], des[:, 1], s=2, color="tab:green", alpha=0.25, label="desirable source P_d")
        ax.scatter(und[:, 0], und[:, 1], s=2, color="tab:red", alpha=0.25, label="undesirable source P_u")
        x = result.samples[method].numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1.5, color="tab:blue", alpha=0.35, label="model samples")
        _draw_sources(ax)
        s = result.summary[method]
        ax.set_title(f"{_label(method, result.config)}\nin P_d {s['share_desirable']['mean']:.2f}, "
                     f"in P_u {s['share_undesirable']['mean']:.2f}", fontsize=8.5)
        ax.set_xlim(-0.2, 1.2), ax.set_ylim(0.1, 1.5), ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6, loc="upper right", markerscale=4)
    # metrics beside the panels
    y = np.arange(len(methods))
    names = [METHOD_LABELS.get(m, m).replace("Diffusion-", "") for m in methods]
    panels = [("share of samples (mean ± sd over seeds)", ("share_desirable", "share_undesirable", "share_elsewhere")),
              ("energy distance to P_d (lower is better)", ("energy_to_desirable",)),
              ("mean log-density", ("logp_desirable", "logp_undesirable")),
              ("how far it moved from the pretrained model", ("energy_to_pretrained", "param_change"))]
    right = outer[1].subgridspec(len(panels), 1, hspace=0.45)
    colors = {"share_desirable": "tab:green", "share_undesirable": "tab:red", "share_elsewhere": "tab:gray",
              "logp_desirable": "tab:green", "logp_undesirable": "tab:red", "energy_to_desirable": "tab:blue",
              "energy_to_pretrained": "tab:purple", "param_change": "tab:orange"}
    for k, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(right[k])
        h = 0.8 / len(keys)
        for j, key in enumerate(keys):
            mean = [result.summary[m][key]["mean"] for m in methods]
            sd = [result.summary[m][key]["sd"] for m in methods]
            ax.barh(y + (j - (len(keys) - 1) / 2) * h, mean, h, xerr=sd, color=colors[key], label=key, capsize=1.5)
        ax.set_yticks(y, names, fontsize=6.5)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=8.5)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=6, loc="best")
        if "logp" in keys[0]:
            lo = min(result.summary[m][kk]["mean"] for m in methods for kk in keys)
            ax.set_xlim(max(lo, -8) - 0.5, None)
    fig.suptitle(f"Figure 6 (toy, Diffusion-KTO sec. 6): {len(result.seeds)} seed(s), panels show seed {result.seeds[0]}; "
                 f"beta={result.config.beta:g}, gamma={result.config.gamma:g}, {result.config.steps} steps", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig


def metrics_table(summary: Dict, config=None, references: bool = True):
    """Rows of (method, metric -> 'mean ± sd') plus the exact-draw reference rows."""
    rows = []
    for method, ms in summary.items():
        rows.append({"method": method, **{k: f"{ms[k]['mean']:.3f} ± {ms[k]['sd']:.3f}" for k in TABLE_METRICS if k in ms}})
    if references:
        for name, ms in reference_metrics(config.n_samples if config else 3500).items():
            rows.append({"method": name, **{k: f"{v:.3f}" for k, v in ms.items()}})
    return rows


def write_figure6(result: Figure6Result, out: Path, command: str = "") -> Dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"figure6{s}" for k, s in (("png", ".png"), ("json", "_metrics.json"), ("csv", "_metrics.csv"),
                                                 ("md", "_metrics.md"), ("npz", "_samples.npz"), ("run", "_run.json"))}
    plot_figure6(result, paths["png"])
    paths["json"].write_text(json.dumps(result.summary, indent=1))
    rows = metrics_table(result.summary, result.config)
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", *TABLE_METRICS], restval="")
        w.writeheader(), w.writerows(rows)
    lines = [f"Figure 6 metrics, mean ± sd over seeds {result.seeds} (the 'data' rows: exact draws of the sources).",
             f"Made by: `{command}`" if command else "", "",
             "| method | " + " | ".join(TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 1) + "|"]
    lines += ["| " + " | ".join([r["method"]] + [r.get(k, "") for k in TABLE_METRICS]) + " |" for r in rows]
    paths["md"].write_text("\n".join(lines) + "\n")
    np.savez_compressed(paths["npz"], **{m: x.numpy() for m, x in result.samples.items()})
    paths["run"].write_text(json.dumps({"command": command, "seeds": result.seeds, "config": to_dict(result.config),
                                        "seconds": result.seconds}, indent=1))
    return paths


def plot_figure9(path: Optional[Path] = None, utilities: Sequence[str] = PAPER_UTILITIES, lim: float = 5.0):
    """Each utility, centred so U(0) = 0 (sec. 4.2), and its first derivative (autograd)."""
    x = torch.linspace(-lim, lim, 801, requires_grad=True)
    fig, (ax_u, ax_d) = plt.subplots(1, 2, figsize=(10, 4))
    for name in utilities:
        u = centered(get_utility(name))(x)
        (du,) = torch.autograd.grad(u.sum(), x)
        label = UTILITY_LABELS.get(name, name)
        ax_u.plot(x.detach(), u.detach(), label=label)
        ax_d.plot(x.detach(), du, label=label)
    for ax, title in ((ax_u, "U(x) - U(0)"), (ax_d, "U'(x)")):
        ax.axhline(0, color="k", lw=0.5), ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("x = w(x0) * (implicit reward - Q_ref)"), ax.set_title(title), ax.legend(fontsize=8)
    ax_u.set_ylim(-lim, lim)
    fig.suptitle("Figure 9: utility functions, centred so U(0) = 0, and their first derivatives")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def write_figure9(out: Path, utilities: Sequence[str] = PAPER_UTILITIES) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_figure9(out / "figure9.png", utilities)
    return out / "figure9.png"


ABLATION_METRICS = ("share_desirable", "share_undesirable", "share_elsewhere", "energy_to_desirable", "energy_to_pretrained")


def plot_ablations(result: Dict, path: Optional[Path] = None):
    knobs = [k for k in ("beta", "gamma", "utility") if result.get(k)]
    fig, axes = plt.subplots(len(ABLATION_METRICS), len(knobs), figsize=(4.2 * len(knobs), 2.3 * len(ABLATION_METRICS)),
                             squeeze=False)
    for j, knob in enumerate(knobs):
        values = [v for v, s in result[knob].items() if "diverged" not in s]
        xs = np.arange(len(values))
        for i, metric in enumerate(ABLATION_METRICS):
            ax = axes[i, j]
            mean = [result[knob][v][metric]["mean"] for v in values]
            sd = [result[knob][v][metric]["sd"] for v in values]
            if knob == "utility":
                ax.bar(xs, mean, yerr=sd, capsize=3, color="tab:blue")
            else:
                ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=3)
            ax.set_xticks(xs, values, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            if j == 0:
                ax.set_ylabel(metric, fontsize=8)
            if i == 0:
                bad = [v for v, s in result[knob].items() if "diverged" in s]
                ax.set_title(f"Diffusion-KTO vs {knob}" + (f"\n(diverged: {', '.join(bad)})" if bad else ""), fontsize=9)
            if i == len(ABLATION_METRICS) - 1:
                ax.set_xlabel(knob, fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def write_ablations(result: Dict, out: Path, command: str = "", config=None) -> Dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / "ablation.png", "json": out / "ablation_metrics.json", "csv": out / "ablation_metrics.csv"}
    plot_ablations(result, paths["png"])
    meta = {"command": command, "config": to_dict(config) if config is not None else None}
    paths["json"].write_text(json.dumps({**result, "_run": meta}, indent=1))
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["knob", "value", *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd")), "diverged"])
        for knob in ("beta", "gamma", "utility"):
            for value, s in result.get(knob, {}).items():
                if "diverged" in s:
                    w.writerow([knob, value, *([""] * 2 * len(METRICS)), s["diverged"]])
                else:
                    w.writerow([knob, value, *(f"{s[m][k]:.4f}" if m in s else "" for m in METRICS for k in ("mean", "sd")), ""])
    return paths
