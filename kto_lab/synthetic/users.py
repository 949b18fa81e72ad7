"""Synthetic users (Diffusion-KTO appendix C): a scorer and a threshold turn images into likes.

Appendix C mocks "a specific user" with programmatic heuristics. Its red-filter experiment
takes (image, caption) pairs, enhances the red channel to make the liked images and keeps the
originals as the disliked ones; the redness score of Figure 7 (mean of the red channel minus
the mean of all channels, :func:`kto_lab.eval.scorers.redness`) tracks training.

Here a :class:`SyntheticUser` is ``(scorer, transform, quantile)``: the candidate pool for each
caption is its renders plus, if the user has a ``transform`` (the red filter), the transformed
copies; the user likes an image when its score is above the pool's ``quantile``. Users:

* ``red``: likes red images (appendix C). Pool = renders + red-filtered renders. The filter
  shifts colours, so chasing redness can cost prompt fidelity (a green shape turns yellow).
* ``contrast``: likes high-contrast images (RMS contrast of luma). Pool = renders only, so a
  caption that asks for a low-contrast scene ("a yellow circle on a white background") only
  ever gets dislikes: the preference competes with the caption.

:func:`label_pool` gives binary-feedback records, and pairs (same caption, liked vs disliked)
for Diffusion-DPO (same caption; the user scores the winner higher), from the same images, so
every method sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from .shapes import ShapesDataset

Transform = Callable[[np.ndarray], np.ndarray]


def hwc(images: np.ndarray) -> np.ndarray:
    """``(N, 3, H, W)`` -> ``(N, H, W, 3)`` (the scorers' layout)."""
    images = np.asarray(images)
    return images.transpose(0, 2, 3, 1) if images.ndim == 4 else images.transpose(1, 2, 0)


def red_filter(images: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """Enhance the red channel (appendix C): ``R <- R + strength * (1 - R)``; G, B unchanged.

    ``images``: a batch ``(N, 3, H, W)`` or one image ``(3, H, W)``.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"red_filter: strength must be in (0, 1], got {strength}")
    out = np.array(images, dtype=np.float32, copy=True)
    if out.ndim not in (3, 4) or out.shape[-3] != 3:
        raise ValueError(f"red_filter: expected (N, 3, H, W) or (3, H, W) images, got shape {out.shape}")
    red = out[..., 0, :, :]  # a view: the red channel of every image
    red += strength * (1.0 - red)
    return out


@dataclass
class SyntheticUser:
    name: str
    scorer: str  # a name in kto_lab.eval.scorers (programmatic, no weights)
    transform: Optional[Transform] = None  # makes extra candidates (appendix C's red filter)
    quantile: float = 0.5  # likes images whose score is above this quantile of the pool

    def score(self, images: np.ndarray) -> np.ndarray:
        from kto_lab.eval.scorers import get_scorer

        return get_scorer(self.scorer).score(hwc(np.clip(images, 0, 1)))


USERS: Dict[str, SyntheticUser] = {
    "red": SyntheticUser("red", "redness", transform=red_filter),
    "contrast": SyntheticUser("contrast", "contrast"),
}


def get_user(name: str) -> SyntheticUser:
    try:
        return USERS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic user {name!r}; known users: {', '.join(USERS)}") from None


@dataclass
class Feedback:
    """A user's binary feedback on a candidate pool, and its same-caption pairs."""

    images: np.ndarray  # (N, 3, H, W)
    captions: List[str]
    labels: np.ndarray  # (N,) 1 liked, 0 disliked
    scores: np.ndarray  # (N,) the user's score
    group: np.ndarray  # (N,) caption index
    source: List[str]  # "render" or "transform"
    threshold: float
    pairs: List[tuple]  # (winner index, loser index): same caption, the user scores the winner higher

    def counts(self) -> Dict[str, int]:
        return {"desirable": int(self.labels.sum()), "undesirable": int((1 - self.labels).sum()), "pairs": len(self.pairs)}


def label_pool(dataset: ShapesDataset, user: SyntheticUser) -> Feedback:
    """The user's feedback on ``dataset`` (+ transformed copies): records and DPO pairs."""
    images, captions, group = dataset.images, list(dataset.captions), dataset.group
    source = ["render"] * len(captions)
    if user.transform is not None:
        images = np.concatenate([images, user.transform(dataset.images)])
        captions = captions + list(dataset.captions)
        group = np.concatenate([group, dataset.group])
        source = source + ["transform"] * len(dataset.captions)
    scores = user.score(images)
    threshold = float(np.quantile(scores, user.quantile))
    labels = (scores > threshold).astype(np.int64)
    pairs = []
    for g in np.unique(group):  # same caption: best vs worst, second best vs second worst, ...
        idx = np.nonzero(group == g)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        for w, l in zip(idx[: len(idx) // 2], idx[::-1][: len(idx) // 2]):
            if scores[w] > scores[l] + 1e-6:
                pairs.append((int(w), int(l)))
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise ValueError(f"user {user.name!r} labels all {len(labels)} images the same; widen the pool")
    return Feedback(images, captions, labels, scores, group, source, threshold, pairs)
