"""Draw and save Figures 6 and 9 and the ablation plots; write the metrics files.

``write_figure6(result, out)`` -> ``figure6.png``, ``figure6_metrics.json`` (methods as keys),
``figure6_metrics.csv`` / ``figure6_metrics.md`` (the table, mean ± sd over seeds, plus the
scores of exact draws of P_d and P_u), ``figure6_samples.npz`` (first seed) and
``figure6_run.json`` (config, seeds, timings). ``write_figure9(out)`` -> ``figure9.png``.
``write_ablations(result, out)`` -> ``ablation.png``, ``ablation_metrics.json``/``.csv``.
A toy of another schedule family (``ToyConfig.family``) writes the same files with the family
in the name: ``figure6_flow.png``, ``ablation_flow_metrics.csv``, ...
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Circle

from kto_lab.config import from_dict, to_dict  # noqa: E402
from kto_lab.objectives import centered, get_utility  # noqa: E402
from kto_lab.plotting import LABELS, UTILITY_LABELS, label, new_figure

from .data import DESIRABLE, UNDESIRABLE  # noqa: E402
from .metrics import METRICS, REGION_RADIUS_STD  # noqa: E402
from .run import Figure6Result, reference_metrics  # noqa: E402

TABLE_METRICS = METRICS
PAPER_UTILITIES = ("loss_averse", "kto", "risk_seeking")
UTILITY_FORMULAS = {"loss_averse": "log σ(x)", "kto": "σ(x)", "risk_seeking": "-log σ(-x)", "prospect": "(extra)"}
SOURCE_COLORS = ((DESIRABLE, "tab:green"), (UNDESIRABLE, "tab:red"))
# Figure 6's metric panels: (title, x-axis label, metrics, colours)
FIGURE6_PANELS = (
    ("where the samples land", "share of samples",
     ("share_desirable", "share_undesirable", "share_elsewhere"), ("tab:green", "tab:red", "tab:gray")),
    ("how typical under each source", "mean log-density (nats; higher = more typical)",
     ("logp_desirable", "logp_undesirable"), ("tab:green", "tab:red")),
    ("distance between distributions", "energy distance (0 = same distribution)",
     ("energy_to_desirable", "energy_to_pretrained"), ("tab:blue", "tab:purple")),
    ("how far the weights moved", "||θ - θ_pretrained|| / ||θ_pretrained||", ("param_change",), ("tab:orange",)),
)


def _label(method: str, cfg=None) -> str:
    text = label(method)
    overrides = (cfg.method_overrides or {}).get(method) if cfg is not None else None
    if overrides:  # method_overrides may be None (ToyConfig.validate allows it)
        text += " (" + ", ".join(f"{label(k)} = {v:g}" for k, v in overrides.items()) + ")"
    return text


def _stem(name: str, config) -> str:
    """``figure6`` for the paper's (DDPM) toy, ``figure6_flow`` for the flow-matching one."""
    family = getattr(config, "family", "ddpm")
    return name if family == "ddpm" else f"{name}_{family}"


def _toy(config) -> str:
    """The toy's name in a figure title: the paper's DDPM toy, or the toy under flow matching."""
    return "toy" if getattr(config, "family", "ddpm") == "ddpm" else "toy under flow matching"


def _scatter(ax, samples, sources):
    for (name, points), (src, color) in zip(sources.items(), SOURCE_COLORS):
        ax.scatter(points[:, 0], points[:, 1], s=2, color=color, alpha=0.25, label=name)
    ax.scatter(samples[:, 0], samples[:, 1], s=1.5, color="tab:blue", alpha=0.35, label="model samples")
    for src, color in SOURCE_COLORS:
        ax.add_patch(Circle(src.mean, REGION_RADIUS_STD * src.std, fill=False, color=color, lw=1.2, ls="--"))
        ax.plot(*src.mean, marker="+", color=color, ms=8)
    ax.set_xlim(-0.2, 1.2), ax.set_ylim(0.1, 1.5), ax.set_aspect("equal")
    ax.set_xlabel("x₁", fontsize=8, labelpad=1), ax.set_ylabel("x₂", fontsize=8, labelpad=1)  # the toy's 2-D points
    ax.tick_params(labelsize=7)


def plot_figure6(result: Figure6Result, path: Optional[Path] = None):
    """Where each method's samples land (first seed), above its metrics over seeds (mean ± sd).

    Returns the figure (a notebook shows it); saves it too when ``path`` is given.
    """
    methods = list(result.samples)
    n_seeds = len(result.seeds)
    ncol = min(5, len(methods) + 1)  # + 1: a panel for the key
    nrow = math.ceil((len(methods) + 1) / ncol)
    fig = new_figure(figsize=(3.2 * ncol, 3.2 * nrow + 4.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.2 * nrow, 4.4])
    g = torch.Generator().manual_seed(0)
    sources = {"desirable source P_d": DESIRABLE.sample(400, g), "undesirable source P_u": UNDESIRABLE.sample(400, g)}
    axes = top.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, method in zip(axes, methods):
        _scatter(ax, result.samples[method].numpy(), sources)
        s = result.summary[method]
        ax.set_title(f"{_label(method, result.config)}\nin P_d's region {s['share_desirable']['mean']:.2f}, "
                     f"in P_u's {s['share_undesirable']['mean']:.2f}", fontsize=8.5)
    handles, texts = axes[0].get_legend_handles_labels()
    handles += [axes[0].patches[0], axes[0].patches[1]]
    texts += [f"P_d's region ({REGION_RADIUS_STD:g} sd)", f"P_u's region ({REGION_RADIUS_STD:g} sd)"]
    axes[len(methods)].legend(handles, texts, loc="center", fontsize=8, markerscale=4, frameon=False)
    for ax in axes[len(methods):]:
        ax.axis("off")
    seeds = f"mean over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    top.suptitle(f"The samples of seed {result.seeds[0]} ({result.config.n_samples} per model); in the titles, "
                 f"the share in each region ({seeds})", fontsize=9)

    reference = reference_metrics(result.config.n_samples)["data: P_d"]
    panels = bottom.subplots(1, len(FIGURE6_PANELS), sharey=True)
    y = np.arange(len(methods))
    for ax, (title, xlabel, keys, colors) in zip(panels, FIGURE6_PANELS):
        h = 0.8 / len(keys)
        for j, (metric, color) in enumerate(zip(keys, colors)):
            mean = [result.summary[m][metric]["mean"] for m in methods]
            sd = [result.summary[m][metric]["sd"] for m in methods] if n_seeds > 1 else None
            ax.barh(y + (j - (len(keys) - 1) / 2) * h, mean, h, xerr=sd, color=color, label=label(metric), capsize=1.5)
            if metric in reference:  # what exact draws of P_d score
                ax.axvline(reference[metric], color=color, lw=1, ls=":")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    panels[0].set_yticks(y, [_label(m) for m in methods], fontsize=8)
    panels[0].invert_yaxis()
    spread = f"mean ± sd over {n_seeds} seeds" if n_seeds > 1 else "one seed, so no spread"
    bottom.suptitle(f"Metrics ({spread}); dotted lines: what exact draws of P_d score", fontsize=9)
    cfg = result.config
    fig.suptitle(f"Figure 6 ({_toy(cfg)}, Diffusion-KTO sec. 6): β = {cfg.beta:g}, γ = {cfg.gamma:g}, {cfg.steps} "
                 f"fine-tuning steps. {LABELS['dpo']} is trained on random (desirable, undesirable) pairs: "
                 "the toy has no real pairs.", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def redraw_figure6(out: Path, family: str = "ddpm") -> Path:
    """``figure6.png`` (``figure6_flow.png``) drawn again from the files :func:`write_figure6` saved in
    ``out`` (the first seed's samples, the metrics over seeds, the run's config), without training:
    ``kto-lab toy figure6 --out OUT --redraw [--family flow]``."""
    from .train import ToyConfig

    out = Path(out)
    stem = _stem("figure6", ToyConfig(family=family))
    files = {k: out / f"{stem}{s}" for k, s in (("npz", "_samples.npz"), ("json", "_metrics.json"), ("run", "_run.json"))}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"--redraw needs the results of a figure6 run: {', '.join(missing)} missing")
    run = json.loads(files["run"].read_text())
    with np.load(files["npz"]) as npz:
        samples = {m: torch.from_numpy(npz[m]) for m in npz.files}
    result = Figure6Result(from_dict(ToyConfig, run["config"]), run["seeds"], json.loads(files["json"].read_text()),
                           samples, run["seconds"])
    plot_figure6(result, out / f"{stem}.png")
    return out / f"{stem}.png"


def _mean_sd(stat: Dict) -> str:
    """``mean ± sd``, or the mean alone for one seed (its sd would be a meaningless 0)."""
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}" if len(stat.get("values", ())) > 1 else f"{stat['mean']:.3f}"


def metrics_table(summary: Dict, config=None, references: bool = True):
    """Rows of (method, metric -> 'mean ± sd') plus the exact-draw reference rows."""
    rows = []
    for method, ms in summary.items():
        rows.append({"method": method, **{k: _mean_sd(ms[k]) for k in TABLE_METRICS if k in ms}})
    if references:
        for name, ms in reference_metrics(config.n_samples if config else 3500).items():
            rows.append({"method": name, **{k: f"{v:.3f}" for k, v in ms.items()}})
    return rows


def write_figure6(result: Figure6Result, out: Path, command: str = "") -> Dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem("figure6", result.config)
    paths = {k: out / f"{stem}{s}" for k, s in (("png", ".png"), ("json", "_metrics.json"), ("csv", "_metrics.csv"),
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
    fig = new_figure(figsize=(10, 4), layout="constrained")
    ax_u, ax_d = fig.subplots(1, 2)
    for name in utilities:
        u = centered(get_utility(name))(x)
        (du,) = torch.autograd.grad(u.sum(), x)
        text = f"{UTILITY_LABELS.get(name, name)}: {UTILITY_FORMULAS.get(name, 'registered')}"
        ax_u.plot(x.detach(), u.detach(), label=text)
        ax_d.plot(x.detach(), du, label=text)
    for ax, title in ((ax_u, "U(x) - U(0)"), (ax_d, "U'(x)")):
        ax.axhline(0, color="k", lw=0.5), ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("x = w(x₀) · β (g − z_ref)   (w = +1 desirable, −1 undesirable; eq. 8)")
        ax.set_title(title), ax.legend(fontsize=8)
    ax_u.set_ylim(-lim, lim)
    fig.suptitle("Figure 9: utility functions, centred so U(0) = 0, and their first derivatives")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_figure9(out: Path, utilities: Sequence[str] = PAPER_UTILITIES) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_figure9(out / "figure9.png", utilities)
    return out / "figure9.png"


ABLATION_METRICS = ("share_desirable", "share_undesirable", "share_elsewhere", "energy_to_desirable", "energy_to_pretrained")


def plot_ablations(result: Dict, path: Optional[Path] = None, config=None):
    """One column per setting swept (beta, gamma, utility), one row per metric, mean ± sd over seeds.

    ``config`` (the run's :class:`~toy.train.ToyConfig`) names the fixed settings in the title.
    """
    knobs = [k for k in ("beta", "gamma", "utility") if result.get(k)]
    fig = new_figure(figsize=(4.2 * len(knobs) + 0.6, 2.3 * len(ABLATION_METRICS) + 0.8), layout="constrained")
    axes = fig.subplots(len(ABLATION_METRICS), len(knobs), squeeze=False)
    reference = reference_metrics(config.n_samples if config is not None else 3500)["data: P_d"]
    fixed = {} if config is None else {"beta": str(float(config.beta)), "gamma": str(float(config.gamma)),
                                       "utility": "kto"}  # run_ablations' keys: str(value)
    seeds = set()
    for j, knob in enumerate(knobs):
        values = [v for v, s in result[knob].items() if "diverged" not in s]
        names = [UTILITY_LABELS.get(v, v) for v in values] if knob == "utility" else values
        xs = np.arange(len(values))
        for i, metric in enumerate(ABLATION_METRICS):
            ax = axes[i, j]
            if fixed.get(knob) in values:
                ax.axvspan(values.index(fixed[knob]) - 0.4, values.index(fixed[knob]) + 0.4, color="0.92", zorder=0)
            if metric in reference:
                ax.axhline(reference[metric], color="tab:green", lw=1, ls=":")
            mean = [result[knob][v][metric]["mean"] for v in values]
            sd = [result[knob][v][metric]["sd"] for v in values]
            seeds.update(len(result[knob][v][metric]["values"]) for v in values)
            if knob == "utility":
                ax.bar(xs, mean, yerr=sd, capsize=3, color="tab:blue")
            else:
                ax.errorbar(xs, mean, yerr=sd, marker="o", capsize=3)
            ax.set_xticks(xs, names, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            if j == 0:
                ax.set_ylabel(textwrap.fill(label(metric), 22), fontsize=8)
            if i == 0:
                bad = [UTILITY_LABELS.get(v, v) if knob == "utility" else v
                       for v, s in result[knob].items() if "diverged" in s]
                ax.set_title(f"{LABELS['kto']} vs {label(knob)}" + (f"\n(diverged: {', '.join(bad)})" if bad else ""),
                             fontsize=9)
            if i == len(ABLATION_METRICS) - 1:
                ax.set_xlabel(label(knob), fontsize=8)
    others = "" if config is None else (f" (grey: the fixed value; β = {config.beta:g}, γ = {config.gamma:g}, "
                                        f"U = {UTILITY_LABELS['kto']}, {config.steps} steps)")
    spread = "mean ± sd over " + "/".join(str(n) for n in sorted(seeds)) + " seeds" if seeds != {1} else "one seed"
    fig.suptitle(f"Ablations ({_toy(config)}, cf. Diffusion-KTO appendix D): one setting changed at a time{others}\n"
                 f"{spread}; dotted: what exact draws of P_d score", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def write_ablations(result: Dict, out: Path, command: str = "", config=None) -> Dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem("ablation", config)
    paths = {"png": out / f"{stem}.png", "json": out / f"{stem}_metrics.json", "csv": out / f"{stem}_metrics.csv"}
    plot_ablations(result, paths["png"], config)
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
