"""Frontiers on the toy: every method over its strength knob and seeds.

    kto-lab toy frontier --out figures --seeds 3
    kto-lab toy frontier --out figures --redraw     # the figure again from the saved toy_frontier.csv

Diffusion-KTO and Diffusion-DPO are swept over beta, SFT, CSFT and BCE over the learning rate
(the other fine-tuning settings are :class:`toy.train.ToyConfig`'s, without per-method overrides).
Each seed pretrains its own model and draws its own feedback (:func:`toy.run.run_seed`). The
plot shows the share of samples in the desirable region against the share in the undesirable
region, and against the distance moved from the pretrained model (energy distance between the
two models' samples): one curve per method through its settings, mean and 95 % t interval over
seeds (:mod:`kto_lab.eval.frontier`). A method beats another where its curve is above and to the
left of the other's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from .run import run_seed, torch_threads
from .train import PRETRAINED, ToyConfig, pretrain

# method -> (ToyConfig field swept, values)
FRONTIER_KNOBS: Dict[str, Tuple[str, Sequence[float]]] = {
    "kto:kto": ("beta", (0.3, 1.0, 3.0, 10.0, 30.0)),
    "dpo": ("beta", (30.0, 100.0, 300.0, 1000.0, 3000.0)),
    "sft": ("lr", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)),
    "csft": ("lr", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)),
    "bce": ("lr", (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)),
}
METRICS = ("share_desirable", "share_undesirable", "energy_to_pretrained", "param_change")


def run_frontier(cfg: ToyConfig, seeds: int = 3, knobs: Dict[str, Tuple[str, Sequence[float]]] = FRONTIER_KNOBS,
                 progress: bool = True):
    """One row per (method, knob value, seed): the metrics, or ``diverged`` with the error; and one
    row per seed for the pretrained model (``method="pretrained"``)."""
    import pandas as pd

    base = dataclasses.replace(cfg, method_overrides={}).validate()
    runs = [(m, field, float(v)) for m, (field, values) in knobs.items() for v in values]
    rows = []
    bar = tqdm(total=seeds * len(runs), desc="toy frontier", disable=not progress)
    with torch_threads(cfg.threads):
        for k in range(seeds):
            seed = cfg.seed + k
            pretrained = pretrain(base, seed)
            metrics = run_seed(base, seed, [PRETRAINED], pretrained=pretrained).metrics[PRETRAINED]
            rows.append({"method": PRETRAINED, "knob_name": "", "knob": float("nan"), "seed": seed, **metrics})
            for method, field, value in runs:
                row = {"method": method, "knob_name": field, "knob": value, "seed": seed}
                try:
                    c = dataclasses.replace(base, **{field: value}).validate()
                    row.update(run_seed(c, seed, [method], pretrained=pretrained).metrics[method])
                except FloatingPointError as e:  # a diverged setting is a result, not a crash
                    row["diverged"] = str(e)
                rows.append(row)
                bar.update()
    bar.close()
    return pd.DataFrame(rows)


def plot_toy_frontier(summary, pretrained: Dict[str, float], path: Optional[Path] = None):
    """Desirable share against undesirable share and against the distance moved. Returns the figure."""
    from kto_lab.eval.frontier import plot_frontier, save_figure
    from kto_lab.plotting import new_figure

    fig = new_figure(figsize=(12, 5.3), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, x in zip(axes, ("share_undesirable", "energy_to_pretrained")):
        plot_frontier(ax, summary, x, "share_desirable", maximize_x=False, base=pretrained)
    axes[0].set(xlabel="share of samples in the undesirable region", ylabel="share of samples in the desirable region",
                title="toy: desirable vs undesirable share (up and left is better)")
    axes[1].set(xlabel="distance moved (energy distance to the pretrained model's samples)",
                ylabel="share of samples in the desirable region", title="toy: desirable share vs distance moved")
    axes[1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, "labels: beta (KTO, DPO) or learning rate (SFT, CSFT, BCE); bars: 95% interval "
                                  "over seeds", dpi=110)


def frontier_summary(rows):
    """:func:`run_frontier`'s rows -> (the tuned settings over seeds, the pretrained model's mean metrics);
    diverged runs are left out."""
    from kto_lab.eval.frontier import summarize_over_seeds

    ok = rows[rows["diverged"].isna()] if "diverged" in rows else rows
    summary = summarize_over_seeds(ok[ok.method != PRETRAINED], ["method", "knob_name", "knob"], METRICS)
    return summary, ok[ok.method == PRETRAINED][list(METRICS)].mean().to_dict()


def write_frontier(rows, out: Path, command: str = "", config: ToyConfig = None) -> Dict[str, Path]:
    """``toy_frontier.csv`` (every run), ``toy_frontier_summary.csv`` (over seeds), ``toy_frontier.png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "toy_frontier.csv", "summary": out / "toy_frontier_summary.csv",
             "png": out / "toy_frontier.png", "run": out / "toy_frontier_run.json"}
    rows.to_csv(paths["csv"], index=False)
    summary, pretrained = frontier_summary(rows)
    summary.to_csv(paths["summary"], index=False)
    plot_toy_frontier(summary, pretrained, paths["png"])
    meta = {"command": command, "config": dataclasses.asdict(config) if config else None,
            "diverged": rows[rows["diverged"].notna()].to_dict("records") if "diverged" in rows else []}
    paths["run"].write_text(json.dumps(meta, indent=1, default=str))
    return paths


def redraw_frontier(out: Path) -> Path:
    """``OUT/toy_frontier.png`` drawn again from the saved ``OUT/toy_frontier.csv`` (no training):
    ``kto-lab toy frontier --out OUT --redraw``."""
    import pandas as pd

    csv = Path(out) / "toy_frontier.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"--redraw needs the results of a frontier run: {csv} does not exist")
    plot_toy_frontier(*frontier_summary(pd.read_csv(csv)), Path(out) / "toy_frontier.png")
    return Path(out) / "toy_frontier.png"
