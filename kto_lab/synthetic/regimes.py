"""Data regimes: how one synthetic user's feedback reaches Diffusion-KTO and Diffusion-DPO.

A regime turns the user's labelled candidate pool (:func:`kto_lab.synthetic.users.label_pool`)
into the training data of both methods, from the SAME judgments, so that a comparison of the
two measures the objectives and the kind of feedback, not different data:

* **per-image labels** (``judgments=False``): a pool of ``pool_size`` images with the share
  ``desirable_share`` of liked ones, drawn from the user's liked and disliked images; each
  label flipped with probability ``label_noise``. KTO trains on these records. DPO trains on
  the pairs such a pool can form: two images of one caption, one labelled liked (the winner)
  and one disliked, each image in at most one pair, matched in pool order (labels only, no
  hidden score).
* **pairwise judgments** (``judgments=True``, the equal labelling budget): ``pool_size // 2``
  comparisons of two random images of one caption; the user prefers the one it scores higher
  (flipped with probability ``label_noise``). DPO trains on the comparisons. KTO trains on
  per-image labels made from them as the paper converts Pick-a-Pic (Diffusion-KTO sec. 5,
  :func:`kto_lab.data.pickapic.is_desirable`, "preferred at least once").

The regimes of the comparison (issue "when does KTO beat DPO"): balanced labels (the
baseline), imbalanced feedback (10 % or 90 % liked), label noise (10 % or 30 % flipped), and an
equal budget of pairwise judgments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from ..config import check_range
from ..data.converters import pairs_from_labels  # noqa: F401  (re-exported: the regimes' DPO pairs)
from ..data.pickapic import is_desirable
from .users import Feedback


@dataclass(frozen=True)
class Regime:
    name: str
    desirable_share: float = 0.5  # share of liked images in a per-image pool (ignored for judgments)
    label_noise: float = 0.0  # probability that a label (or a judgment) is flipped
    judgments: bool = False  # pairwise judgments, turned into per-image labels for KTO (Pick-a-Pic)

    def validate(self) -> "Regime":
        check_range(f"regime {self.name}: desirable_share", self.desirable_share, low=0.0, high=1.0,
                    low_open=True, high_open=True)
        check_range(f"regime {self.name}: label_noise", self.label_noise, low=0.0, high=0.5, high_open=True)
        return self


REGIMES: Dict[str, Regime] = {r.name: r.validate() for r in (
    Regime("balanced"),
    Regime("desirable10", desirable_share=0.1),
    Regime("desirable90", desirable_share=0.9),
    Regime("noise10", label_noise=0.1),
    Regime("noise30", label_noise=0.3),
    Regime("judgments", judgments=True),
)}


@dataclass
class RegimeData:
    """Training data of both methods: per-image records and (winner, loser) pairs over one image set."""

    images: np.ndarray  # (N, 3, H, W)
    captions: List[str]
    labels: np.ndarray  # (N,) 1 liked, 0 disliked, as the methods see them (noise included)
    scores: np.ndarray  # (N,) the user's score (for reports only; no method sees it)
    pairs: List[Tuple[int, int]]  # indices into images

    def counts(self) -> Dict[str, int]:
        return {"images": len(self.labels), "desirable": int(self.labels.sum()),
                "undesirable": int((1 - self.labels).sum()), "pairs": len(self.pairs)}


def get_regime(name: str) -> Regime:
    try:
        return REGIMES[name]
    except KeyError:
        raise ValueError(f"unknown regime {name!r}; known regimes: {', '.join(REGIMES)}") from None


def _flip(values: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(len(values)) < p, 1 - values, values) if p > 0 else values


def _per_image(fb: Feedback, regime: Regime, pool_size: int, rng: np.random.Generator) -> RegimeData:
    n_liked = int(round(regime.desirable_share * pool_size))
    want = {1: n_liked, 0: pool_size - n_liked}
    chosen = []
    for label, n in want.items():
        have = np.nonzero(fb.labels == label)[0]
        if n > len(have):
            kind = "liked" if label else "disliked"
            raise ValueError(f"regime {regime.name}: needs {n} {kind} images but the user's pool has {len(have)}; "
                             f"lower the pool size or raise align.n_captions")
        chosen.append(rng.choice(have, size=n, replace=False))
    idx = rng.permutation(np.concatenate(chosen))
    labels = _flip(fb.labels[idx], regime.label_noise, rng)
    return RegimeData(fb.images[idx], [fb.captions[i] for i in idx], labels, fb.scores[idx],
                      pairs_from_labels(fb.group[idx], labels))


def _judgments(fb: Feedback, regime: Regime, n_judgments: int, rng: np.random.Generator) -> RegimeData:
    candidates = [(int(a), int(b)) for g in np.unique(fb.group) for idx in [np.nonzero(fb.group == g)[0]]
                  for i, a in enumerate(idx) for b in idx[i + 1:] if fb.scores[a] != fb.scores[b]]
    if n_judgments > len(candidates):
        raise ValueError(f"regime {regime.name}: {n_judgments} judgments asked, only {len(candidates)} "
                         "same-caption pairs exist")
    picked = [candidates[k] for k in rng.choice(len(candidates), size=n_judgments, replace=False)]
    user_prefers_a = np.array([fb.scores[a] > fb.scores[b] for a, b in picked], dtype=np.int64)
    prefers_a = _flip(user_prefers_a, regime.label_noise, rng)
    pairs = [(a, b) if first else (b, a) for (a, b), first in zip(picked, prefers_a)]
    wins: Dict[int, List[int]] = {}
    for w, l in pairs:
        wins.setdefault(w, [0, 0])[0] += 1
        wins.setdefault(l, [0, 0])[1] += 1
    idx = np.array(sorted(wins))
    where = {int(i): k for k, i in enumerate(idx)}
    labels = np.array([int(is_desirable(*wins[int(i)])) for i in idx], dtype=np.int64)
    return RegimeData(fb.images[idx], [fb.captions[i] for i in idx], labels, fb.scores[idx],
                      [(where[w], where[l]) for w, l in pairs])


def regime_data(fb: Feedback, regime: Regime, pool_size: int, seed: int = 0) -> RegimeData:
    """The regime's training data from the user's labelled pool ``fb`` (see the module docstring).

    Per-image regimes hold ``pool_size`` images; the judgments regime makes ``pool_size // 2``
    comparisons (about as many images, as each image is rarely compared twice)."""
    check_range("pool_size", pool_size, low=2)
    rng = np.random.default_rng(seed)
    if regime.judgments:
        return _judgments(fb, regime, pool_size // 2, rng)
    return _per_image(fb, regime, pool_size, rng)
