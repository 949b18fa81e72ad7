"""Figures and tables of the shapes world, made from saved results only.

* ``curves.png``: the user's score (redness) and prompt fidelity through training, one line per
  method (Diffusion-KTO Figure 7's right panel, with every method of the comparison);
* ``table.md``: final win rates against the base model and mean scores with 95% intervals
  (the LoRA study's Table 1 layout: one row per model);
* :func:`sample_grid`: generations of a pipeline with their captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

LABELS = {"base": "Base", "sft": "SFT", "csft": "CSFT", "bce": "BCE", "dpo": "Diffusion-DPO", "kto": "Diffusion-KTO",
          "kto_loss_averse": "KTO (loss-averse U)", "kto_risk_seeking": "KTO (risk-seeking U)", "spin": "SPIN-Diffusion"}
SCORE_NAMES = {"red": "redness", "contrast": "contrast"}


def _user(run: Path) -> str:
    import json

    return json.loads((run / "config.json").read_text())["user"]


def plot_curves(run: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(run / "curves.csv")
    score = SCORE_NAMES.get(_user(run), "score")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, g in df.groupby("method", sort=False):
        axes[0].plot(g["step"], g["score"], marker="o", ms=3, label=LABELS.get(method, method))
        axes[1].plot(g["step"], g["fidelity"], marker="o", ms=3, label=LABELS.get(method, method))
    axes[0].set(xlabel="optimizer step", ylabel=f"mean {score}", title=f"{score} through training (cf. paper Fig. 7)")
    axes[1].set(xlabel="optimizer step", ylabel="prompt fidelity (share of named attributes right)",
                title="prompt fidelity through training")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table(run: Path, out: Path) -> Path:
    import pandas as pd

    user = _user(run)
    score = SCORE_NAMES.get(user, "score")
    means = pd.read_csv(run / "mean_scores.csv")
    wins = pd.read_csv(run / "win_rates.csv")
    lines = [f"| model | mean {score} (95% CI) | mean fidelity (95% CI) | win rate vs base, {score} (95% CI) | "
             f"win rate vs base, fidelity (95% CI) |", "|---|---|---|---|---|"]
    for model in means["model"].unique():
        m = means[means.model == model].set_index("metric")
        cells = [LABELS.get(model, model)]
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
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_curves(run, out), write_table(run, out)]
    for name in ("curves.csv", "win_rates.csv", "mean_scores.csv", "summary.json", "config.json"):
        src = run / name
        if src.is_file():
            (out / name).write_bytes(src.read_bytes())
            paths.append(out / name)
    return paths


def sample_grid(pipeline_dir: str | Path, out: str | Path, *, unet: Optional[str] = None, n: int = 16,
                seed: int = 7) -> Path:
    """Generations for ``n`` held-out captions (one each), captions as titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kto_lab.sd.components import load_unet

    from .evaluate import make_pipeline, sample
    from .fidelity import check
    from .shapes import eval_captions

    pipe = make_pipeline(pipeline_dir, load_unet(unet) if unet else None)
    caps = eval_captions(n, seed=seed)
    images = sample(pipe, caps, list(range(n)))
    cols = 4
    fig, axes = plt.subplots(int(np.ceil(n / cols)), cols, figsize=(3 * cols, 3 * int(np.ceil(n / cols))))
    for ax, img, cap in zip(np.ravel(axes), images, caps):
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
        ok = check(img, cap)
        ax.set_title(cap.replace(" on a", "\non a").replace(" at the", "\nat the") +
                     f"\n{sum(ok.values())}/{len(ok)} right", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
