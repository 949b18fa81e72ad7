"""Figures and tables of the shapes world, made from saved results only.

* ``curves.png``: the user's score (redness) and prompt fidelity through training, one line per
  method (Diffusion-KTO Figure 7's right panel, with every method of the comparison);
* ``table.md``: final win rates against the base model and mean scores with 95% intervals
  (the LoRA study's Table 1 layout: one row per model);
* :func:`sample_grid`: generations of a pipeline with their captions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from kto_lab.plotting import label, new_figure

from .users import get_user


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _score_name(run: Path) -> str:
    """The score the run's synthetic user likes (``redness`` for the red user)."""
    return get_user(_config(run)["user"]).scorer


def plot_curves(run: str | Path, path: Optional[str | Path] = None):
    """The user's score and prompt fidelity through training, one line per method (``run/curves.csv``).

    Returns the figure (a notebook shows it); saves it too when ``path`` is given.
    """
    import pandas as pd

    from .experiment import CSFT_SAMPLING_PREFIX

    run = Path(run)
    df = pd.read_csv(run / "curves.csv")
    cfg, score = _config(run), _score_name(run)
    fig = new_figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for method, g in df.groupby("method", sort=False):
        name = label(method) + (f' (sampled with "{CSFT_SAMPLING_PREFIX}")' if method == "csft" else "")
        axes[0].plot(g["step"], g["score"], marker="o", ms=3, label=name)
        axes[1].plot(g["step"], g["fidelity"], marker="o", ms=3, label=name)
    axes[0].set(xlabel="optimizer step", ylabel=f"mean {score} of the samples",
                title=f"the user's score ({score}) through training (cf. paper Fig. 7)")
    axes[1].set(xlabel="optimizer step", ylabel="prompt fidelity (share of named attributes right)",
                title="prompt fidelity through training")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    n = cfg.get("n_curve_prompts")
    caption = f"'{cfg['user']}' user; every point: {n} held-out prompts x 2 seeds; step 0 is the base model"
    if "csft" in set(df["method"]):
        caption += (f'.\nCSFT is sampled with "{CSFT_SAMPLING_PREFIX}" at every point, step 0 included: the base '
                    "model never saw that prefix in training, so CSFT's curve starts elsewhere")
    fig.suptitle(caption, fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def write_table(run: Path, out: Path) -> Path:
    import pandas as pd

    score = _score_name(run)
    means = pd.read_csv(run / "mean_scores.csv")
    wins = pd.read_csv(run / "win_rates.csv")
    lines = [f"| model | mean {score} (95% CI) | mean fidelity (95% CI) | win rate vs base, {score} (95% CI) | "
             f"win rate vs base, fidelity (95% CI) |", "|---|---|---|---|---|"]
    for model in means["model"].unique():
        m = means[means.model == model].set_index("metric")
        cells = [label(model)]
        for metric in (score, "fidelity"):
            r = m.loc[metric]
            cells.append(f"{r['mean']:.4f} ({r['ci_low']:.4f}, {r['ci_high']:.4f})")
        for metric in (score, "fidelity"):
            w = wins[(wins.model_a == model) & (wins.metric == metric)]
            cells.append("-" if w.empty else
                         f"{w['win_rate'].iloc[0]:.1f}% ({w['ci_low'].iloc[0]:.1f}, {w['ci_high'].iloc[0]:.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    path = out / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_figures(run: str | Path, out: str | Path) -> List[Path]:
    """Curves and table of a comparison run, with its result files; ``out`` may be ``run`` itself."""
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(run, out / "curves.png")
    paths = [out / "curves.png", write_table(run, out)]
    for name in ("curves.csv", "win_rates.csv", "mean_scores.csv", "summary.json", "config.json"):
        src = run / name
        if src.is_file():
            (out / name).write_bytes(src.read_bytes())
            paths.append(out / name)
    return paths


def sample_grid(pipeline_dir: str | Path, path: Optional[str | Path] = None, *, unet: Optional[str] = None,
                n: int = 16, seed: int = 7):
    """Generations for ``n`` held-out captions (one each, caption ``k`` with seed ``k``), captions as titles,
    with how many of the attributes each caption names the fidelity checker finds in the image.

    Returns the figure (a notebook shows it); saves it too when ``path`` is given.
    """
    from kto_lab.sd.components import load_denoiser

    from .base import FAMILY
    from .evaluate import make_pipeline, sample
    from .fidelity import check
    from .shapes import eval_captions

    pipe = make_pipeline(pipeline_dir, load_denoiser(unet, FAMILY) if unet else None)
    caps = eval_captions(n, seed=seed)
    images = sample(pipe, caps, list(range(n)))
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = new_figure(figsize=(3 * cols, 3 * rows + 0.7), layout="constrained")
    axes = np.ravel(fig.subplots(rows, cols, squeeze=False))
    for ax, img, cap in zip(axes, images, caps):
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        ok = check(img, cap)
        ax.set_title(cap.replace(" on a", "\non a").replace(" at the", "\nat the") +
                     f"\n{sum(ok.values())} of {len(ok)} named attributes right", fontsize=7)
    for ax in axes:
        ax.axis("off")
    model = f"{pipeline_dir}" + (f" with the UNet {unet}" if unet else "")
    fig.suptitle(f"Samples of {model}: {n} held-out captions, one image each (caption k drawn with seed k).\n"
                 "'k of n named attributes right': the fidelity checker finds k of the n attributes the caption "
                 "names (colour, shape, size, background, position)", fontsize=9)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
