"""Tables and figures of a rounds study (:mod:`kto_lab.synthetic.rounds_study`), from its cell files only.

    kto-lab synthetic rounds-report --run runs/rounds_study --out figures/rounds

* ``cells.csv``: one row per cell and round (labels spent, like rate, reward, fidelity, distance);
* ``final.md`` / ``.csv``: per objective, budget and schedule, the last round's reward, fidelity and distance
  (mean and 95 % t interval over seeds), and the reward gained per 100 labels;
* ``rounds_vs_offline.md`` / ``.csv``: per objective and budget, the win rate of R rounds over one offline round,
  image by image (same held-out caption and seed; ties half), on the reward and on fidelity, over seeds;
* ``head_to_head.md`` / ``.csv``: objective against objective under the same budget and schedule, likewise, with
  each side's fidelity beside it (a win on reward means little where fidelity is not matched);
* ``per_round.md`` / ``.csv``: the rounds schedule's reward, fidelity, distance and like rate round by round;
* ``rounds.png``: reward, fidelity and distance against the labels spent (every round of every cell), and
  reward against fidelity.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..eval.frontier import save_figure, summarize_over_seeds
from ..eval.stats import mean_ci, outcomes
from ..plotting import label, new_figure
from .rounds_study import OBJECTIVES, load_cells
from .sweep_report import tie_tolerances

METRICS = ("reward", "fidelity", "distance", "like_rate")
SETTING = ["objective", "budget", "rounds"]


def schedule(rounds: int) -> str:
    return "offline (1 round)" if rounds == 1 else f"{rounds} rounds"


def cells_frame(run):
    """One row per (cell, round)."""
    import pandas as pd

    rows = []
    for c in load_cells(run):
        for r in c["rows"]:
            rows.append({**c["cell"], "round": r["round"], "labels_spent": r["labels_spent"],
                         **{m: r.get(m, np.nan) for m in METRICS}, "seconds": c["seconds"]})
    if not rows:
        raise FileNotFoundError(f"no finished cell in {str(run)!r} (expected {Path(run) / 'cells'}/*.json)")
    return pd.DataFrame(rows)


def _fmt(r, m: str, digits: int = 3) -> str:
    if np.isnan(r.get(f"{m}_low", np.nan)):
        return f"{r[m]:.{digits}f}"
    return f"{r[m]:.{digits}f} ({r[f'{m}_low']:.{digits}f}, {r[f'{m}_high']:.{digits}f})"


def _ordered(df, by):
    """Rows sorted by ``by``, objectives in the study's order (KTO, DPO, BCE, ...) rather than alphabetically."""
    return df.sort_values(by, key=lambda col: col.map(OBJECTIVES.index) if col.name == "objective" else col)


def final_table(df, base_reward: float):
    last = df[df["round"] == df["rounds"]]
    s = summarize_over_seeds(last, SETTING, METRICS)
    gain = last.assign(gain=100 * (last["reward"] - base_reward) / last["budget"])
    g = summarize_over_seeds(gain, SETTING, ["gain"])
    s = s.merge(g[SETTING + ["gain", "gain_low", "gain_high"]], on=SETTING)
    lines = ["| objective | labels | schedule | seeds | reward | fidelity | distance from base | reward gain per 100 labels "
             "| like rate, last round |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in _ordered(s, ["budget", "objective", "rounds"]).iterrows():
        lines.append(f"| {label(r.objective)} | {r.budget:,} | {schedule(r.rounds)} | {r.n_seeds} | {_fmt(r, 'reward')} | "
                     f"{_fmt(r, 'fidelity')} | {_fmt(r, 'distance')} | {_fmt(r, 'gain', 4)} | {_fmt(r, 'like_rate', 2)} |")
    return s, "\n".join(lines)


def _last(cell: Dict) -> Dict[str, List[float]]:
    return cell["per_image"][str(cell["cell"]["rounds"])]


def win_rate(a: Dict, b: Dict, metric: str, tolerance: float = 0.0) -> float:
    """Cell A's last round over cell B's, image by image on ``metric`` (same caption and seed), ties
    (``|a - b| <= tolerance``, the scorer's :func:`~kto_lab.eval.scorers.tie_tolerance`) half."""
    return float(outcomes(np.asarray(_last(a)[metric]), np.asarray(_last(b)[metric]), tolerance).mean())


def _pair_row(cells_a: Dict[int, Dict], cells_b: Dict[int, Dict], tolerance: Dict[str, float]) -> Dict[str, float]:
    seeds = sorted(set(cells_a) & set(cells_b))
    row: Dict[str, float] = {"n_seeds": len(seeds)}
    for metric in ("score", "fidelity"):
        ci = mean_ci([win_rate(cells_a[s], cells_b[s], metric, tolerance[metric]) for s in seeds])
        row.update({f"win_{metric}": ci.mean, f"win_{metric}_low": max(0.0, ci.low) if ci.n > 1 else np.nan,
                    f"win_{metric}_high": min(1.0, ci.high) if ci.n > 1 else np.nan})
    for side, cs in (("a", cells_a), ("b", cells_b)):
        for metric in ("score", "fidelity"):
            row[f"{side}_{metric}"] = float(np.mean([np.mean(_last(cs[s])[metric]) for s in seeds]))
    return row


def _by_setting(run) -> Dict[tuple, Dict[int, Dict]]:
    out: Dict[tuple, Dict[int, Dict]] = {}
    for c in load_cells(run):
        k = c["cell"]
        out.setdefault((k["objective"], k["budget"], k["rounds"]), {})[k["seed"]] = c
    return out


def _pct(r, m: str) -> str:
    if np.isnan(r[f"{m}_low"]):
        return f"{100 * r[m]:.1f}%"
    return f"{100 * r[m]:.1f}% ({100 * r[m + '_low']:.1f}, {100 * r[m + '_high']:.1f})"


def rounds_vs_offline(run):
    import pandas as pd

    cells, tolerance = _by_setting(run), tie_tolerances(run)
    rows = []
    for (objective, budget, rounds), cs in sorted(cells.items(), key=lambda kv: (kv[0][1], OBJECTIVES.index(kv[0][0]), kv[0][2])):
        offline = cells.get((objective, budget, 1))
        if rounds == 1 or offline is None:
            continue
        row = _pair_row(cs, offline, tolerance)
        if row["n_seeds"]:
            rows.append({"objective": objective, "budget": budget, "rounds": rounds, **row})
    t = pd.DataFrame(rows)
    lines = ["| objective | labels | rounds vs offline | seeds | win rate, reward | win rate, fidelity | reward (rounds / offline) "
             "| fidelity (rounds / offline) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {label(r.objective)} | {r.budget:,} | {r.rounds} rounds | {r.n_seeds} | {_pct(r, 'win_score')} | "
                     f"{_pct(r, 'win_fidelity')} | {r.a_score:.3f} / {r.b_score:.3f} | {r.a_fidelity:.3f} / {r.b_fidelity:.3f} |")
    return t, "\n".join(lines)


def head_to_head(run):
    import pandas as pd

    cells, tolerance = _by_setting(run), tie_tolerances(run)
    objectives = sorted({k[0] for k in cells}, key=OBJECTIVES.index)
    rows = []
    for budget, rounds in sorted({(k[1], k[2]) for k in cells}):
        for a, b in combinations(objectives, 2):
            if (a, budget, rounds) in cells and (b, budget, rounds) in cells:
                row = _pair_row(cells[(a, budget, rounds)], cells[(b, budget, rounds)], tolerance)
                if row["n_seeds"]:
                    rows.append({"a": a, "b": b, "budget": budget, "rounds": rounds, **row})
    t = pd.DataFrame(rows)
    lines = ["| labels | schedule | A vs B | seeds | A's win rate, reward | A's win rate, fidelity | reward (A / B) "
             "| fidelity (A / B) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r.budget:,} | {schedule(r.rounds)} | {label(r.a)} vs {label(r.b)} | {r.n_seeds} | "
                     f"{_pct(r, 'win_score')} | {_pct(r, 'win_fidelity')} | {r.a_score:.3f} / {r.b_score:.3f} | "
                     f"{r.a_fidelity:.3f} / {r.b_fidelity:.3f} |")
    return t, "\n".join(lines)


def per_round_table(df):
    multi = df[df["rounds"] > 1]
    s = summarize_over_seeds(multi, SETTING + ["round", "labels_spent"], METRICS)
    lines = ["| objective | labels in all | round | labels spent | like rate of its labels | reward | fidelity | distance |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in _ordered(s, ["budget", "objective", "round"]).iterrows():
        lines.append(f"| {label(r.objective)} | {r.budget:,} | {r['round']} | {r.labels_spent:,} | {_fmt(r, 'like_rate', 2)} | "
                     f"{_fmt(r, 'reward')} | {_fmt(r, 'fidelity')} | {_fmt(r, 'distance')} |")
    return s, "\n".join(lines)


def plot_study(df, base: Dict[str, float], score_name: str, path=None):
    """Reward, fidelity and distance against the labels spent, every round of every schedule (mean over seeds,
    95 % intervals), and reward against fidelity at the end of each cell. Returns the figure."""
    s = summarize_over_seeds(df[df["round"] > 0], SETTING + ["round", "labels_spent"], METRICS)
    fig = new_figure(figsize=(20, 5.2), layout="constrained")
    axes = fig.subplots(1, 4)
    objectives = sorted(set(s.objective), key=OBJECTIVES.index)
    for i, objective in enumerate(objectives):
        color = f"C{i}"
        for rounds, g in s[s.objective == objective].groupby("rounds"):
            style = dict(color=color, marker="o" if rounds == 1 else "s", ms=4, capsize=2, elinewidth=0.7,
                         ls="-" if rounds == 1 else "--", mfc=color if rounds == 1 else "none")
            for ax, m in zip(axes[:3], ("reward", "fidelity", "distance")):
                if rounds == 1:  # one point per budget, joined across budgets
                    g1 = g.sort_values("budget")
                    ax.errorbar(g1.labels_spent, g1[m], yerr=np.abs(np.vstack([g1[m] - g1[f"{m}_low"], g1[f"{m}_high"] - g1[m]])),
                                label=f"{label(objective)}, {schedule(rounds)}", **style)
                    continue
                for n, (budget, gb) in enumerate(g.groupby("budget")):  # each budget's rounds, joined
                    gb = gb.sort_values("round")
                    ax.errorbar(gb.labels_spent, gb[m], yerr=np.abs(np.vstack([gb[m] - gb[f"{m}_low"], gb[f"{m}_high"] - gb[m]])),
                                label=f"{label(objective)}, {schedule(rounds)}" if n == 0 else None, alpha=0.85, **style)
            last = g[g["round"] == g["rounds"]]
            axes[3].errorbar(last.fidelity, last.reward, xerr=np.abs(np.vstack([last.fidelity - last.fidelity_low, last.fidelity_high - last.fidelity])),
                             yerr=np.abs(np.vstack([last.reward - last.reward_low, last.reward_high - last.reward])),
                             ls="none", label=f"{label(objective)}, {schedule(rounds)}", **{k: v for k, v in style.items() if k != "ls"})
            for _, r in last.iterrows():
                axes[3].annotate(f"{r.budget}", (r.fidelity, r.reward), fontsize=6, color=color, xytext=(3, 3),
                                 textcoords="offset points")
    for ax, m, what in zip(axes[:3], ("reward", "fidelity", "distance"),
                           (f"{score_name} (the user's reward)", "prompt fidelity", "distance from the base")):
        ax.axhline(base[m], color="k", lw=0.8, ls=":", label="base model")
        ax.set(xscale="log", xlabel="labels spent", ylabel=what, title=f"{what} per labels spent")
        ax.minorticks_off()
        ax.set_xticks(sorted(set(s.labels_spent)), [f"{x:g}" for x in sorted(set(s.labels_spent))], fontsize=6, rotation=45)
    axes[3].scatter([base["fidelity"]], [base["reward"]], marker="*", s=140, color="k", label="base model", zorder=4)
    axes[3].set(xlabel="prompt fidelity", ylabel=score_name, title="end of each cell (labels annotated)")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path, "mean over seeds, bars: 95% t interval over seeds; solid: one offline round per budget; "
                                  "dashed: rounds of one budget, one point per round")


def write_report(run: str | Path, out: str | Path) -> List[Path]:
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = cells_frame(run)
    user = json.loads((run / "user.json").read_text())
    b = df[df["round"] == 0].iloc[0]
    base = {"reward": float(b.reward), "fidelity": float(b.fidelity), "distance": 0.0}
    paths = []
    df.to_csv(out / "cells.csv", index=False)
    paths.append(out / "cells.csv")
    note = (f"Base model: {user['scorer']} {base['reward']:.3f}, fidelity {base['fidelity']:.3f}. The user likes an image "
            f"whose {user['scorer']} is >= {user['threshold']:.4f} (the median of the base's own images).")
    for name, (table, md) in (("final", final_table(df, base["reward"])), ("rounds_vs_offline", rounds_vs_offline(run)),
                              ("head_to_head", head_to_head(run)), ("per_round", per_round_table(df))):
        table.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(md + "\n\n" + note + "\n")
        paths += [out / f"{name}.csv", out / f"{name}.md"]
    plot_study(df, base, user["scorer"], out / "rounds.png")
    paths.append(out / "rounds.png")
    for name in ("world.json", "user.json", "plan.json"):
        (out / name).write_text((run / name).read_text())
        paths.append(out / name)
    return paths
