"""What every figure of the project shares: the display names of methods, utilities, metrics and
settings (one mapping, so a legend never shows a raw column name), and figures that leave
matplotlib's backend alone.

Plotting functions build their figure with :func:`new_figure`, save it when given a path and
return it, so a notebook shows it as the value of a cell. They never choose a backend: a
notebook keeps its inline one, a headless machine gets matplotlib's own fallback (Agg).
"""

from __future__ import annotations

# method, metric and setting names (as in configs, CSV columns and the CLI) -> display names
LABELS = {
    # methods (kto_lab.objectives; toy and synthetic runs)
    "pretrained": "pretrained model",
    "base": "base model",
    "sft": "SFT",
    "csft": "CSFT",
    "bce": "BCE",
    "dpo": "Diffusion-DPO",
    "kto": "Diffusion-KTO",
    "spin": "SPIN-Diffusion",
    # toy metrics (toy/metrics.py)
    "share_desirable": "share in P_d's region",
    "share_undesirable": "share in P_u's region",
    "share_elsewhere": "share elsewhere",
    "logp_desirable": "log-density under P_d",
    "logp_undesirable": "log-density under P_u",
    "energy_to_desirable": "energy distance to P_d",
    "energy_to_pretrained": "energy distance to the pretrained model",
    "param_change": "relative parameter change",
    # training metrics (metrics.jsonl columns: kto_lab.objectives, kto_lab.step, kto_lab.sd.trainer)
    "loss": "loss",
    "rewards/desirable": "implicit reward β·g, desirable",
    "rewards/undesirable": "implicit reward β·g, undesirable",
    "rewards/margin": "reward margin (desirable − undesirable)",
    "rewards/accuracy": "reward accuracy (share with the label's sign)",
    "rewards/pair_accuracy": "pair accuracy (share of winners rewarded more)",
    "z_ref": "z_ref (β × reference point)",
    "kl": "KL estimate",
    "saturated": "share saturated (|β(g − z_ref)| ≥ 2)",
    "err/policy": "denoising error, policy",
    "err/reference": "denoising error, reference",
    "bce/accuracy": "BCE accuracy",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "skipped_images": "skipped images",
    # image scores (kto_lab.eval.scorers) and the shapes world's fidelity
    "pickscore": "PickScore",
    "hpsv2": "HPS v2",
    "aesthetic": "aesthetic score",
    "clip": "CLIP score",
    "imagereward": "ImageReward",
    "fidelity": "prompt fidelity",
    # settings
    "beta": "β",
    "gamma": "γ (share of desirable samples)",
    "utility": "utility U",
    "lambda_desirable": "λ_D",
    "lambda_undesirable": "λ_U",
}
# Diffusion-KTO's utilities (kto_lab.objectives.UTILITIES); "kto" is the paper's default
UTILITY_LABELS = {
    "kto": "Kahneman-Tversky",
    "loss_averse": "loss-averse",
    "risk_seeking": "risk-seeking",
    "prospect": "prospect value fn",
}


def label(name: str) -> str:
    """The display name of a method, metric or setting; unknown names come back unchanged.

    Diffusion-KTO with a non-default utility is ``kto:<utility>`` (toy) or ``kto_<utility>``
    (synthetic runs): "Diffusion-KTO (loss-averse U)".
    """
    objective, _, utility = name.replace(":", "_", 1).partition("_")
    if objective == "kto" and utility:
        return LABELS["kto"] if utility == "kto" else f"{LABELS['kto']} ({UTILITY_LABELS.get(utility, utility)} U)"
    return LABELS.get(name, name)


def new_figure(**kwargs):
    """``plt.figure(**kwargs)``, closed at once. Creating it through pyplot loads the current backend
    (in Jupyter the inline one, which registers how a returned figure is shown); closing it leaves
    a figure that pyplot forgets: shown once when a notebook cell returns it (not again at the end
    of the cell), saved by ``fig.savefig`` without any backend, freed with its last reference."""
    import matplotlib.pyplot as plt

    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig


# where a point label may sit, in points from its point: rings of 8 directions, nearest first
# (direction -> the label's alignment, so its box starts at the offset and grows away from the point)
_DIRECTIONS = ((1, 0, "left", "center"), (1, 1, "left", "bottom"), (0, 1, "center", "bottom"),
               (-1, 1, "right", "bottom"), (-1, 0, "right", "center"), (-1, -1, "right", "top"),
               (0, -1, "center", "top"), (1, -1, "left", "top"))
_RINGS = (4, 9, 15, 22, 30, 40, 52)


def spread_labels(fig, leader_from: float = 15) -> None:
    """Move the point labels of every axes of ``fig`` (its ``ax.annotate(..., textcoords="offset
    points")`` texts) so that none covers another, a plotted point or the legend: each takes the first
    free spot around its point, nearest first, inside the axes (the least crowded one if none is
    free), on a light backing; one placed ``leader_from`` points away or more gets a thin line to its
    point. Call it once the figure is complete (limits, legend, notes): it measures the drawn layout,
    and takes the labels out of constrained layout's reckoning so that the layout stays as measured."""
    from matplotlib.lines import Line2D

    fig.draw_without_rendering()
    scale = fig.dpi / 72.0  # points -> pixels
    for ax in fig.get_axes():
        area = ax.get_window_extent()
        labels = point_labels(ax)
        for t in labels:
            t.set_in_layout(False)
            if t.get_bbox_patch() is None:  # a light backing: a line under a label does not cross its text
                t.set_bbox(dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none", alpha=0.75))
        if not labels:
            continue
        taken = [leg.get_window_extent() for leg in [ax.get_legend()] if leg is not None]
        taken += [_box(x - r, y - r, x + r, y + r) for x, y, r in _plotted_points(ax, scale)
                  if area.x0 <= x <= area.x1 and area.y0 <= y <= area.y1]  # labels keep off every marker
        for t in labels:
            best = None
            for ring in _RINGS:
                for dx, dy, ha, va in _DIRECTIONS:
                    t.set_position((dx * ring, dy * ring))
                    t.set_horizontalalignment(ha), t.set_verticalalignment(va)
                    box = t.get_window_extent()
                    outside = box.x0 < area.x0 or box.x1 > area.x1 or box.y0 < area.y0 or box.y1 > area.y1
                    crowd = sum(_overlap(box, other) for other in taken) + (1e9 if outside else 0)
                    if best is None or crowd < best[0]:
                        best = (crowd, (dx * ring, dy * ring), ha, va, ring)
                    if crowd == 0:
                        break
                if best[0] == 0:
                    break
            _, offset, ha, va, ring = best
            t.set_position(offset)
            t.set_horizontalalignment(ha), t.set_verticalalignment(va)
            taken.append(t.get_window_extent())
            if ring >= leader_from:
                x, y = ax.transData.transform(t.xy)
                end = ax.transData.inverted().transform((x + 0.8 * offset[0] * scale, y + 0.8 * offset[1] * scale))
                ax.add_artist(Line2D([t.xy[0], end[0]], [t.xy[1], end[1]], lw=0.4, color=t.get_color(), alpha=0.7))


def point_labels(ax):
    """The point labels of ``ax`` that are drawn: its ``ax.annotate(..., textcoords="offset points")``
    texts whose point lies inside the axes (matplotlib skips the others)."""
    from matplotlib.text import Annotation

    area = ax.get_window_extent()
    return [t for t in ax.texts if isinstance(t, Annotation) and t.anncoords == "offset points"
            and t.get_visible() and t.get_text().strip() and area.contains(*ax.transData.transform(t.xy))]


def _plotted_points(ax, scale: float):
    """``(x, y, radius)`` in pixels of every marker of ``ax``: lines drawn with markers, scatter points."""
    import numpy as np
    from matplotlib.collections import PathCollection

    for line in ax.get_lines():
        if line.get_marker() not in (None, "", "None", " ") and line.get_visible():
            r = line.get_markersize() / 2 * scale
            for x, y in ax.transData.transform(np.asarray(line.get_xydata(), dtype=float)):
                yield x, y, r
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and coll.get_visible() and len(coll.get_offsets()):
            sizes = coll.get_sizes() if len(coll.get_sizes()) else [36.0]
            xy = coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float))
            for (x, y), s in zip(xy, np.resize(sizes, len(xy))):
                yield x, y, np.sqrt(s) / 2 * scale


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _overlap(a, b) -> float:
    """The area two display boxes share (0 when they only touch)."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
