"""The round log: one row per round (round 0 is the base), as JSONL, CSV and a small plot.

:func:`plot_before_after` shows the base's and a round's held-out images side by side (same prompt, same seed).

Columns: ``round``, ``labels`` (decisions made in the round: likes, dislikes and skips), ``labels_spent``
(so far), ``liked``, ``disliked``, ``skipped``, ``like_rate`` (liked / (liked + disliked)), ``threshold``
(scorer and user labelers), ``pairs`` (DPO), ``objective``, ``train_steps``, ``reference``; from the
held-out evaluation ``reward``, ``fidelity``, ``distance`` (from the base), each with ``_low`` / ``_high``
(95 % t interval over images), ``reward_win_rate`` over the base (median image per prompt; bootstrap
interval), ``scores`` (every scorer's mean) and ``seconds`` per stage.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..plotting import label, new_figure

PANELS = (("like_rate", "like rate of the round's labels"), ("reward", "reward (held-out mean)"),
          ("fidelity", "fidelity (held-out mean)"), ("distance", "distance from the base"))


def _flat(row: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for name, value in row.get("scores", {}).items():
        out[f"score/{name}"] = value
    for stage, value in row.get("seconds", {}).items():
        out[f"seconds/{stage}"] = value
    return out


def write_round_log(rows: List[Dict[str, Any]], stem: Path) -> List[Path]:
    """``STEM.jsonl`` (the rows as they are) and ``STEM.csv`` (flattened), each written atomically."""
    import pandas as pd

    stem = Path(stem)
    jsonl, csv = stem.with_suffix(".jsonl"), stem.with_suffix(".csv")
    for path, write in ((jsonl, lambda p: p.write_text("".join(json.dumps(r, default=float) + "\n" for r in rows))),
                        (csv, lambda p: pd.DataFrame([_flat(r) for r in rows]).to_csv(p, index=False))):
        tmp = path.with_name(path.name + ".tmp")
        write(tmp)
        os.replace(tmp, path)
    return [jsonl, csv]


def read_round_log(path: Path) -> List[Dict[str, Any]]:
    """The rows of ``round_log.jsonl`` (or of the ``OUT`` directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "round_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _number(v) -> float:
    return float("nan") if v is None else float(v)


def plot_round_log(rows: List[Dict[str, Any]], path: Optional[Path] = None, title: str = ""):
    """Like rate, reward, fidelity and distance from the base against the labels spent (one point per round,
    95 % intervals as bars); panels without data are left out. Returns the figure."""
    panels = [(k, t) for k, t in PANELS if any(not math.isnan(_number(r.get(k))) for r in rows)]
    fig = new_figure(figsize=(4 * max(len(panels), 1), 3.4), layout="constrained")
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    x = [r["labels_spent"] for r in rows]
    for ax, (key, what) in zip(axes, panels):
        y = [_number(r.get(key)) for r in rows]
        low = [_number(r.get(f"{key}_low", r.get(key))) for r in rows]
        high = [_number(r.get(f"{key}_high", r.get(key))) for r in rows]
        err = [[max(0.0, a - b) if not math.isnan(b) else 0.0 for a, b in zip(y, low)],
               [max(0.0, b - a) if not math.isnan(b) else 0.0 for a, b in zip(y, high)]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3)
        for r, xi, yi in zip(rows, x, y):
            if not math.isnan(yi):
                ax.annotate(str(r["round"]), (xi, yi), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set(xlabel="labels spent", title=what, ylabel=label(key))
    if title:
        fig.suptitle(title, fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_before_after(rounds, k: int, n: int = 8, *, before: int = 0, path: Optional[Path] = None):
    """The first ``n`` held-out images of round ``before`` (the base) above round ``k``'s: same prompt, same seed
    (``OUT/round-KK/eval``), with each image's reward under it. Returns the figure."""
    import textwrap

    import numpy as np
    import pandas as pd
    from PIL import Image

    frames = []
    for j in (before, k):
        d = rounds.round_dir(j) / "eval"
        if not (d / "scores.csv").is_file():
            raise FileNotFoundError(f"round {j} has no evaluation yet ({d}): run rounds.evaluate({j})")
        frames.append(pd.read_csv(d / "scores.csv", dtype={"prompt_id": str}).sort_values(["prompt_id", "k"]).head(n))
    reward = rounds.cfg.reward_scorer()
    fig = new_figure(figsize=(1.6 * len(frames[0]), 4.2), layout="constrained")
    axes = fig.subplots(2, len(frames[0]), squeeze=False)
    for row, (j, frame) in enumerate(zip((before, k), frames)):
        for col, (_, r) in enumerate(frame.iterrows()):
            ax = axes[row, col]
            with Image.open(rounds.round_dir(j) / "eval" / r["file"]) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if row == 0:
                ax.set_title("\n".join(textwrap.wrap(r["prompt"], 22)), fontsize=6)
            if reward is not None and reward in r:
                ax.set_xlabel(f"{label(reward)} {r[reward]:.3f}", fontsize=6)
        axes[row, 0].set_ylabel("base" if j == 0 else f"round {j}", fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
