"""Programmatic prompt fidelity: does an image show what its shapes caption asks for?

The checker reads an image the way the renderer draws it (:mod:`kto_lab.synthetic.shapes`):

1. background colour = the median colour of the border pixels, snapped to the nearest palette
   colour;
2. the shape = the pixels whose colour is far from the background's (the largest blob is not
   needed: the world draws one shape);
3. shape colour = the median colour of those pixels, snapped to the palette;
4. shape, size and position = those of the drawable shape (any shape, size and pixel
   position the renderer can produce) that overlaps the foreground best (IoU); position is
   "center" within 1 px of the image centre, else the side the shape is shifted to.

Only the attributes the caption names are checked. :func:`fidelity` returns, per image, the
fraction of named attributes that are right, and whether all of them are; it is 1.0 on every
clean render (tested), so any drop measures the model, not the checker.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Sequence

import numpy as np

from .shapes import COLORS, SHAPES, SIZES, parse_caption, shape_mask, shape_side

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)

FOREGROUND_DISTANCE = 0.35  # RGB distance from the background colour that counts as "shape"
MIN_IOU = 0.4  # a foreground that matches no drawn shape this well is "no shape"


def nearest_color(rgb: np.ndarray) -> str:
    d = ((_PALETTE - np.asarray(rgb, dtype=np.float32)[None]) ** 2).sum(1)
    return _PALETTE_NAMES[int(d.argmin())]


@lru_cache(maxsize=4)
def _templates(image_size: int):
    """Every shape the renderer can draw: masks (M, H*W) and their (shape, size, dx, dy)."""
    masks, meta = [], []
    n = image_size
    for shape in SHAPES:
        for size in SIZES:
            half = shape_side(size, n) // 2
            for cy in range(half, n - half + 1):
                for cx in range(half, n - half + 1):
                    # shape_mask places the centre at n/2 + offset; reach every centre via "center" + jitter
                    m = shape_mask(shape, size, "center", n, (cx - n // 2, cy - n // 2))
                    masks.append(m.reshape(-1))
                    meta.append((shape, size, cx - n / 2.0, cy - n / 2.0))
    return np.asarray(masks, dtype=np.float32), meta


def _position(dx: float, dy: float) -> str:
    if max(abs(dx), abs(dy)) <= 1.0:  # the renderer shifts "center" by at most 1 px
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def describe(image: np.ndarray) -> Dict[str, str]:
    """What the image shows: ``{"background", "color", "shape", "size", "position"}``.

    Shape, size and position come from the drawn shape (every shape, size and pixel position
    the renderer can produce) that best overlaps the foreground (highest IoU). A value of
    ``"none"`` means no shape was found (every shape attribute is then wrong).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] != img.shape[2]:
        raise ValueError(f"describe: expected a square (3, H, W) image, got shape {img.shape}")
    n = img.shape[1]
    border = np.concatenate([img[:, 0, :], img[:, -1, :], img[:, :, 0], img[:, :, -1]], axis=1)
    bg_rgb = np.median(border, axis=1)
    out = {"background": nearest_color(bg_rgb)}
    mask = np.sqrt(((img - bg_rgb[:, None, None]) ** 2).sum(0)) > FOREGROUND_DISTANCE
    none = dict(color="none", shape="none", size="none", position="none")
    if mask.sum() < 3:
        return {**out, **none}
    templates, meta = _templates(n)
    m = mask.reshape(-1).astype(np.float32)
    inter = templates @ m
    iou = inter / (templates.sum(1) + m.sum() - inter)
    best = int(iou.argmax())
    if iou[best] < MIN_IOU:
        return {**out, **none}
    shape, size, dx, dy = meta[best]
    out.update(color=nearest_color(np.median(img[:, mask], axis=1)), shape=shape, size=size, position=_position(dx, dy))
    return out


def check(image: np.ndarray, caption: str) -> Dict[str, bool]:
    """Per named attribute of ``caption``: is it right in ``image``?"""
    seen = describe(image)
    return {k: seen[k] == v for k, v in parse_caption(caption).items()}


def fidelity(images: Sequence[np.ndarray] | np.ndarray, captions: Sequence[str]) -> Dict[str, np.ndarray]:
    """Fidelity of a batch: ``{"score": fraction of named attributes right, "all": all right,
    "<attribute>": right or NaN where the caption does not name it}`` (arrays of length N)."""
    images = np.asarray(images)
    if len(images) != len(captions):
        raise ValueError(f"fidelity: {len(images)} images but {len(captions)} captions")
    attrs = ("color", "shape", "background", "size", "position")
    res: Dict[str, List[float]] = {k: [] for k in ("score", "all", *attrs)}
    for img, cap in zip(images, captions):
        ok = check(img, cap)
        res["score"].append(float(np.mean(list(ok.values()))))
        res["all"].append(float(all(ok.values())))
        for a in attrs:
            res[a].append(float(ok[a]) if a in ok else float("nan"))
    return {k: np.asarray(v) for k, v in res.items()}
